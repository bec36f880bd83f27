"""Test setup shared by every test module.

TRITON_INTERPRET is read when ``@triton.jit`` decorates a function, not at launch, so it is
set here, before any kernel module is imported, and only when no GPU is present: then the
Triton kernels run on CPU tensors through the interpreter.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.helpers import poison_torch_empty  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def _tf32(x: np.ndarray, nearest: bool = False) -> np.ndarray:
    """fp32 values as a tensor core reads them in TF32: 10 mantissa bits, the low 13 dropped
    (truncated, as the MMA does with fp32 registers; nearest, as the cvt.rna of 3xTF32 splits)."""
    bits = x.astype(np.float32).view(np.uint32)
    if nearest:
        bits = bits + np.uint32(0x1000)
    return (bits & np.uint32(0xFFFFE000)).view(np.float32)


def _emulate_tensor_core_dots() -> None:
    """Make the interpreter's tl.dot on fp32 honour input_precision as the GPU does.

    Triton 3.6's interpreter computes every dot with np.matmul, exactly, whatever precision the
    kernel asked for: a kernel relying on "tf32" where it needs fp32 accuracy (or a broken
    hi/lo split, as in kernels/mask_costs.py) would pass every CPU test. Here "tf32" rounds both
    operands to TF32 and "tf32x3" is the three-product split; "ieee" and other dtypes are exact.
    """
    from triton._C.libtriton import ir
    from triton.runtime import interpreter

    exact_dot = interpreter.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.data.dtype != np.float32 or input_precision not in (ir.INPUT_PRECISION.TF32,
                                                                 ir.INPUT_PRECISION.TF32x3):
            return exact_dot(self, a, b, d, input_precision, max_num_imprecise_acc)
        if input_precision == ir.INPUT_PRECISION.TF32:
            out = np.matmul(_tf32(a.data), _tf32(b.data), dtype=np.float32)
        else:
            a_hi, b_hi = _tf32(a.data, nearest=True), _tf32(b.data, nearest=True)
            a_lo, b_lo = _tf32(a.data - a_hi), _tf32(b.data - b_hi)
            out = (np.matmul(a_hi, b_lo, dtype=np.float32) + np.matmul(a_lo, b_hi, dtype=np.float32)
                   + np.matmul(a_hi, b_hi, dtype=np.float32))
        return interpreter.TensorHandle(out + d.data, d.dtype.scalar)

    interpreter.InterpreterBuilder.create_dot = create_dot


if os.environ.get("TRITON_INTERPRET") == "1":
    _emulate_tensor_core_dots()


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
