"""The GPU suite's safeguards, rehearsed on CPU: nothing here needs a GPU.

A GPU run is short and rare (one call of a few minutes), so what would silently cost it is
checked here: the kernels failing to import on a CUDA machine must not pass for a fast engine
with no speedup, and the suite must return its summary whatever happens to its steps.
"""
import sys
import warnings

import pytest
import torch

import maskformer_fast as mf


@pytest.fixture
def kernels_unimportable(monkeypatch):
    """`from .kernels import ...` raises ImportError (a None entry in sys.modules does that)."""
    monkeypatch.setitem(sys.modules, "maskformer_fast.kernels", None)
    monkeypatch.setattr(mf.ops, "_warned_no_kernels", False)


def test_ops_warns_once_when_cuda_is_present_but_kernels_do_not_import(kernels_unimportable, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert mf.ops._kernel_module("attention") is None
        assert mf.ops._kernel_module("mask_losses") is None
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "maskformer_fast.kernels does not import" in messages[0]


def test_ops_is_silent_without_cuda_when_kernels_do_not_import(kernels_unimportable, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert mf.ops._kernel_module("attention") is None
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
