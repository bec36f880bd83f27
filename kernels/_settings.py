"""Launch-size heuristics and the compile-check registry convention shared by every kernel.

Block sizes: ``next_power_of_2`` and ``block_and_warps`` (Liger's calculate_settings idea:
one program holds a power-of-two block in registers, more warps for bigger blocks).

Compile registry: every kernel module in ``kernels/`` exposes a module-level
``COMPILE_CONFIGS: List[CompileConfig]`` with one entry per (jit kernel, block
configuration, dtype) its launcher can pick. ``tests/test_kernels_compile.py`` compiles each
entry for sm_90 and sm_80 with ``triton.compile(ASTSource(...))`` -- no GPU needed -- so code
that only the lenient interpreter accepts (e.g. ``tl.dot`` on blocks < 16) fails CI.
``signature`` maps every kernel argument name to its Triton type ("*fp32", "*bf16", "i32",
"fp32", ...), constexpr arguments to "constexpr"; ``constexprs`` gives their values.
Build the list without touching a GPU (it is read at import).
"""
from typing import Any, Dict, NamedTuple

import torch
import triton
import triton.language as tl

__all__ = ["CompileConfig", "compile_config", "next_power_of_2", "block_and_warps", "triton_type", "tl_dtype"]

# Largest block one program keeps in registers; bigger rows are split or looped over.
MAX_BLOCK = 16384


class CompileConfig(NamedTuple):
    """One compilation the compile check performs: kernel, argument types, constexpr values."""

    fn: Any  # the @triton.jit function
    signature: Dict[str, str]
    constexprs: Dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3


def compile_config(fn, types: Dict[str, str], constexprs: Dict[str, Any], num_warps: int = 4,
                   num_stages: int = 3) -> CompileConfig:
    """CompileConfig whose signature lists fn's arguments in order: "constexpr" for those in
    ``constexprs``, ``types[name]`` for the others (extra keys in ``types`` are ignored, so one
    type table can serve several kernels)."""
    signature = {name: "constexpr" if name in constexprs else types[name] for name in fn.arg_names}
    return CompileConfig(fn, signature, dict(constexprs), num_warps, num_stages)


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


_TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
                 torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8", torch.int8: "i8"}
_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
              torch.float64: tl.float64}


def triton_type(dtype: torch.dtype) -> str:
    """The Triton signature name of a torch dtype ("fp32", "bf16", ...)."""
    return _TRITON_TYPES[dtype]


def tl_dtype(dtype: torch.dtype):
    """The triton.language dtype of a floating torch dtype (for constexpr accumulator types)."""
    return _TL_DTYPES[dtype]
