"""GroupNorm + activation (ReLU or none) in Triton, forward and backward.

Fuses the pixel decoder's GN -> ReLU into one pass over the conv output: statistics in fp32
(fp64 for fp64 input), normalise, affine, ReLU, store in x's dtype. Eager runs GN (stats
pass + apply pass) and then ReLU (another read and write).

A group is ``C/G`` channels x ``H*W`` pixels. The launcher picks one of two schedules:

* one pass -- the whole group fits one program's registers (<= ``GroupNormConfig.one_pass_max`` elements):
  one program per (n, g) loads the group once, reduces, normalises and stores.
  Memory traffic: read x + write y (the floor).
* two phases -- bigger groups are cut into chunks of ``GroupNormConfig.chunk`` elements, one program per
  (n, g, chunk). Phase 1 stores each chunk's mean and M2 (sum of squared deviations from the
  chunk mean, exact in registers); phase 2 combines the chunk statistics with Chan's formula
  (no E[x^2] - E[x]^2 cancellation), normalises its chunk and stores it. Traffic: 2 reads of x
  + 1 write.

Backward (y = act(xhat * w + b), xhat = (x - mean) * rstd, per group of M elements):
  dz = dy * (z > 0) for ReLU (z recomputed from x: output > 0 iff z > 0), dbias_c = sum dz,
  dweight_c = sum dz * xhat, and with dxhat = dz * w_c:
  dx = rstd * (dxhat - (sum dxhat + xhat * sum dxhat * xhat) / M).
The group sums follow from the per-channel ones (sum dxhat = sum_c w_c dbias_c, ...), so
phase 1 only stores per-(n, c, chunk) partials of dbias and dweight; torch sums them over
chunks (a small [N*C, chunks] tensor) and phase 2 (or the one pass, which computes the sums
itself) writes dx. dweight / dbias are those per-(n, c) sums summed over n.

Layouts: x contiguous (NCHW) or channels_last, read through its strides (Triton specialises
the unit stride, so either layout gets contiguous vector loads); y keeps x's layout.
"""
from dataclasses import dataclass
from functools import partial
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._library import launcher_op
from ._settings import block_and_warps, compile_configs, next_power_of_2, tl_dtype

__all__ = ["group_norm_act", "unsupported", "CONFIGS", "pick", "GroupNormConfig", "COMPILE_CONFIGS"]

ACTIVATIONS = ("relu", "none")
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
MAX_CHANNELS_PER_GROUP = 4096


@dataclass(frozen=True)
class GroupNormConfig:
    """Groups up to ``one_pass_max`` elements (padded to powers of two) use the one-pass schedule;
    larger ones are split into chunks of ``chunk`` elements. The block sizes and warps of a launch
    follow from these and the group's shape (``_Schedule``). Tests shrink both to reach the
    two-phase path at interpreter-friendly sizes."""

    one_pass_max: int
    chunk: int


CONFIGS = {"default": GroupNormConfig(one_pass_max=8192, chunk=4096)}


def pick(shape, dtype: torch.dtype) -> GroupNormConfig:
    """The CONFIGS entry for x of this shape ([N, C, H, W]) and dtype: the one there is."""
    return CONFIGS["default"]


@triton.jit
def _row_and_chunk(num_chunks, REVERSED: tl.constexpr):
    """(row = n * G + g, chunk) of this program in the 1-D grid of N * G * num_chunks programs
    (1-D: a second grid axis is capped at 65535, which large groups of small chunks exceed).
    REVERSED walks the grid backwards: phase 2 of the two-phase schedule then starts with the
    chunks phase 1 read last, still in L2."""
    pid = tl.program_id(0)
    if REVERSED:
        pid = tl.num_programs(0) - 1 - pid
    return pid // num_chunks, pid % num_chunks


@triton.jit
def _apply_program(num_chunks, ONE_PASS: tl.constexpr):
    """(row, chunk) of a phase-2 program: in grid order for one pass, reversed for two phases."""
    if ONE_PASS:
        return _row_and_chunk(num_chunks, False)
    return _row_and_chunk(num_chunks, True)


@triton.jit
def _group_tile(x_ptr, n, g, chunk, HW, CPG, stride_n, stride_c, stride_p,
                CPG_BLOCK: tl.constexpr, BLOCK_P: tl.constexpr):
    """Offsets [CPG_BLOCK, BLOCK_P] and validity mask of one chunk of group (n, g)."""
    c = tl.arange(0, CPG_BLOCK)
    p = chunk * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = (c < CPG)[:, None] & (p < HW)[None, :]
    offsets = n.to(tl.int64) * stride_n + (g * CPG + c)[:, None].to(tl.int64) * stride_c + p[None, :] * stride_p
    return offsets, mask


@triton.jit
def _gn_fwd_stats_kernel(x_ptr, mean_part_ptr, m2_part_ptr, HW, CPG, G, num_chunks,
                         stride_n, stride_c, stride_p,
                         CPG_BLOCK: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """Phase 1: mean and M2 of one chunk of group row = n * G + g."""
    row, chunk = _row_and_chunk(num_chunks, False)
    offsets, mask = _group_tile(x_ptr, row // G, row % G, chunk, HW, CPG, stride_n, stride_c, stride_p,
                                CPG_BLOCK, BLOCK_P)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC)
    count = tl.sum(tl.sum(mask.to(ACC), axis=1), axis=0)
    mean = tl.sum(tl.sum(x, axis=1), axis=0) / count
    dev = tl.where(mask, x - mean, 0.0)
    m2 = tl.sum(tl.sum(dev * dev, axis=1), axis=0)
    tl.store(mean_part_ptr + row * num_chunks + chunk, mean)
    tl.store(m2_part_ptr + row * num_chunks + chunk, m2)


@triton.jit
def _gn_fwd_apply_kernel(x_ptr, y_ptr, w_ptr, b_ptr, mean_part_ptr, m2_part_ptr, mean_ptr, rstd_ptr,
                         HW, CPG, G, num_chunks, eps, stride_n, stride_c, stride_p,
                         CPG_BLOCK: tl.constexpr, BLOCK_P: tl.constexpr, CHUNKS_BLOCK: tl.constexpr,
                         ONE_PASS: tl.constexpr, RELU: tl.constexpr, ACC: tl.constexpr):
    """Normalise + affine + activation of one chunk; ONE_PASS: the chunk is the whole group."""
    row, chunk = _apply_program(num_chunks, ONE_PASS)
    g = row % G
    offsets, mask = _group_tile(x_ptr, row // G, g, chunk, HW, CPG, stride_n, stride_c, stride_p,
                                CPG_BLOCK, BLOCK_P)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC)
    if ONE_PASS:
        count = tl.sum(tl.sum(mask.to(ACC), axis=1), axis=0)
        mean = tl.sum(tl.sum(x, axis=1), axis=0) / count
        dev = tl.where(mask, x - mean, 0.0)
        var = tl.sum(tl.sum(dev * dev, axis=1), axis=0) / count
    else:
        # Chan et al.: combine per-chunk (count, mean, M2) without cancellation.
        k = tl.arange(0, CHUNKS_BLOCK)
        valid = k < num_chunks
        pixels = tl.minimum(tl.maximum(HW - k * BLOCK_P, 0), BLOCK_P)
        counts = tl.where(valid, pixels * CPG, 0).to(ACC)
        means = tl.load(mean_part_ptr + row * num_chunks + k, mask=valid, other=0.0)
        m2s = tl.load(m2_part_ptr + row * num_chunks + k, mask=valid, other=0.0)
        total = tl.sum(counts, axis=0)
        mean = tl.sum(counts * means, axis=0) / total
        spread = means - mean
        var = tl.sum(m2s + counts * spread * spread, axis=0) / total
    rstd = 1.0 / tl.sqrt(var + eps)
    c = tl.arange(0, CPG_BLOCK)
    w = tl.load(w_ptr + g * CPG + c, mask=c < CPG, other=0.0).to(ACC)
    b = tl.load(b_ptr + g * CPG + c, mask=c < CPG, other=0.0).to(ACC)
    y = (x - mean) * rstd * w[:, None] + b[:, None]
    if RELU:
        # NaN-propagating max: plain tl.maximum compiles to max.f32, which returns 0 for a NaN,
        # so a group made NaN by an overflowed input would come out as zeros on the GPU
        # (the interpreter's np.maximum keeps NaN, as torch.relu does)
        y = tl.maximum(y, 0.0, propagate_nan=tl.PropagateNan.ALL)
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)
    if chunk == 0:
        tl.store(mean_ptr + row, mean)
        tl.store(rstd_ptr + row, rstd)


@triton.jit
def _gn_bwd_load(x_ptr, dy_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, row, chunk, HW, CPG, G,
                 stride_n, stride_c, stride_p,
                 CPG_BLOCK: tl.constexpr, BLOCK_P: tl.constexpr, RELU: tl.constexpr, ACC: tl.constexpr):
    """xhat, dz (= dy through the activation), w and the tile offsets/mask of one chunk."""
    g = row % G
    offsets, mask = _group_tile(x_ptr, row // G, g, chunk, HW, CPG, stride_n, stride_c, stride_p,
                                CPG_BLOCK, BLOCK_P)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC)
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(ACC)
    mean = tl.load(mean_ptr + row)
    rstd = tl.load(rstd_ptr + row)
    c = tl.arange(0, CPG_BLOCK)
    w = tl.load(w_ptr + g * CPG + c, mask=c < CPG, other=0.0).to(ACC)
    b = tl.load(b_ptr + g * CPG + c, mask=c < CPG, other=0.0).to(ACC)
    xhat = tl.where(mask, (x - mean) * rstd, 0.0)
    dz = dy
    if RELU:
        # same expression as the forward, so the mask is exactly "output > 0"
        dz = tl.where(xhat * w[:, None] + b[:, None] > 0.0, dy, 0.0)
    return xhat, dz, w, rstd, offsets, mask


@triton.jit
def _gn_bwd_stats_kernel(x_ptr, dy_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, dw_part_ptr, db_part_ptr,
                         C, HW, CPG, G, num_chunks, stride_n, stride_c, stride_p,
                         CPG_BLOCK: tl.constexpr, BLOCK_P: tl.constexpr, RELU: tl.constexpr, ACC: tl.constexpr):
    """Phase 1 of the backward: per-(n, c, chunk) sums of dz and dz * xhat."""
    row, chunk = _row_and_chunk(num_chunks, False)
    xhat, dz, w, rstd, offsets, mask = _gn_bwd_load(x_ptr, dy_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, row, chunk,
                                                    HW, CPG, G, stride_n, stride_c, stride_p,
                                                    CPG_BLOCK, BLOCK_P, RELU, ACC)
    c = tl.arange(0, CPG_BLOCK)
    channel = (row // G) * C + (row % G) * CPG + c
    tl.store(db_part_ptr + channel * num_chunks + chunk, tl.sum(dz, axis=1), mask=c < CPG)
    tl.store(dw_part_ptr + channel * num_chunks + chunk, tl.sum(dz * xhat, axis=1), mask=c < CPG)


@triton.jit(do_not_specialize=["HW", "CPG"])  # CPG * HW stays a runtime integer
def _gn_bwd_apply_kernel(x_ptr, dy_ptr, dx_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, dw_sum_ptr, db_sum_ptr,
                         C, HW, CPG, G, num_chunks, stride_n, stride_c, stride_p,
                         CPG_BLOCK: tl.constexpr, BLOCK_P: tl.constexpr,
                         ONE_PASS: tl.constexpr, RELU: tl.constexpr, ACC: tl.constexpr):
    """dx of one chunk, given the per-(n, c) sums of dz and dz * xhat; ONE_PASS: the chunk is
    the whole group and those sums are computed and stored here."""
    row, chunk = _apply_program(num_chunks, ONE_PASS)
    xhat, dz, w, rstd, offsets, mask = _gn_bwd_load(x_ptr, dy_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, row, chunk,
                                                    HW, CPG, G, stride_n, stride_c, stride_p,
                                                    CPG_BLOCK, BLOCK_P, RELU, ACC)
    c = tl.arange(0, CPG_BLOCK)
    channel = (row // G) * C + (row % G) * CPG + c
    if ONE_PASS:
        db_c = tl.sum(dz, axis=1)
        dw_c = tl.sum(dz * xhat, axis=1)
        tl.store(db_sum_ptr + channel, db_c, mask=c < CPG)
        tl.store(dw_sum_ptr + channel, dw_c, mask=c < CPG)
    else:
        db_c = tl.load(db_sum_ptr + channel, mask=c < CPG, other=0.0)
        dw_c = tl.load(dw_sum_ptr + channel, mask=c < CPG, other=0.0)
    sum_dxhat = tl.sum(w * db_c, axis=0)
    sum_dxhat_xhat = tl.sum(w * dw_c, axis=0)
    inv_count = 1.0 / (CPG * HW).to(ACC)
    dx = rstd * (dz * w[:, None] - (sum_dxhat + xhat * sum_dxhat_xhat) * inv_count)
    tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)


class _Schedule:
    """Block sizes and grid for a group of CPG channels x HW pixels under a GroupNormConfig."""

    def __init__(self, cpg: int, hw: int, config: GroupNormConfig):
        self.cpg_block = next_power_of_2(cpg)
        whole = self.cpg_block * next_power_of_2(hw)
        self.one_pass = whole <= config.one_pass_max
        if self.one_pass:
            self.block_p = next_power_of_2(hw)
        else:
            self.block_p = max(1, config.chunk // self.cpg_block)
        self.num_chunks = triton.cdiv(hw, self.block_p)
        self.chunks_block = next_power_of_2(self.num_chunks)
        _, self.num_warps = block_and_warps(self.cpg_block * self.block_p)


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x itself when contiguous or channels_last, else a contiguous copy (the kernels' layouts)."""
    return x if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last) else x.contiguous()


def _layout(x: torch.Tensor, num_groups: int, config: Optional[GroupNormConfig]):
    """(x contiguous or channels_last, (stride_n, stride_c, stride_pixel), schedule, accumulator dtype)."""
    config = pick(x.shape, x.dtype) if config is None else config
    x = _dense(x)
    N, C, H, W = x.shape
    sn, sc, sh, sw = x.stride()
    # the H*W pixels walk with one stride in both layouts (sh = W * sw); with W = 1, sw is arbitrary
    strides = (sn, sc, sw if W > 1 else sh)
    return x, strides, _Schedule(C // num_groups, H * W, config), _acc_dtype(x)


def unsupported(x, num_groups, weight, bias, eps=1e-5, activation="relu") -> Optional[str]:
    """Why the kernel cannot run this call (None: it can); ``group_norm_act`` raises it, ops falls back on it."""
    if activation not in ACTIVATIONS:
        return f"group_norm_act: activation must be one of {ACTIVATIONS}, got {activation!r}"
    if x.dim() != 4:
        return f"group_norm_act: x must be [N, C, H, W], got shape {tuple(x.shape)}"
    if x.dtype not in SUPPORTED_DTYPES:
        return f"group_norm_act: x dtype must be one of {SUPPORTED_DTYPES}, got {x.dtype}"
    if x.numel() == 0:
        return f"group_norm_act: x is empty, shape {tuple(x.shape)}"
    C = x.shape[1]
    if num_groups <= 0 or C % num_groups:
        return f"group_norm_act: {C} channels are not divisible into {num_groups} groups"
    if C // num_groups > MAX_CHANNELS_PER_GROUP:
        return f"group_norm_act: {C // num_groups} channels per group exceed {MAX_CHANNELS_PER_GROUP}"
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != (C,):
            return f"group_norm_act: {name} must have shape ({C},), got {tuple(t.shape)}"
        if t is not None and t.device != x.device:
            return f"group_norm_act: {name} is on {t.device}, x on {x.device}"
    if not eps > 0:
        return f"group_norm_act: eps must be > 0, got {eps}"
    return None


def _forward_fake(x, weight, bias, num_groups, eps, relu):
    acc = _acc_dtype(x)
    return (torch.empty_like(_dense(x)), x.new_empty(x.shape[0] * num_groups, dtype=acc),
            x.new_empty(x.shape[0] * num_groups, dtype=acc))


@launcher_op("group_norm_act_fwd", _forward_fake)
def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_groups: int, eps: float,
             relu: bool, config: Optional[GroupNormConfig] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, rstd) of x, a [N, C, H, W] tensor in either kernel layout; mean and rstd [N * G]."""
    x, (sn, sc, sp), s, acc = _layout(x, num_groups, config)
    N, C, H, W = x.shape
    HW, G, cpg = H * W, num_groups, C // num_groups
    y = torch.empty_like(x)
    assert y.stride() == x.stride()
    mean = torch.empty(N * G, device=x.device, dtype=acc)
    rstd = torch.empty(N * G, device=x.device, dtype=acc)
    grid = (N * G * s.num_chunks,)
    if s.one_pass:
        mean_part = m2_part = mean  # unused by the one-pass kernel
    else:
        mean_part = torch.empty(N * G, s.num_chunks, device=x.device, dtype=acc)
        m2_part = torch.empty_like(mean_part)
        _gn_fwd_stats_kernel[grid](x, mean_part, m2_part, HW, cpg, G, s.num_chunks, sn, sc, sp,
                                   CPG_BLOCK=s.cpg_block, BLOCK_P=s.block_p, ACC=tl_dtype(acc),
                                   num_warps=s.num_warps)
    _gn_fwd_apply_kernel[grid](x, y, weight, bias, mean_part, m2_part, mean, rstd, HW, cpg, G, s.num_chunks, eps,
                               sn, sc, sp, CPG_BLOCK=s.cpg_block, BLOCK_P=s.block_p,
                               CHUNKS_BLOCK=s.chunks_block, ONE_PASS=s.one_pass, RELU=relu, ACC=tl_dtype(acc),
                               num_warps=s.num_warps)
    return y, mean, rstd


def _backward_fake(dy, x, weight, bias, mean, rstd, num_groups, relu):
    C = x.shape[1]
    return (torch.empty_like(_dense(x)), x.new_empty(C, dtype=_acc_dtype(x)), x.new_empty(C, dtype=_acc_dtype(x)))


@launcher_op("group_norm_act_bwd", _backward_fake)
def _backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
              rstd: torch.Tensor, num_groups: int, relu: bool,
              config: Optional[GroupNormConfig] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias), the last two [C] in the accumulator dtype."""
    x, (sn, sc, sp), s, acc = _layout(x, num_groups, config)
    N, C, H, W = x.shape
    HW, G, cpg = H * W, num_groups, C // num_groups
    # dy in x's layout so one set of strides serves x, dy and dx
    dy = torch.empty_like(x).copy_(dy) if dy.stride() != x.stride() else dy
    dx = torch.empty_like(x)
    grid = (N * G * s.num_chunks,)
    meta = dict(CPG_BLOCK=s.cpg_block, BLOCK_P=s.block_p, RELU=relu, ACC=tl_dtype(acc), num_warps=s.num_warps)
    if s.one_pass:  # the apply kernel stores the per-(n, c) sums
        dw_sum = torch.empty(N * C, device=x.device, dtype=acc)
        db_sum = torch.empty_like(dw_sum)
    else:  # per-(n, c, chunk) partials, summed over chunks here (N*C*chunks values: small)
        dw_part = torch.empty(N * C, s.num_chunks, device=x.device, dtype=acc)
        db_part = torch.empty_like(dw_part)
        _gn_bwd_stats_kernel[grid](x, dy, weight, bias, mean, rstd, dw_part, db_part, C, HW, cpg, G, s.num_chunks,
                                   sn, sc, sp, **meta)
        dw_sum, db_sum = dw_part.sum(1), db_part.sum(1)
    _gn_bwd_apply_kernel[grid](x, dy, dx, weight, bias, mean, rstd, dw_sum, db_sum, C, HW, cpg, G, s.num_chunks,
                               sn, sc, sp,
                               ONE_PASS=s.one_pass, **meta)
    dweight = dw_sum.view(N, C).sum(0)
    dbias = db_sum.view(N, C).sum(0)
    return dx, dweight, dbias


class GroupNormActFunction(torch.autograd.Function):
    """y = act(GroupNorm(x) * weight + bias); weight and bias are real tensors here (see group_norm_act)."""

    @staticmethod
    def forward(ctx, x, weight, bias, num_groups, eps, activation):
        relu = activation == "relu"
        y, mean, rstd = _forward(x, weight, bias, num_groups, eps, relu)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.num_groups, ctx.relu = num_groups, relu
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dweight, dbias = _backward(dy, x, weight, bias, mean, rstd, ctx.num_groups, ctx.relu)
        return (dx if ctx.needs_input_grad[0] else None,
                dweight.to(weight.dtype) if ctx.needs_input_grad[1] else None,
                dbias.to(bias.dtype) if ctx.needs_input_grad[2] else None,
                None, None, None)


def group_norm_act(
    x: torch.Tensor,
    num_groups: int,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float = 1e-5,
    activation: str = "relu",
) -> torch.Tensor:
    """GroupNorm + activation; the Triton twin of ``maskformer_fast.reference.group_norm_act``.

    x: [N, C, H, W] contiguous or channels_last, fp32 / fp16 / bf16 (fp64 too, for checks);
    weight, bias: [C] or None. Returns y with x's shape, dtype and layout.
    """
    reason = unsupported(x, num_groups, weight, bias, eps, activation)
    if reason is not None:
        raise ValueError(reason)
    C = x.shape[1]
    if weight is None:
        weight = torch.ones(C, device=x.device, dtype=_acc_dtype(x))
    if bias is None:
        bias = torch.zeros(C, device=x.device, dtype=_acc_dtype(x))
    return GroupNormActFunction.apply(x, weight, bias, num_groups, float(eps), activation)


def _compile_examples():
    """(config name, launch) pairs: forward and backward on meta tensors at the pixel decoder's
    shapes, 256 channels in 32 groups (8 per group), NCHW: one pass (16^2, 32^2) and two phases
    (128^2), ReLU (and, in fp32, "none" for the lateral convs); plus two phases channels_last."""
    N, C, G = 2, 256, 32
    weight = torch.empty(C, device="meta")
    stats = torch.empty(N * G, device="meta")
    cases = [(torch.float32, size, relu, torch.contiguous_format) for size in (16, 32, 128) for relu in (True, False)]
    cases += [(torch.bfloat16, size, True, torch.contiguous_format) for size in (16, 32, 128)]
    cases.append((torch.bfloat16, 128, True, torch.channels_last))
    for dtype, size, relu, layout in cases:
        x = torch.empty(N, C, size, size, dtype=dtype, device="meta", memory_format=layout)
        yield "default", partial(_forward, x, weight, weight, G, 1e-5, relu)
        yield "default", partial(_backward, x, x, weight, weight, stats, stats, G, relu)


COMPILE_CONFIGS = compile_configs(__name__, _compile_examples())
