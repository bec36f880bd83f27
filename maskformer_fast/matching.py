"""linear_sum_assignment front: one call solves every (layer, image) problem of a step.

``linear_sum_assignment(cost, num_cols)`` checks its input, then runs ``ops.linear_sum_assignment``,
so ``ops.use`` / ``MASKFORMER_FAST_OPS`` choose the solver as for every hot op. All are exact
(the same minimum total cost as scipy):

- eager: ``maskformer_fast.reference.linear_sum_assignment``, scipy per problem in a loop.
- the C++ kernel (CPU tensors under "auto" and "fast"): the shortest-augmenting-path solver
  ``maskformer_fast._C`` (csrc/), batched and multithreaded over the problems with the GIL
  released; its Python side is ``cpp_linear_sum_assignment`` here. Present when the package
  was installed with a working C++ compiler (``pip install --no-build-isolation -e .``).
- the Triton kernel (CUDA tensors): ``maskformer_fast.kernels.hungarian``, one program per
  problem, all problems in one launch.
"""
from typing import Optional

import torch

from . import ops

try:
    from . import _C
    _C_IMPORT_ERROR = None
except ImportError as _err:  # installed without a C++ compiler: the reference is the fallback
    _C = None
    _C_IMPORT_ERROR = _err

__all__ = ["linear_sum_assignment", "cpp_linear_sum_assignment", "cpp_unsupported"]


def _validate(cost: torch.Tensor, num_cols: Optional[torch.Tensor]):
    if cost.dim() not in (2, 3):
        raise ValueError(f"cost must be [N, M] or [B, N, M], got shape {tuple(cost.shape)}")
    if not cost.is_floating_point():
        raise ValueError(f"cost must be a floating tensor, got dtype {cost.dtype}")
    B, _, M = cost.shape if cost.dim() == 3 else (1, *cost.shape)
    if num_cols is None:
        num_cols = torch.full((B,), M, dtype=torch.int64)
    given = torch.as_tensor(num_cols)
    if given.is_floating_point() or given.is_complex() or given.dtype == torch.bool:
        raise ValueError(f"num_cols must be an integer tensor (column counts), got dtype {given.dtype}")
    num_cols = given.to(torch.int64).cpu()
    if num_cols.shape != (B,):
        raise ValueError(f"num_cols must have shape [{B}], got {tuple(num_cols.shape)}")
    if ((num_cols < 0) | (num_cols > M)).any():
        raise ValueError(f"num_cols must lie in [0, {M}], got {num_cols.tolist()}")
    return num_cols


def cpp_unsupported(cost: torch.Tensor, num_cols: Optional[torch.Tensor] = None) -> Optional[str]:
    """Why the C++ solver cannot run this call (None: it can)."""
    if _C is None:
        return (f"the C++ matcher maskformer_fast._C is not built ({_C_IMPORT_ERROR}); reinstall with "
                "`pip install --no-build-isolation -e .` and a C++ compiler")
    if cost.dim() != 3:
        return f"the C++ matcher solves a batch [B, N, M], got shape {tuple(cost.shape)}"
    return None


def cpp_linear_sum_assignment(cost: torch.Tensor, num_cols: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The C++ kernel of ``reference.linear_sum_assignment`` (same arguments and result)."""
    reason = cpp_unsupported(cost, num_cols)
    if reason is not None:
        raise ValueError(reason)
    from .reference import column_counts

    host = cost.detach().cpu()
    if host.dtype not in (torch.float32, torch.float64):
        host = host.float()  # half / bfloat16 are exact in float32
    return _C.linear_sum_assignment(host.contiguous(), column_counts(cost, num_cols).contiguous()).to(cost.device)


def linear_sum_assignment(cost: torch.Tensor, num_cols: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Minimum-cost assignment of rows to columns for a batch of cost matrices.

    cost: [B, N, M] or [N, M] float; num_cols: int [B], the valid columns of each padded
    problem (default M; a float or bool num_cols is refused, not truncated). Returns int64
    [B, N] (or [N]) on cost's device: the column matched to each row, or -1. +inf marks a
    forbidden pair; NaN or -inf, or a problem whose +inf entries leave no complete matching,
    raise ValueError naming the batch index. The solver is ``ops``' choice (module docstring).
    """
    num_cols = _validate(cost, num_cols)
    squeeze = cost.dim() == 2
    out = ops.linear_sum_assignment(cost[None] if squeeze else cost, num_cols)
    return out[0] if squeeze else out
