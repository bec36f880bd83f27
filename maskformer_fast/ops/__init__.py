"""The dispatch layer: each hot op goes to its eager reference or to a kernel.

This is the only place that chooses. Model code and the criterion call ``ops.group_norm_act(...)``,
``ops.linear_sum_assignment(...)`` etc. and never a kernel directly, so the same weights run
through either implementation. The ops are declared once, as specs in ``ops/specs.py``
(registered in ``ops.OPS``); each becomes a function of this module with its reference's
signature.

Choice per call, in order:
  1. ``with ops.use("eager" | "fast" | "auto"):`` (innermost wins), else
  2. the environment variable ``MASKFORMER_FAST_OPS`` (same values), else "auto".

- "eager": the reference (``maskformer_fast.reference``), no kernel anywhere, matcher included.
- "fast": the best kernel for the device of the op's first tensor: the one built for it (the
  C++ matcher for CPU tensors), else the Triton kernel, which on CPU tensors needs
  ``TRITON_INTERPRET=1`` (how the tests run the kernels without a GPU). A call the kernel does
  not support raises its reason.
- "auto": the kernel built for the device where its ``unsupported(...)`` finds nothing to
  refuse, the reference otherwise (CPU tensors: the C++ matcher, the other references).

torch.compile traces this choice (made per call from shapes, dtypes and devices, so fixed per
graph) and the kernel behind it as one opaque custom op (``kernels/_library.py``).
"""
import contextlib
import functools
import os
import threading
import warnings
from types import ModuleType
from typing import Iterator, Optional

import torch

from .registry import OPS, Example, Kernel, OpSpec, register
from .specs import SPECS

MODES = ("auto", "eager", "fast")
ENV_VAR = "MASKFORMER_FAST_OPS"
_state = threading.local()
_warned_no_kernels = False


def _check_mode(mode: str, where: str = "ops mode") -> str:
    if mode not in MODES:
        raise ValueError(f"{where} must be one of eager, fast, auto (eager: references only; fast: the kernels; "
                         f"auto: kernels where they support the call), got {mode!r}")
    return mode


def current_mode() -> str:
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    return _check_mode(os.environ.get(ENV_VAR, "auto"), ENV_VAR)


@contextlib.contextmanager
def use(mode: str) -> Iterator[None]:
    """Force the implementation of every hot op inside the block: "eager", "fast" or "auto"."""
    _check_mode(mode)
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(mode)
    try:
        yield
    finally:
        stack.pop()


def add_engine_argument(parser, fast_also: str = "") -> None:
    """``--engine eager|fast|auto``, the ops mode a CLI runs under (default: MASKFORMER_FAST_OPS, else
    auto); ``fast_also`` says what else its non-eager engines do."""
    default = os.environ.get(ENV_VAR, "auto")
    if default not in MODES:  # argparse checks choices on the command line only, not on a default
        parser.error(f"{ENV_VAR}={default!r}: must be one of eager, fast, auto (or unset)")
    parser.add_argument("--engine", default=default, choices=MODES,
                        help="eager: the reference ops only, the matcher included; fast: the kernels, an unsupported "
                             "call an error (Triton on CUDA; on CPU the C++ matcher, Triton through "
                             "TRITON_INTERPRET=1); auto: the kernels where they support the call, else the "
                             f"references; default: {ENV_VAR}, else auto. {fast_also}")


def _load(kernel: Kernel) -> Optional[ModuleType]:
    """The kernel's module, or None when it does not import here (Triton missing)."""
    try:
        return kernel.load()
    except ImportError as e:
        _warn_no_kernels(e)
        return None


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


def _device_type(args) -> str:
    """The device of the op's first tensor argument, which decides the kernel."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device.type
    return "cpu"


def _candidate(spec: OpSpec, device: str, mode: str) -> Optional[Kernel]:
    """The kernel built for ``device``; under "fast" else the first one (Triton, interpreted on CPU)."""
    for k in spec.kernels:
        if k.device == device:
            return k
    return spec.kernels[0] if mode == "fast" else None


def resolve(op: str, *args, **kwargs):
    """The function that will run ``op(*args, **kwargs)``: its reference or a kernel."""
    spec = OPS[op]
    mode = current_mode()
    if mode == "eager":
        return spec.reference()
    kernel = _candidate(spec, _device_type(args), mode)
    if kernel is None:
        return spec.reference()
    module = _load(kernel)
    if module is None:
        if mode == "fast":
            raise RuntimeError(f"ops.use('fast') was asked for {op}, but its {kernel.name} kernel does not import here")
        return spec.reference()
    if mode == "auto" and getattr(module, kernel.unsupported)(*args, **kwargs) is not None:
        return spec.reference()
    return getattr(module, kernel.function)  # under "fast" an unsupported call raises its reason there


def _op_function(spec: OpSpec):
    """``ops.<name>``: resolve, then run; the reference's signature and docstring."""
    name = spec.name

    @functools.wraps(spec.reference())
    def op(*args, **kwargs):
        return resolve(name, *args, **kwargs)(*args, **kwargs)  # this module's resolve, looked up per call

    return op


for _spec in SPECS:
    register(_spec)
globals().update({name: _op_function(spec) for name, spec in OPS.items()})

__all__ = ["use", "current_mode", "resolve", "add_engine_argument", "MODES", "ENV_VAR", "OPS", "OpSpec", "Kernel", "Example", "register",
           *OPS]
