"""Batched pairwise focal and dice mask costs for the Hungarian matcher, one launch.

``mask_costs(pred_masks, target_masks, num_targets)`` has the signature and the numbers of
``maskformer_fast.reference.mask_costs`` (the official MaskFormer matcher's
``batch_sigmoid_focal_loss`` and ``batch_dice_loss``), for all images and, when the
criterion stacks them into the batch, all decoder layers at once.

The op is a batched GEMM-like reduction over pixels. One program owns a
(batch b, block of queries, block of targets) tile of the [B, Q, K] outputs and walks the
pixels in blocks. From each logits tile it computes, in registers only, the sigmoid ``s`` and
the two focal terms

    focal_pos = alpha (1 - s)^2 softplus(-x)      (the cost of a pixel the target covers)
    focal_neg = (1 - alpha) s^2 softplus(x)       (the cost of a pixel it does not cover)

and accumulates three products with the target tile t (fp32 accumulators):
``focal_pos . t``, ``focal_neg . (1 - t)`` and ``s . t``, plus the row sums of ``s`` and
``t`` for the dice denominators. ``focal_neg . (1 - t)`` is its own product rather than
``rowsum(focal_neg) - focal_neg . t``: that difference cancels catastrophically for a
query that predicts a large target well, which is the pair the matcher must get right.
No [B, Q, h*w] sigmoid or log-sigmoid tensor is ever written; the logits are read once per
target block (once in all when Kmax <= 64) and upcast to fp32 before any math, so fp16
logits of any magnitude give finite costs (the pairwise focal cost of fp16 implementations
overflows at |x| of a few tens).

Precision: t is exactly {0, 1}, so each product runs on the tf32 tensor cores as
``a_hi . t + a_lo . t``, a_hi being a truncated to tf32 (exact) and a_lo the rest: fp32-level
accuracy (~2^-21 relative per term) with fp32 accumulation, for two tf32 products instead
of plain tf32's one (10-bit mantissa, ~1e-3 relative error, enough to flip near-tied
Hungarian assignments against the fp32 reference) or tf32x3's three. (A bf16 split would be
cheaper still, but the Triton 3.6 interpreter computes bf16 ``tl.dot`` wrongly, so it could
not be tested on CPU.)

Targets may be any strided view whose two pixel dimensions flatten, e.g. an ``expand()``-ed
batch (stride 0) when several predictions share one image's targets: nothing is copied.
Targets may be bool, uint8 or floating; logits fp32, fp16 or bf16. Costs are used under
``no_grad``: there is no backward.
"""
from dataclasses import dataclass
from functools import partial
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..reference import FOCAL_ALPHA, FOCAL_GAMMA
from ._library import launcher_op
from ._settings import LaunchConfig, compile_configs, config_name, next_power_of_2

__all__ = ["mask_costs", "unsupported", "CONFIGS", "pick", "MaskCostsConfig", "COMPILE_CONFIGS"]

assert FOCAL_GAMMA == 2.0, "the kernel squares (1 - p_t) explicitly: gamma is fixed at 2"



@dataclass(frozen=True)
class MaskCostsConfig(LaunchConfig):
    """One program: BLOCK_Q queries x BLOCK_K targets, BLOCK_P pixels per step."""

    BLOCK_Q: int
    BLOCK_K: int
    BLOCK_P: int
    num_warps: int
    num_stages: int


# BLOCK_Q=32 x BLOCK_P=32 with 8 warps: no spills on sm_90 at BLOCK_K=64 (BLOCK_P=64 or 4 warps
# spill). BLOCK_K: all of an image's targets in one block when Kmax <= 64, so the logits are read
# (and their sigmoid / softplus computed) once; tl.dot needs >= 16.
CONFIGS = {f"k{block_k}": MaskCostsConfig(BLOCK_Q=32, BLOCK_K=block_k, BLOCK_P=32, num_warps=8, num_stages=3)
           for block_k in (16, 32, 64)}


def pick(shape, dtype: torch.dtype) -> MaskCostsConfig:
    """The CONFIGS entry for target_masks of this shape ([B, Kmax, h, w]); the dtype does not matter."""
    return CONFIGS[f"k{max(16, min(64, next_power_of_2(shape[1])))}"]


@triton.jit
def _dot_exact_rhs(a, b, acc):
    """acc + a @ b at fp32 accuracy on tf32 tensor cores, for b exact in tf32 (here {0, 1}).

    a = a_hi + a_lo with a_hi a truncated to tf32's 10 mantissa bits (exact in tf32) and
    a_lo = a - a_hi exact in fp32, then rounded by the tensor core to ~2^-21 |a|.
    """
    a_hi = (a.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
    acc = tl.dot(a - a_hi, b, acc, input_precision="tf32")
    return tl.dot(a_hi, b, acc, input_precision="tf32")


@triton.jit
def _mask_costs_kernel(
    pred_ptr, target_ptr, num_targets_ptr, focal_ptr, dice_ptr,
    Q, K, P,
    stride_pb, stride_pq, stride_tb, stride_tk,
    alpha,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """One (b, query block, target block) tile of the [B, Q, K] costs; pixels contiguous."""
    b = tl.program_id(0)
    pid_q = tl.program_id(1)
    pid_k = tl.program_id(2)
    n_valid = tl.minimum(tl.load(num_targets_ptr + b), K)  # more than Kmax: all valid, as the reference

    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    out_offs = b.to(tl.int64) * Q * K + offs_q[:, None] * K + offs_k[None, :]
    out_mask = (offs_q[:, None] < Q) & (offs_k[None, :] < K)

    q_ok = offs_q < Q
    k_ok = offs_k < n_valid
    pred_rows = pred_ptr + b.to(tl.int64) * stride_pb + offs_q[:, None].to(tl.int64) * stride_pq
    target_cols = target_ptr + b.to(tl.int64) * stride_tb + offs_k[None, :].to(tl.int64) * stride_tk

    acc_pos = tl.zeros((BLOCK_Q, BLOCK_K), dtype=tl.float32)  # focal_pos . t
    acc_neg = tl.zeros((BLOCK_Q, BLOCK_K), dtype=tl.float32)  # focal_neg . (1 - t)
    acc_st = tl.zeros((BLOCK_Q, BLOCK_K), dtype=tl.float32)   # s . t
    sum_s = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    sum_t = tl.zeros((BLOCK_K,), dtype=tl.float32)

    # a block of padding targets only skips the pixel loop: its columns are stored as 0
    p_end = tl.where(pid_k * BLOCK_K < n_valid, P, 0)
    for p0 in range(0, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        p_ok = offs_p < P
        x = tl.load(pred_rows + offs_p[None, :], mask=q_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)
        t_ok = p_ok[:, None] & k_ok[None, :]
        t = tl.load(target_cols + offs_p[:, None], mask=t_ok, other=0).to(tl.float32)  # [P, K]

        # with e = exp(-|x|) (one exp for both): softplus(-x) = BCE(x, 1) = max(-x, 0) +
        # log(1 + e), softplus(x) = that + x, sigmoid(x) = (x >= 0 ? 1 : e) / (1 + e)
        e = tl.exp(-tl.abs(x))
        softplus_neg = tl.maximum(-x, 0.0) + tl.log(1.0 + e)
        softplus_pos = softplus_neg + x
        s = tl.where(p_ok[None, :], tl.where(x >= 0, 1.0, e) / (1.0 + e), 0.0)
        focal_pos = alpha * (1.0 - s) * (1.0 - s) * softplus_neg
        focal_neg = (1.0 - alpha) * s * s * softplus_pos

        acc_pos = _dot_exact_rhs(focal_pos, t, acc_pos)
        acc_neg = _dot_exact_rhs(focal_neg, tl.where(t_ok, 1.0 - t, 0.0), acc_neg)
        acc_st = _dot_exact_rhs(s, t, acc_st)
        sum_s += tl.sum(s, axis=1)
        sum_t += tl.sum(t, axis=0)

    focal = (acc_pos + acc_neg) / P
    dice = 1.0 - (2.0 * acc_st + 1.0) / (sum_s[:, None] + sum_t[None, :] + 1.0)
    valid = k_ok[None, :]
    tl.store(focal_ptr + out_offs, tl.where(valid, focal, 0.0), mask=out_mask)
    tl.store(dice_ptr + out_offs, tl.where(valid, dice, 0.0), mask=out_mask)


def unsupported(pred_masks, target_masks, num_targets) -> Optional[str]:
    """Why the kernel cannot run this call (None: it can); ``mask_costs`` raises it, ops falls back on it."""
    if pred_masks.dim() != 4 or target_masks.dim() != 4:
        return (f"mask_costs: pred_masks [B,Q,h,w] and target_masks [B,K,h,w] expected, got "
                f"{tuple(pred_masks.shape)} and {tuple(target_masks.shape)}")
    B, _, h, w = pred_masks.shape
    if target_masks.shape[0] != B or target_masks.shape[-2:] != (h, w):
        return (f"mask_costs: target_masks {tuple(target_masks.shape)} do not match pred_masks "
                f"{tuple(pred_masks.shape)} in batch or pixel size")
    if h * w == 0:
        return "mask_costs: masks have no pixels"
    if not pred_masks.is_floating_point() or pred_masks.dtype == torch.float64:
        return f"mask_costs: logits must be fp32, fp16 or bf16, got {pred_masks.dtype}"
    if target_masks.dtype not in (torch.bool, torch.uint8, torch.float32, torch.float16, torch.bfloat16):
        return f"mask_costs: targets must be bool, uint8 or fp32/fp16/bf16, got {target_masks.dtype}"
    if num_targets.dim() != 1 or num_targets.numel() != B or num_targets.is_floating_point():
        return (f"mask_costs: num_targets must be an integer [{B}] tensor, got "
                f"{num_targets.dtype} {tuple(num_targets.shape)}")
    if pred_masks.device != target_masks.device:
        return f"mask_costs: pred_masks on {pred_masks.device}, target_masks on {target_masks.device}"
    return None


def _mask_costs_fake(pred_masks, target_masks, num_targets):
    shape = (pred_masks.shape[0], pred_masks.shape[1], target_masks.shape[1])
    return pred_masks.new_empty(shape, dtype=torch.float32), pred_masks.new_empty(shape, dtype=torch.float32)


@launcher_op("mask_costs", _mask_costs_fake)
def _mask_costs(pred_masks: torch.Tensor, target_masks: torch.Tensor, num_targets: torch.Tensor,
                config: Optional[MaskCostsConfig] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    B, Q, h, w = pred_masks.shape
    K = target_masks.shape[1]
    P = h * w
    focal = torch.empty((B, Q, K), dtype=torch.float32, device=pred_masks.device)
    dice = torch.empty_like(focal)
    if focal.numel() == 0:
        return focal, dice
    pred = pred_masks.reshape(B, Q, P)
    if pred.stride(-1) != 1:
        pred = pred.contiguous()
    target = target_masks.reshape(B, K, P)
    if target.stride(-1) != 1:
        target = target.contiguous()
    if target.dtype == torch.bool:
        target = target.view(torch.uint8)
    num_targets = num_targets.to(device=pred.device, dtype=torch.int32)
    config = pick(target_masks.shape, target_masks.dtype) if config is None else config
    grid = (B, triton.cdiv(Q, config.BLOCK_Q), triton.cdiv(K, config.BLOCK_K))
    _mask_costs_kernel[grid](
        pred, target, num_targets, focal, dice,
        Q, K, P,
        pred.stride(0), pred.stride(1), target.stride(0), target.stride(1),
        FOCAL_ALPHA,
        **config.kwargs(),
    )
    return focal, dice


def mask_costs(
    pred_masks: torch.Tensor,
    target_masks: torch.Tensor,
    num_targets: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairwise (focal_cost, dice_cost), each float32 [B, Q, Kmax]; columns k >= num_targets are 0.

    pred_masks: logits [B, Q, h, w] (fp32/fp16/bf16); target_masks: {0,1} [B, Kmax, h, w]
    (bool/uint8/float, any strides over B and Kmax); num_targets: int [B].
    """
    reason = unsupported(pred_masks, target_masks, num_targets)
    if reason is not None:
        raise ValueError(reason)
    return _mask_costs(pred_masks, target_masks, num_targets)


def _compile_examples():
    """(config name, launch) pairs: the criterion's call on meta tensors (16 images x 6 decoder
    layers x 100 queries, 128^2 logits, bool targets), at a Kmax for each BLOCK_K, plus the target
    dtypes that change the kernel's loads and an expand()-ed (stride-0) batch of targets."""
    B, Q, size = 16, 600, 128
    num_targets = torch.empty(B, dtype=torch.int64, device="meta")
    for pred_dtype, target_dtype, K in ((torch.float32, torch.bool, 10), (torch.bfloat16, torch.bool, 20),
                                        (torch.bfloat16, torch.bool, 50), (torch.float16, torch.float32, 64),
                                        (torch.float32, torch.bfloat16, 64)):
        pred = torch.empty(B, Q, size, size, dtype=pred_dtype, device="meta")
        target = torch.empty(B, K, size, size, dtype=target_dtype, device="meta")
        yield config_name(CONFIGS, pick(target.shape, target.dtype)), partial(_mask_costs, pred, target, num_targets)
    pred = torch.empty(B, Q, size, size, dtype=torch.bfloat16, device="meta")
    shared = torch.empty(1, 37, size, size, dtype=torch.bool, device="meta").expand(B, -1, -1, -1)
    yield "k64", partial(_mask_costs, pred, shared, num_targets)


COMPILE_CONFIGS = compile_configs(__name__, _compile_examples())
