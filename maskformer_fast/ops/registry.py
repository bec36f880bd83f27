"""The op registry: one ``OpSpec`` per hot op, declared once in ``ops/specs.py``.

A spec names the op (its reference is ``maskformer_fast.reference.<name>``, looked up at each
call so a monkeypatched reference is what runs), lists its kernels per device, and carries the
example inputs that opcheck, the compile tests and the benchmarks iterate, so a new op cannot
skip them. Each kernel module holds the rest: the op function of the same signature as the
reference, ``unsupported(*the same arguments) -> Optional[str]`` (the one validation; the op
function raises its reason) and, where it has them, its launch configurations ``CONFIGS``.
"""
import dataclasses
from types import ModuleType
from typing import Callable, Dict, Optional, Tuple

import torch

__all__ = ["Kernel", "Example", "OpSpec", "OPS", "register"]


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One implementation of an op, found as ``getattr(load(), function)`` at call time.

    name: "triton" or "cpp"; device: the device
    type it is built for ("cuda" for Triton, which also runs CPU tensors under
    TRITON_INTERPRET=1; "cpu" for C++); load: returns the module holding ``function`` and
    ``unsupported``, raising ImportError where it cannot be imported. It must be an import
    statement: torch.compile traces the dispatch, and Dynamo runs import statements but refuses
    to trace importlib.
    """
    name: str
    device: str
    load: Callable[[], ModuleType]
    function: str
    unsupported: str = "unsupported"


@dataclasses.dataclass(frozen=True)
class Example:
    """A small call of an op for the compile checks and benchmarks: ``fn(*inputs)`` returns a
    tensor; with ``differentiable`` the checks also compare the gradients wrt inputs."""
    fn: Callable[..., torch.Tensor]
    inputs: Tuple[torch.Tensor, ...]
    differentiable: bool = True


def _no_launchers(device: str) -> Dict[str, Tuple[Callable, tuple]]:
    return {}


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """A hot op: its name, its kernels in order of preference, and example inputs.

    example(device) -> Example: the op called through ``maskformer_fast.ops``.
    benchmark: the script ``benchmarks/<benchmark>.py`` timing the op's kernels against its
    reference (``benchmarks/gpu_suite.sh`` runs one per op).
    launcher_examples(device) -> {custom-op name: (launcher, args)}: each launcher the kernels
    register as a torch custom op (``kernels/_library.py``), for ``torch.library.opcheck``.
    not_compiled: why the op is not traced into a torch.compile graph (None: it is).
    Builders run inside the tests, never at import: a launch at collection time that faults on
    a GPU would stop pytest collecting every other test of the run.
    """
    name: str
    kernels: Tuple[Kernel, ...]
    example: Callable[[str], Example]
    benchmark: str
    launcher_examples: Callable[[str], Dict[str, Tuple[Callable, tuple]]] = _no_launchers
    not_compiled: Optional[str] = None

    def reference(self) -> Callable:
        from .. import reference  # at call time: a monkeypatched reference is the one that runs

        return getattr(reference, self.name)

    def kernel(self, name: str) -> Kernel:
        for kernel in self.kernels:
            if kernel.name == name:
                return kernel
        raise ValueError(f"op {self.name} has no {name!r} kernel (it has {[k.name for k in self.kernels]})")

    def configs(self) -> Dict[str, object]:
        """Each kernel's launch configurations, its module's ``CONFIGS`` (None where it has none)."""
        return {k.name: getattr(k.load(), "CONFIGS", None) for k in self.kernels}


OPS: Dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    if spec.name in OPS:
        raise ValueError(f"op {spec.name!r} is already registered")
    if not spec.kernels:
        raise ValueError(f"op {spec.name!r} declares no kernel")
    OPS[spec.name] = spec
    return spec
