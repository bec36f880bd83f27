"""Test setup shared by every test module.

TRITON_INTERPRET is read when ``@triton.jit`` decorates a function, not at launch, so it is
set here, before any kernel module is imported, and only when no GPU is present: then the
Triton kernels run on CPU tensors through the interpreter.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from tests.helpers import poison_torch_empty  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="run tests marked slow (long on a 2-core CPU)")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow on a 2-core CPU: pass --runslow to run it")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none")
    skip_interpreter = pytest.mark.skip(reason="drives kernels with CPU tensors through the Triton interpreter, "
                                               "which is off where CUDA is present; the gpu-marked tests and "
                                               "tests/parity/test_fast_vs_eager.py run the compiled kernels there")
    for item in items:
        if "interpreter" in item.keywords and "gpu" not in item.keywords and HAS_CUDA:
            item.add_marker(skip_interpreter)
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Every float tensor a kernel launcher allocates starts as NaN, so an unwritten element fails."""
    poison_torch_empty(monkeypatch)
