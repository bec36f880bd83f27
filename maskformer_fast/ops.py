"""The dispatch layer: each hot op goes to its eager reference or its Triton kernel.

This is the only place that chooses. Model code calls ``ops.group_norm_act(...)`` etc.
and never a kernel directly, so the same weights run through either implementation.

Choice per call, in order:
  1. ``with ops.use("eager" | "triton" | "auto"):`` (innermost wins), else
  2. the environment variable ``MASKFORMER_FAST_OPS`` (same values), else "auto".
"auto" picks Triton when every tensor argument is on CUDA and Triton imports, the eager
reference otherwise. "triton" forces the kernel (on CPU tensors it then needs
``TRITON_INTERPRET=1``, which is how the tests run it without a GPU). A kernel may decline
a call it does not support (``kernel.supports(...)`` returning False, e.g. attention with
a head dim it has no block configuration for), in which case the reference runs; that is the
dispatch's decision, made here. torch.compile traces this choice (it is made per call from
shapes, dtypes and devices, so it is fixed per graph) and the kernel behind it as one opaque
custom op (``kernels/_library.py``).
"""
import contextlib
import os
import threading
import warnings
from typing import Iterator, Optional

import torch

from . import reference

__all__ = ["use", "current_mode", "resolve", "group_norm_act", "attention", "mask_costs", "mask_losses"]

_MODES = ("auto", "eager", "triton")
ENV_VAR = "MASKFORMER_FAST_OPS"
_state = threading.local()
_warned_no_kernels = False


def _check_mode(mode: str) -> str:
    if mode not in _MODES:
        raise ValueError(f"ops mode must be one of {_MODES}, got {mode!r}")
    return mode


def current_mode() -> str:
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    return _check_mode(os.environ.get(ENV_VAR, "auto"))


@contextlib.contextmanager
def use(mode: str) -> Iterator[None]:
    """Force the implementation of every hot op inside the block: "eager", "triton" or "auto"."""
    _check_mode(mode)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(mode)
    try:
        yield
    finally:
        stack.pop()


def _kernel_module(op: str):
    """The kernel module providing op (a function of that name), or None when Triton does not
    import here. An import statement, not importlib: torch.compile traces this function, and
    Dynamo executes import statements but refuses to trace importlib."""
    try:
        from .kernels import attention, group_norm_act, mask_costs, mask_losses
    except ImportError as e:
        _warn_no_kernels(e)
        return None
    return {"group_norm_act": group_norm_act, "attention": attention, "mask_costs": mask_costs,
            "mask_losses": mask_losses}[op]


def _warn_no_kernels(error: ImportError) -> None:
    """Once per process, where CUDA is present: "auto" quietly running the references there
    would make a broken install look like a working fast engine with no speedup."""
    global _warned_no_kernels
    if _warned_no_kernels or not torch.cuda.is_available():
        return
    _warned_no_kernels = True
    warnings.warn(f"CUDA is present but maskformer_fast.kernels does not import ({error}); every hot op runs "
                  "its eager reference (is the package installed? pip install --no-build-isolation -e .)",
                  RuntimeWarning, stacklevel=3)


def resolve(op: str, *tensors: Optional[torch.Tensor], **kwargs):
    """The function that will run ``op`` for these arguments (reference or kernel)."""
    mode = current_mode()
    ref = getattr(reference, op)
    if mode == "eager":
        return ref
    if mode == "auto" and not all(t.is_cuda for t in tensors if t is not None):
        return ref
    module = _kernel_module(op)
    if module is None:
        if mode == "triton":
            raise RuntimeError(f"ops.use('triton') was asked for {op}, but Triton does not import here")
        return ref
    supports = getattr(module, "supports", None)
    if supports is not None and not supports(*tensors, **kwargs):
        return ref
    return getattr(module, op)


def group_norm_act(x, num_groups, weight, bias, eps=1e-5, activation="relu"):
    fn = resolve("group_norm_act", x, weight, bias, activation=activation)
    return fn(x, num_groups, weight, bias, eps=eps, activation=activation)


def attention(q, k, v, key_padding_mask=None, scale=None, dropout_p=0.0):
    fn = resolve("attention", q, k, v, key_padding_mask, dropout_p=dropout_p)
    return fn(q, k, v, key_padding_mask=key_padding_mask, scale=scale, dropout_p=dropout_p)


def mask_costs(pred_masks, target_masks, num_targets):
    fn = resolve("mask_costs", pred_masks, target_masks)
    return fn(pred_masks, target_masks, num_targets)


def mask_losses(pred_masks, target_masks, num_masks):
    fn = resolve("mask_losses", pred_masks, target_masks)
    return fn(pred_masks, target_masks, num_masks)
