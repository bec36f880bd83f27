"""linear_sum_assignment front: one call solves every (layer, image) problem of a step.

Backends: "scipy" (the reference: scipy.optimize.linear_sum_assignment per problem).
"cpu" (C++) and "gpu" (Triton) are added by the matcher issue; "auto" picks the best
available for the cost's device.
"""
from typing import Optional

import numpy as np
import torch

__all__ = ["linear_sum_assignment"]


def _validate(cost: torch.Tensor, num_cols: Optional[torch.Tensor]):
    if cost.dim() not in (2, 3):
        raise ValueError(f"cost must be [N, M] or [B, N, M], got shape {tuple(cost.shape)}")
    if not cost.is_floating_point():
        raise ValueError(f"cost must be a floating tensor, got dtype {cost.dtype}")
    B, _, M = cost.shape if cost.dim() == 3 else (1, *cost.shape)
    if num_cols is None:
        num_cols = torch.full((B,), M, dtype=torch.int64)
    num_cols = torch.as_tensor(num_cols, dtype=torch.int64).cpu()
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


def linear_sum_assignment(cost: torch.Tensor, num_cols: Optional[torch.Tensor] = None,
                          backend: str = "auto") -> torch.Tensor:
    """Minimum-cost assignment of rows to columns for a batch of cost matrices.

    cost: [B, N, M] or [N, M] float; num_cols: int [B], the valid columns of each padded
    problem (default M). Returns int64 [B, N] (or [N]) on cost's device: the column
    matched to each row, or -1. +inf marks a forbidden pair; NaN or -inf raise ValueError.
    """
    num_cols = _validate(cost, num_cols)
    squeeze = cost.dim() == 2
    batched = cost[None] if squeeze else cost
    if backend not in ("auto", "scipy"):
        raise ValueError(f"unknown matching backend {backend!r}")
    out = _scipy(batched, num_cols).to(cost.device)
    return out[0] if squeeze else out
