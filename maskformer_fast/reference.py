"""Eager reference of every hot op: short, obviously right, and the spec for the kernels.

Each function here has a Triton twin in ``kernels/`` (the matcher also a C++ one,
``maskformer_fast._C``); ``maskformer_fast.ops`` is the only place that chooses between them
(``ops.OPS`` lists them). Formulas follow the official MaskFormer code
(facebookresearch/MaskFormer, ``mask_former/modeling/{matcher,criterion}.py``).
"""
import math
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["group_norm_act", "attention", "mask_costs", "mask_losses", "linear_sum_assignment", "column_counts"]

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def group_norm_act(
    x: torch.Tensor,
    num_groups: int,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float = 1e-5,
    activation: str = "relu",
) -> torch.Tensor:
    """GroupNorm (statistics in fp32, or fp64 for fp64 input) followed by an activation.

    x: [N, C, H, W] (any memory format). activation: "relu" or "none".
    """
    if activation not in ("relu", "none"):
        raise ValueError(f"group_norm_act: activation must be 'relu' or 'none', got {activation!r}")
    stats_dtype = torch.promote_types(x.dtype, torch.float32)
    y = F.group_norm(
        x.to(stats_dtype), num_groups,
        None if weight is None else weight.to(stats_dtype),
        None if bias is None else bias.to(stats_dtype), eps,
    ).to(x.dtype)
    return F.relu(y) if activation == "relu" else y


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """softmax(q k^T * scale) v over the key axis.

    q: [B, h, Lq, d]; k, v: [B, h, Lk, d]; key_padding_mask: bool [B, Lk], True = ignore
    that key (nn.MultiheadAttention's convention). dropout_p drops attention weights, as
    nn.MultiheadAttention does in training. Returns [B, h, Lq, d].
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    weights = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return torch.matmul(weights, v)


def mask_costs(
    pred_masks: torch.Tensor,
    target_masks: torch.Tensor,
    num_targets: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairwise focal and dice matching costs, batched over images.

    pred_masks: logits [B, Q, h, w]; target_masks: {0,1} [B, K, h, w], padded per image;
    num_targets: int [B]. Returns (focal_cost, dice_cost), each float32 [B, Q, K]; columns
    k >= num_targets[b] are 0. Accumulation is fp32 whatever the input dtype (fp64 for fp64).
    """
    B, Q = pred_masks.shape[:2]
    K = target_masks.shape[1]
    dtype = torch.promote_types(pred_masks.dtype, torch.float32)  # fp32, or fp64 for tests
    x = pred_masks.flatten(2).to(dtype)
    t = target_masks.flatten(2).to(dtype)
    hw = x.shape[-1]
    prob = x.sigmoid()
    # softplus(-x) = BCE(x, 1) and softplus(x) = BCE(x, 0), both stable for large |x|.
    focal_pos = FOCAL_ALPHA * (1 - prob) ** FOCAL_GAMMA * F.softplus(-x)
    focal_neg = (1 - FOCAL_ALPHA) * prob ** FOCAL_GAMMA * F.softplus(x)
    focal = (torch.einsum("bqp,bkp->bqk", focal_pos, t)
             + torch.einsum("bqp,bkp->bqk", focal_neg, 1 - t)) / hw
    numerator = 2 * torch.einsum("bqp,bkp->bqk", prob, t)
    denominator = prob.sum(-1)[:, :, None] + t.sum(-1)[:, None, :]
    dice = 1 - (numerator + 1) / (denominator + 1)
    valid = torch.arange(K, device=x.device)[None, :] < num_targets.to(x.device)[:, None]
    valid = valid[:, None, :]
    return focal * valid, dice * valid


def mask_losses(
    pred_masks: torch.Tensor,
    target_masks: torch.Tensor,
    num_masks: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid focal and dice losses of matched masks, predictions upsampled to the targets.

    pred_masks: logits [M, h, w] (stride 4); target_masks: {0,1} [M, H, W] at the padded
    image size. The prediction is upsampled bilinearly (align_corners=False) to H x W.
    Returns unweighted (focal_loss, dice_loss) scalars: focal is averaged over pixels,
    both are summed over masks and divided by num_masks.
    """
    M = pred_masks.shape[0]
    dtype = torch.promote_types(pred_masks.dtype, torch.float32)  # fp32, or fp64 for tests
    x = F.interpolate(pred_masks[:, None].to(dtype), size=target_masks.shape[-2:],
                      mode="bilinear", align_corners=False).reshape(M, -1)
    t = target_masks.reshape(M, -1).to(x.dtype)
    prob = x.sigmoid()
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = prob * t + (1 - prob) * (1 - t)
    alpha_t = FOCAL_ALPHA * t + (1 - FOCAL_ALPHA) * (1 - t)
    focal = (alpha_t * ce * (1 - p_t) ** FOCAL_GAMMA).mean(1).sum() / num_masks
    numerator = 2 * (prob * t).sum(-1)
    denominator = prob.sum(-1) + t.sum(-1)
    dice = (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks
    return focal, dice


def column_counts(cost: torch.Tensor, num_cols: Optional[torch.Tensor]) -> torch.Tensor:
    """The valid columns of each problem of cost [B, N, M], int64 [B] on the CPU (None: all M)."""
    B, _, M = cost.shape
    if num_cols is None:
        return torch.full((B,), M, dtype=torch.int64)
    return torch.as_tensor(num_cols).to("cpu", torch.int64)


def linear_sum_assignment(cost: torch.Tensor, num_cols: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Minimum-cost assignment of each problem cost[b, :, :num_cols[b]]: scipy, one problem at a time.

    cost: [B, N, M] float; num_cols: int [B] (default M). Returns int64 [B, N] on cost's device:
    the column matched to each row, or -1. +inf marks a forbidden pair; NaN or -inf, or +inf
    entries that leave no complete matching, raise ValueError naming the problem's index b.
    """
    from scipy.optimize import linear_sum_assignment as scipy_lsa

    counts = column_counts(cost, num_cols).tolist()
    costs = cost.detach().cpu().double().numpy()
    out = np.full(costs.shape[:2], -1, dtype=np.int64)
    for b, count in enumerate(counts):
        c = costs[b, :, :count]
        if np.isnan(c).any() or np.isneginf(c).any():
            raise ValueError(f"cost matrix {b} contains NaN or -inf")
        if c.size == 0:
            continue
        try:
            rows, cols = scipy_lsa(c)
        except ValueError as e:  # scipy: "cost matrix is infeasible"
            raise ValueError(f"cost matrix {b}: {e}") from None
        out[b, rows] = cols
    return torch.from_numpy(out).to(cost.device)
