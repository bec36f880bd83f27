"""Focal and dice losses of matched masks with the bilinear upsampling fused in, fwd and bwd.

``mask_losses(pred_masks, target_masks, num_masks)`` has the signature and the numbers of
``maskformer_fast.reference.mask_losses``, i.e. the official criterion's
``F.interpolate(bilinear, align_corners=False) -> sigmoid_focal_loss -> dice_loss`` path, but
the [M, H, W] upsampled logits, probabilities and per-pixel losses are never written to
memory, in forward or in backward: each program recomputes the upsampled logit of its output
pixels from the four source logits (L1/L2-resident: the [M, h, w] predictions are 1/16 of the
targets' pixels). That is the answer to the training-memory problem Mask2Former solved by
point sampling, here with the exact loss.

Upsampling: F.interpolate's source index, for output row y of H from h input rows,
``src = max((y + 0.5) * h / H - 0.5, 0)``, ``y0 = floor(src)``, ``y1 = y0 + (y0 < h - 1)``,
``ly = src - y0``; likewise for columns; value
``(1-ly) ((1-lx) x[y0,x0] + lx x[y0,x1]) + ly ((1-lx) x[y1,x0] + lx x[y1,x1])``.

Forward (``_mask_losses_fwd_kernel``): one program per (mask, block of output rows) walks the
row block's columns and writes four partial sums -- focal loss, sum(s t), sum(s), sum(t) --
to a [M, row blocks, 4] buffer; torch adds them up (deterministic, no atomics) and forms the
two scalars. The per-mask totals are saved for the dice backward.

Backward (``_mask_losses_bwd_kernel``): the upsampling's adjoint is separable,
``grad_src = Wy^T G Wx`` with G the per-pixel gradient wrt the upsampled logits and Wy [H, h],
Wx [W, w] the interpolation weights (two nonzeros per row). One program owns a tile of
SOURCE pixels, walks the window of output pixels that touch it in chunks, recomputes G there
and accumulates ``Wy_chunk^T (G_chunk Wx_chunk)`` with two small tensor-core products. Every
source pixel is written by exactly one program: no atomics, deterministic. The chunk's Wy/Wx
entries come from the same index formula as the forward, so they are exact; the window is
only a conservative bound (rows outside it have zero weight).

The focal formula is the official general one (alpha_t, p_t, BCE with logits), so float
targets in [0, 1] give the reference's numbers too; gamma is 2.
"""
from dataclasses import dataclass
from functools import partial
from typing import Optional, Tuple, Union

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from ..reference import FOCAL_ALPHA, FOCAL_GAMMA
from ._library import launcher_op
from ._settings import LaunchConfig, compile_configs

__all__ = ["mask_losses", "unsupported", "CONFIGS", "pick", "MaskLossesConfig", "COMPILE_CONFIGS"]

assert FOCAL_GAMMA == 2.0, "the kernels square (1 - p_t) explicitly: gamma is fixed at 2"



@dataclass(frozen=True)
class ForwardBlocks(LaunchConfig):
    """One forward program: BLOCK_Y output rows, BLOCK_X columns at a time."""

    BLOCK_Y: int
    BLOCK_X: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class BackwardBlocks(LaunchConfig):
    """One backward program: BLOCK_I x BLOCK_J source pixels, output window in CHUNK x CHUNK pieces."""

    BLOCK_I: int
    BLOCK_J: int
    CHUNK: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class MaskLossesConfig:
    forward: ForwardBlocks
    backward: BackwardBlocks


CONFIGS = {
    # one config for every shape and dtype. Backward num_stages=1: software pipelining of the
    # chunk loop buffers the gathered fp32 logits (255 registers and spills on sm_90; the
    # gathers hit L1/L2 anyway)
    "default": MaskLossesConfig(forward=ForwardBlocks(BLOCK_Y=16, BLOCK_X=128, num_warps=8, num_stages=3),
                                backward=BackwardBlocks(BLOCK_I=32, BLOCK_J=32, CHUNK=32, num_warps=4, num_stages=1)),
}


def pick(shape, dtype: torch.dtype) -> MaskLossesConfig:
    """The CONFIGS entry for pred_masks of this shape ([M, h, w]) and dtype: the one there is."""
    return CONFIGS["default"]

_PRED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_TARGET_DTYPES = (torch.bool, torch.uint8, torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _source_index(dst, scale, n_src):
    """F.interpolate(bilinear, align_corners=False): (lower index, upper index, upper weight)."""
    src = tl.maximum((dst.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
    lo = src.to(tl.int32)  # src >= 0: truncation is floor
    hi = tl.where(lo < n_src - 1, lo + 1, lo)
    return lo, hi, src - lo.to(tl.float32)


@triton.jit
def _upsampled_logits(pred_m, stride_py, stride_px, offs_y, offs_x, mask, h, w, scale_y, scale_x):
    """[BY, BX] bilinear upsampled logits (fp32) at output rows offs_y, columns offs_x."""
    y0, y1, ly = _source_index(offs_y, scale_y, h)
    x0, x1, lx = _source_index(offs_x, scale_x, w)
    row0 = pred_m + (y0 * stride_py)[:, None]
    row1 = pred_m + (y1 * stride_py)[:, None]
    col0 = (x0 * stride_px)[None, :]
    col1 = (x1 * stride_px)[None, :]
    v00 = tl.load(row0 + col0, mask=mask, other=0.0).to(tl.float32)
    v01 = tl.load(row0 + col1, mask=mask, other=0.0).to(tl.float32)
    v10 = tl.load(row1 + col0, mask=mask, other=0.0).to(tl.float32)
    v11 = tl.load(row1 + col1, mask=mask, other=0.0).to(tl.float32)
    lx = lx[None, :]
    ly = ly[:, None]
    return (1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11)


@triton.jit
def _focal_terms(x, t, alpha):
    """sigmoid s, BCE-with-logits ce, 1 - p_t and alpha_t of the official sigmoid_focal_loss."""
    # one exp serves both: with e = exp(-|x|), sigmoid = (x >= 0 ? 1 : e) / (1 + e) and
    # softplus(x) = max(x, 0) + log(1 + e) (the special-function unit is the bottleneck)
    e = tl.exp(-tl.abs(x))
    s = tl.where(x >= 0, 1.0, e) / (1.0 + e)
    ce = tl.maximum(x, 0.0) - x * t + tl.log(1.0 + e)
    one_minus_pt = 1.0 - (s * t + (1.0 - s) * (1.0 - t))
    alpha_t = alpha * t + (1.0 - alpha) * (1.0 - t)
    return s, ce, one_minus_pt, alpha_t


@triton.jit
def _mask_losses_fwd_kernel(
    pred_ptr, target_ptr, partial_ptr,
    h, w, H, W, n_row_blocks,
    stride_pm, stride_py, stride_px, stride_tm, stride_ty, stride_tx,
    scale_y, scale_x, alpha,
    BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr,
):
    """Partial sums (focal, s*t, s, t) of mask m over output rows [pid_y*BLOCK_Y, +BLOCK_Y)."""
    m = tl.program_id(0)
    pid_y = tl.program_id(1)
    pred_m = pred_ptr + m.to(tl.int64) * stride_pm
    target_m = target_ptr + m.to(tl.int64) * stride_tm
    offs_y = pid_y * BLOCK_Y + tl.arange(0, BLOCK_Y)
    y_ok = offs_y < H
    target_rows = target_m + (offs_y.to(tl.int64) * stride_ty)[:, None]

    acc_focal = tl.zeros((BLOCK_Y, BLOCK_X), dtype=tl.float32)
    acc_st = tl.zeros((BLOCK_Y, BLOCK_X), dtype=tl.float32)
    acc_s = tl.zeros((BLOCK_Y, BLOCK_X), dtype=tl.float32)
    acc_t = tl.zeros((BLOCK_Y, BLOCK_X), dtype=tl.float32)
    for x_start in range(0, W, BLOCK_X):
        offs_x = x_start + tl.arange(0, BLOCK_X)
        mask = y_ok[:, None] & (offs_x < W)[None, :]
        x = _upsampled_logits(pred_m, stride_py, stride_px, offs_y, offs_x, mask, h, w, scale_y, scale_x)
        t = tl.load(target_rows + (offs_x.to(tl.int64) * stride_tx)[None, :], mask=mask, other=0).to(tl.float32)
        s, ce, one_minus_pt, alpha_t = _focal_terms(x, t, alpha)
        acc_focal += tl.where(mask, alpha_t * ce * one_minus_pt * one_minus_pt, 0.0)
        s = tl.where(mask, s, 0.0)
        acc_st += s * t
        acc_s += s
        acc_t += t

    out = partial_ptr + (m.to(tl.int64) * n_row_blocks + pid_y) * 4
    tl.store(out, tl.sum(tl.sum(acc_focal, axis=1), axis=0))
    tl.store(out + 1, tl.sum(tl.sum(acc_st, axis=1), axis=0))
    tl.store(out + 2, tl.sum(tl.sum(acc_s, axis=1), axis=0))
    tl.store(out + 3, tl.sum(tl.sum(acc_t, axis=1), axis=0))


@triton.jit
def _interp_weights(offs_dst, offs_src, scale, n_src):
    """[len(dst), len(src)] block of the interpolation matrix (dst pixel -> its two sources)."""
    lo, hi, w_hi = _source_index(offs_dst, scale, n_src)
    src = offs_src[None, :]
    return (tl.where(lo[:, None] == src, 1.0 - w_hi[:, None], 0.0)
            + tl.where(hi[:, None] == src, w_hi[:, None], 0.0))


@triton.jit
def _first_touching(i, inv_scale):
    """A lower bound on the first output index whose lower source index is >= i - 1."""
    return tl.maximum(((i.to(tl.float32) - 0.5) * inv_scale - 0.5).to(tl.int32) - 2, 0)


@triton.jit
def _end_touching(i_last, inv_scale, n_dst):
    """An upper bound (exclusive) on the output indices whose lower source index is <= i_last."""
    return tl.minimum(((i_last.to(tl.float32) + 1.5) * inv_scale - 0.5).to(tl.int32) + 3, n_dst)


@triton.jit
def _mask_losses_bwd_kernel(
    pred_ptr, target_ptr, coef_ptr, grad_ptr,
    h, w, H, W,
    stride_pm, stride_py, stride_px, stride_tm, stride_ty, stride_tx,
    scale_y, scale_x, inv_scale_y, inv_scale_x, alpha,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, CHUNK: tl.constexpr,
):
    """grad wrt pred_masks[m, i-tile, j-tile] = sum over touching output pixels (Wy^T G Wx).

    coef[m] = (focal, dice_s, dice_st): the per-pixel gradient wrt the upsampled logit is
    focal * d(focal_loss)/dx + (dice_s - dice_st * t) * s (1 - s).
    """
    m = tl.program_id(0)
    i0 = tl.program_id(1) * BLOCK_I
    j0 = tl.program_id(2) * BLOCK_J
    pred_m = pred_ptr + m.to(tl.int64) * stride_pm
    target_m = target_ptr + m.to(tl.int64) * stride_tm
    coef_focal = tl.load(coef_ptr + m * 3)
    coef_dice_s = tl.load(coef_ptr + m * 3 + 1)
    coef_dice_st = tl.load(coef_ptr + m * 3 + 2)
    offs_i = i0 + tl.arange(0, BLOCK_I)
    offs_j = j0 + tl.arange(0, BLOCK_J)

    y_begin = _first_touching(i0, inv_scale_y)
    y_end = _end_touching(tl.minimum(i0 + BLOCK_I, h) - 1, inv_scale_y, H)
    x_begin = _first_touching(j0, inv_scale_x)
    x_end = _end_touching(tl.minimum(j0 + BLOCK_J, w) - 1, inv_scale_x, W)

    acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
    for y_start in range(y_begin, y_end, CHUNK):
        offs_y = y_start + tl.arange(0, CHUNK)
        y_ok = offs_y < y_end
        wy = _interp_weights(offs_y, offs_i, scale_y, h)  # [CHUNK, BLOCK_I]
        target_rows = target_m + (offs_y.to(tl.int64) * stride_ty)[:, None]
        g_times_wx = tl.zeros((CHUNK, BLOCK_J), dtype=tl.float32)
        for x_start in range(x_begin, x_end, CHUNK):
            offs_x = x_start + tl.arange(0, CHUNK)
            mask = y_ok[:, None] & (offs_x < x_end)[None, :]
            x = _upsampled_logits(pred_m, stride_py, stride_px, offs_y, offs_x, mask, h, w, scale_y, scale_x)
            t = tl.load(target_rows + (offs_x.to(tl.int64) * stride_tx)[None, :], mask=mask, other=0).to(tl.float32)
            s, ce, one_minus_pt, alpha_t = _focal_terms(x, t, alpha)
            ds = s * (1.0 - s)
            d_focal = alpha_t * ((s - t) * one_minus_pt * one_minus_pt
                                 - 2.0 * ce * one_minus_pt * ds * (2.0 * t - 1.0))
            g = coef_focal * d_focal + (coef_dice_s - coef_dice_st * t) * ds
            g = tl.where(mask, g, 0.0)
            wx = _interp_weights(offs_x, offs_j, scale_x, w)  # [CHUNK, BLOCK_J]
            g_times_wx = tl.dot(g, wx, g_times_wx, input_precision="tf32x3")
        acc = tl.dot(tl.trans(wy), g_times_wx, acc, input_precision="tf32x3")

    out_mask = (offs_i < h)[:, None] & (offs_j < w)[None, :]
    out = grad_ptr + m.to(tl.int64) * h * w + offs_i[:, None] * w + offs_j[None, :]
    tl.store(out, acc.to(grad_ptr.dtype.element_ty), mask=out_mask)


def unsupported(pred_masks, target_masks, num_masks) -> Optional[str]:
    """Why the kernels cannot run this call (None: they can); ``mask_losses`` raises it, ops falls back on it."""
    if pred_masks.dim() != 3 or target_masks.dim() != 3 or pred_masks.shape[0] != target_masks.shape[0]:
        return (f"mask_losses: pred_masks [M,h,w] and target_masks [M,H,W] expected, got "
                f"{tuple(pred_masks.shape)} and {tuple(target_masks.shape)}")
    if min(pred_masks.shape[1:]) == 0 or min(target_masks.shape[1:]) == 0:
        return f"mask_losses: masks have no pixels: {tuple(pred_masks.shape)}, {tuple(target_masks.shape)}"
    if pred_masks.dtype not in _PRED_DTYPES:
        return f"mask_losses: logits must be fp32, fp16 or bf16, got {pred_masks.dtype}"
    if target_masks.dtype not in _TARGET_DTYPES:
        return f"mask_losses: targets must be bool, uint8 or fp32/fp16/bf16, got {target_masks.dtype}"
    if pred_masks.device != target_masks.device:
        return f"mask_losses: pred_masks on {pred_masks.device}, target_masks on {target_masks.device}"
    return None


def _readable_target(target_masks: torch.Tensor) -> torch.Tensor:
    return target_masks.view(torch.uint8) if target_masks.dtype == torch.bool else target_masks


def _forward_fake(pred_masks, target_masks):
    return pred_masks.new_empty(pred_masks.shape[0], 4, dtype=torch.float32)


@launcher_op("mask_losses_fwd", _forward_fake)
def mask_losses_forward(pred_masks: torch.Tensor, target_masks: torch.Tensor,
                        config: Optional[MaskLossesConfig] = None) -> torch.Tensor:
    """Per-mask totals, float32 [M, 4]: (sum of focal loss, sum s*t, sum s, sum t) over H x W."""
    M, h, w = pred_masks.shape
    H, W = target_masks.shape[1:]
    blocks = (pick(pred_masks.shape, pred_masks.dtype) if config is None else config).forward
    n_row_blocks = triton.cdiv(H, blocks.BLOCK_Y)
    partial = torch.empty((M, n_row_blocks, 4), dtype=torch.float32, device=pred_masks.device)
    target = _readable_target(target_masks)
    _mask_losses_fwd_kernel[(M, n_row_blocks)](
        pred_masks, target, partial,
        h, w, H, W, n_row_blocks,
        *pred_masks.stride(), *target.stride(),
        h / H, w / W, FOCAL_ALPHA,
        **blocks.kwargs(),
    )
    return partial.sum(1)


def _backward_fake(pred_masks, target_masks, coef):
    return pred_masks.new_empty(pred_masks.shape)


@launcher_op("mask_losses_bwd", _backward_fake)
def mask_losses_backward(pred_masks: torch.Tensor, target_masks: torch.Tensor, coef: torch.Tensor,
                         config: Optional[MaskLossesConfig] = None) -> torch.Tensor:
    """grad wrt pred_masks [M, h, w] (pred dtype), given the per-mask coefficients [M, 3]."""
    M, h, w = pred_masks.shape
    H, W = target_masks.shape[1:]
    blocks = (pick(pred_masks.shape, pred_masks.dtype) if config is None else config).backward
    grad = torch.empty((M, h, w), dtype=pred_masks.dtype, device=pred_masks.device)
    target = _readable_target(target_masks)
    grid = (M, triton.cdiv(h, blocks.BLOCK_I), triton.cdiv(w, blocks.BLOCK_J))
    _mask_losses_bwd_kernel[grid](
        pred_masks, target, coef.contiguous(), grad,
        h, w, H, W,
        *pred_masks.stride(), *target.stride(),
        h / H, w / W, H / h, W / w, FOCAL_ALPHA,
        **blocks.kwargs(),
    )
    return grad


class MaskLossesFunction(torch.autograd.Function):
    """(focal_loss, dice_loss) scalars of pred_masks [M, h, w] vs target_masks [M, H, W].

    Saves the inputs (already alive in the criterion) and the [M, 4] per-mask totals.
    """

    @staticmethod
    def forward(ctx, pred_masks, target_masks, num_masks):
        H, W = target_masks.shape[1:]
        totals = mask_losses_forward(pred_masks, target_masks)
        focal_sum, st, s, t = totals.unbind(1)
        focal = (focal_sum / (H * W)).sum() / num_masks
        dice = (1.0 - (2.0 * st + 1.0) / (s + t + 1.0)).sum() / num_masks
        ctx.save_for_backward(pred_masks, target_masks, totals)
        ctx.num_masks = num_masks
        return focal, dice

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_focal, grad_dice):
        pred_masks, target_masks, totals = ctx.saved_tensors
        H, W = target_masks.shape[1:]
        _, st, s, t = totals.unbind(1)
        denominator = s + t + 1.0
        numerator = 2.0 * st + 1.0
        # dice_m = 1 - num / den: d dice_m / d s_p = num / den^2 - 2 t_p / den
        scaled_dice = grad_dice / ctx.num_masks
        coef = torch.stack([
            (grad_focal / (ctx.num_masks * H * W)).expand_as(s),
            scaled_dice * numerator / denominator**2,
            scaled_dice * 2.0 / denominator,
        ], 1).float()
        return mask_losses_backward(pred_masks, target_masks, coef), None, None


def mask_losses(
    pred_masks: torch.Tensor,
    target_masks: torch.Tensor,
    num_masks: Union[float, torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unweighted (focal_loss, dice_loss) float32 scalars, differentiable wrt pred_masks.

    pred_masks: logits [M, h, w] (fp32/fp16/bf16, any strides); target_masks: {0,1} [M, H, W]
    (bool/uint8/float, any strides), H and W arbitrary (usually 4h, 4w); num_masks: the
    normaliser (float or 0-d tensor). M = 0 gives zeros that still depend on pred_masks.
    """
    reason = unsupported(pred_masks, target_masks, num_masks)
    if reason is not None:
        raise ValueError(reason)
    if pred_masks.shape[0] == 0:
        zero = pred_masks.float().sum() * 0.0
        return zero, zero.clone()
    return MaskLossesFunction.apply(pred_masks, target_masks, num_masks)


def _compile_examples():
    """(config name, launch) pairs: forward and backward of the criterion's matched masks on meta
    tensors, 128^2 logits against 512^2 targets, contiguous (unit column strides), per logits /
    target dtype pair the kernels' loads distinguish; plus logits read through a transpose."""
    M, h, w, scale = 64, 128, 128, 4
    coef = torch.empty(M, 3, device="meta")
    for pred_dtype, target_dtype in ((torch.float32, torch.bool), (torch.bfloat16, torch.bool),
                                     (torch.float16, torch.float32), (torch.float32, "transposed")):
        pred = torch.empty(M, h, w, dtype=pred_dtype, device="meta")
        if target_dtype == "transposed":
            pred, target_dtype = pred.transpose(1, 2), torch.bool
        target = torch.empty(M, h * scale, w * scale, dtype=target_dtype, device="meta")
        yield "default", partial(mask_losses_forward, pred, target, config=CONFIGS["default"])
        yield "default", partial(mask_losses_backward, pred, target, coef, config=CONFIGS["default"])


COMPILE_CONFIGS = compile_configs(__name__, _compile_examples())
