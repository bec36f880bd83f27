"""Launch-size heuristics, launch configurations and the compile-check registry shared by every kernel.

Block sizes: ``next_power_of_2`` and ``block_and_warps`` (Liger's calculate_settings idea:
one program holds a power-of-two block in registers, more warps for bigger blocks).

Launch configurations: every kernel module has one ``CONFIGS`` table (name -> a frozen
dataclass of block sizes, num_warps, num_stages) and ``pick(shape, dtype)``, the heuristic
that chooses an entry; its launchers take ``config=None`` (then ``pick``), so the tuner and the
tests pass one explicitly. A ``LaunchConfig``'s fields are the launch's keyword arguments.

Compile registry: every kernel module exposes ``COMPILE_CONFIGS = compile_configs(__name__,
examples)``, one ``CompileConfig`` per kernel launch its launchers make in ``examples``: (name
of a CONFIGS entry, a launcher call on meta tensors at a model shape) pairs, together covering
every entry (``FIXED_LAUNCH`` for a kernel outside the table). The launches are recorded, not
run, and each is typed the way the JIT types a real launch (``native_specialize_impl``, the
function behind ``JITFunction``'s binder): tensors as ``*<dtype>`` pointers, ints as i32 / i64,
floats fp32, an int equal to 1 (a unit stride) as the constexpr 1, and the "tt.divisibility" 16
hint (``attrs``) on pointers and ints divisible by 16 (meta tensors report data_ptr 0 plus the
view's offset, as aligned allocations do). Without those hints the compile table is not the
kernel a launch runs: at the criterion's shapes the mask-loss backward compiles to 186 registers
on sm_90, to 165 with generic ints and strides, to 247 with unit strides but no hints.
``tests/test_kernels_compile.py`` compiles each entry for sm_90 and sm_80 with
``triton.compile(ASTSource(fn, signature, constexprs, attrs))`` -- no GPU needed -- and checks
the signatures against the JIT's own binder.
"""
import dataclasses
import inspect
import sys
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Tuple

import torch
import triton
import triton.language as tl
from triton.backends.compiler import BaseBackend
from triton.runtime.jit import KernelInterface, native_specialize_impl

__all__ = ["FIXED_LAUNCH", "CompileConfig", "LaunchConfig", "compile_configs", "config_name", "specialize",
           "next_power_of_2", "block_and_warps", "tl_dtype", "LAUNCH_OPTIONS"]

# Largest block one program keeps in registers; bigger rows are split or looped over.
MAX_BLOCK = 16384
# The config name of a launch no CONFIGS entry governs (a test/debug helper with fixed blocks).
FIXED_LAUNCH = "fixed"
# Keyword arguments of a launch that are compiler options, not kernel arguments (Triton's defaults).
LAUNCH_OPTIONS = {"num_warps": 4, "num_stages": 3}


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Base of a kernel's launch configuration: every field is a keyword argument of the launch
    (block-size constexprs, num_warps, num_stages), ``kernel[grid](..., **config.kwargs())``."""

    def kwargs(self) -> Dict[str, int]:
        return dataclasses.asdict(self)


def config_name(configs: Dict[str, Any], config: Any) -> str:
    """The name of ``config`` (an entry itself, not an equal copy) in a CONFIGS table."""
    return next(name for name, entry in configs.items() if entry is config)


class CompileConfig(NamedTuple):
    """One compilation the compile check performs, derived from one recorded launch."""

    config: str  # the CONFIGS entry the launch used
    fn: Any  # the @triton.jit kernel
    signature: Dict[str, str]  # every argument: "*fp32", "i32", "fp32", ... or "constexpr"
    constexprs: Dict[str, Any]
    attrs: Dict[Tuple[int, ...], list]  # ASTSource attrs: {(argument index,): [["tt.divisibility", 16]]}
    num_warps: int
    num_stages: int
    launch: Tuple[tuple, dict]  # the recorded (args, kwargs), meta tensors, for the binder check


def _python_function(fn) -> Callable:
    return fn.fn  # JITFunction and the interpreter's InterpretedFunction both wrap it as .fn


def _not_specialized(fn) -> Tuple[set, set]:
    """Names of the arguments declared do_not_specialize / do_not_specialize_on_alignment."""
    names = inspect.signature(_python_function(fn)).parameters
    declared = getattr(fn, "kwargs", None) or vars(fn)  # InterpretedFunction keeps jit's kwargs
    def as_names(items):
        return {list(names)[i] if isinstance(i, int) else i for i in (items or ())}
    return as_names(declared.get("do_not_specialize")), as_names(declared.get("do_not_specialize_on_alignment"))


def specialize(fn, args: tuple, kwargs: dict):
    """(signature, constexprs, attrs, options) of ``fn[grid](*args, **kwargs)`` as the JIT specialises it."""
    options = {k: kwargs.get(k, default) for k, default in LAUNCH_OPTIONS.items()}
    params = inspect.signature(_python_function(fn)).parameters
    bound = inspect.Signature(list(params.values())).bind(*args, **{k: v for k, v in kwargs.items()
                                                                    if k not in LAUNCH_OPTIONS})
    bound.apply_defaults()
    no_value, no_alignment = _not_specialized(fn)
    signature, constexprs, attrs = {}, {}, {}
    for index, (name, value) in enumerate(bound.arguments.items()):
        if params[name].annotation is tl.constexpr:
            kind, hint = "constexpr", None
        else:
            kind, hint = native_specialize_impl(BaseBackend, value, False, name not in no_value,
                                                name not in no_alignment)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = value
        elif hint and BaseBackend.parse_attr(hint):
            attrs[(index,)] = BaseBackend.parse_attr(hint)
    return signature, constexprs, attrs, options


class _Recorder:
    """Stands in for a kernel while examples run: ``kernel[grid](*args, **kwargs)`` is recorded."""

    def __init__(self, fn, launches: list):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((self.fn, args, kwargs))


@contextmanager
def _recording(module) -> Iterator[list]:
    """Every @triton.jit function of ``module`` replaced by a _Recorder for the duration."""
    launches: list = []
    kernels = {name: fn for name, fn in vars(module).items() if isinstance(fn, KernelInterface)}
    try:
        for name, fn in kernels.items():
            setattr(module, name, _Recorder(fn, launches))
        yield launches
    finally:
        for name, fn in kernels.items():
            setattr(module, name, fn)


def compile_configs(module_name: str, examples: Iterable[Tuple[str, Callable[[], Any]]]) -> List[CompileConfig]:
    """One CompileConfig per kernel launch of each (config name, launcher call on meta tensors)
    example; launches with the same kernel, signature, constexprs, hints and options count once."""
    configs, seen = [], set()
    with _recording(sys.modules[module_name]) as launches:
        for name, example in examples:
            del launches[:]
            example()
            for fn, args, kwargs in launches:
                signature, constexprs, attrs, options = specialize(fn, args, kwargs)
                # id(fn): hashing a JITFunction computes its cache key, which must not see the recorders
                key = (id(fn), repr(signature), repr(constexprs), repr(attrs), repr(options))
                if key not in seen:
                    seen.add(key)
                    configs.append(CompileConfig(name, fn, signature, constexprs, attrs, options["num_warps"],
                                                 options["num_stages"], (args, kwargs)))
    return configs


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return triton.next_power_of_2(max(int(n), 1))


def block_and_warps(n: int, max_block: int = MAX_BLOCK) -> tuple:
    """(BLOCK, num_warps) for one program reducing n elements held in registers.

    BLOCK is next_power_of_2(n) capped at max_block; warps grow with the block so that
    each thread holds at most ~32 fp32 values of one tensor.
    """
    block = min(next_power_of_2(n), max_block)
    if block >= 8192:
        warps = 16
    elif block >= 2048:
        warps = 8
    else:
        warps = 4
    return block, warps


_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
              torch.float64: tl.float64}


def tl_dtype(dtype: torch.dtype):
    """The triton.language dtype of a floating torch dtype (for constexpr accumulator types)."""
    return _TL_DTYPES[dtype]
