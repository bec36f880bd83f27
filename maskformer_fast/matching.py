"""linear_sum_assignment front: one call solves every (layer, image) problem of a step.

Backends, all exact (the same minimum total cost as scipy):

- "scipy": the reference, scipy.optimize.linear_sum_assignment per problem in a loop.
- "cpu": the C++ shortest-augmenting-path solver (``maskformer_fast._C``, csrc/), batched
  and multithreaded over the problems with the GIL released. Present when the package was
  installed with a working C++ compiler (``pip install --no-build-isolation -e .``).
- "gpu": the Triton solver (``maskformer_fast.kernels.hungarian``), one program per problem,
  all problems in one launch, on the tensor's CUDA device (or through the Triton interpreter
  on CPU tensors when TRITON_INTERPRET=1, for tests).
- "auto": "gpu" for CUDA tensors, else "cpu" when built, else "scipy" (with a warning).
"""
import os
import warnings
from typing import Optional

import numpy as np
import torch

try:
    from . import _C
    _C_IMPORT_ERROR = None
except ImportError as _err:  # installed without a C++ compiler: scipy is the fallback
    _C = None
    _C_IMPORT_ERROR = _err

__all__ = ["linear_sum_assignment", "available_backends", "resolve_backend"]

BACKENDS = ("auto", "scipy", "cpu", "gpu")


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


def _scipy(cost: torch.Tensor, num_cols: torch.Tensor) -> torch.Tensor:
    from scipy.optimize import linear_sum_assignment as scipy_lsa

    costs = cost.detach().cpu().double().numpy()
    B, N, _ = costs.shape
    out = np.full((B, N), -1, dtype=np.int64)
    for b in range(B):
        c = costs[b, :, : int(num_cols[b])]
        if np.isnan(c).any() or np.isneginf(c).any():
            raise ValueError(f"cost matrix {b} contains NaN or -inf")
        if c.size == 0:
            continue
        try:
            rows, cols = scipy_lsa(c)
        except ValueError as e:  # scipy: "cost matrix is infeasible"
            raise ValueError(f"cost matrix {b}: {e}") from None
        out[b, rows] = cols
    return torch.from_numpy(out)


def _triton_interpreting() -> bool:
    """Triton kernels run on CPU tensors through the interpreter (tests on GPU-less machines)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def available_backends() -> tuple:
    """The backends usable in this process ("gpu" needs CUDA or the Triton interpreter)."""
    usable = ["scipy"]
    if _C is not None:
        usable.append("cpu")
    if torch.cuda.is_available() or _triton_interpreting():
        usable.append("gpu")
    return tuple(usable)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend "auto" means for costs on ``device`` (others pass through)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown matching backend {backend!r}; choose one of {BACKENDS}")
    if backend != "auto":
        return backend
    if device.type == "cuda":
        return "gpu"
    if _C is not None:
        return "cpu"
    # Python's default warning filter shows this once per process.
    warnings.warn(f"maskformer_fast._C is not built ({_C_IMPORT_ERROR}); matching uses scipy. "
                  "Reinstall with `pip install --no-build-isolation -e .` and a C++ compiler.")
    return "scipy"


def _cpu(cost: torch.Tensor, num_cols: torch.Tensor) -> torch.Tensor:
    if _C is None:
        raise RuntimeError(f"the cpu matching backend is not built: {_C_IMPORT_ERROR}")
    cost = cost.detach().cpu()
    if cost.dtype not in (torch.float32, torch.float64):
        cost = cost.float()  # half / bfloat16 are exact in float32
    return _C.linear_sum_assignment(cost.contiguous(), num_cols.contiguous())


def _gpu(cost: torch.Tensor, num_cols: torch.Tensor) -> torch.Tensor:
    from .kernels.hungarian import linear_sum_assignment_gpu

    if cost.device.type != "cuda" and not _triton_interpreting():
        raise ValueError(f"the gpu matching backend needs a CUDA tensor, got one on {cost.device}")
    return linear_sum_assignment_gpu(cost.detach(), num_cols)


_SOLVERS = {"scipy": _scipy, "cpu": _cpu, "gpu": _gpu}


def linear_sum_assignment(cost: torch.Tensor, num_cols: Optional[torch.Tensor] = None,
                          backend: str = "auto") -> torch.Tensor:
    """Minimum-cost assignment of rows to columns for a batch of cost matrices.

    cost: [B, N, M] or [N, M] float; num_cols: int [B], the valid columns of each padded
    problem (default M; a float or bool num_cols is refused, not truncated). Returns int64 [B, N] (or [N]) on cost's device: the column
    matched to each row, or -1. +inf marks a forbidden pair; NaN or -inf, or a problem whose
    +inf entries leave no complete matching, raise ValueError naming the batch index.
    backend: "auto", "scipy", "cpu" or "gpu" (see the module docstring).
    """
    num_cols = _validate(cost, num_cols)
    solver = _SOLVERS[resolve_backend(backend, cost.device)]
    squeeze = cost.dim() == 2
    batched = cost[None] if squeeze else cost
    out = solver(batched, num_cols).to(cost.device)
    return out[0] if squeeze else out
