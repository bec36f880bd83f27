"""Multi-head attention in Triton, FlashAttention-2 style, forward and backward.

``attention(q, k, v, key_padding_mask, scale, dropout_p)`` computes
``dropout(softmax(q k^T * scale + mask)) v`` without materialising the [Lq, Lk] scores:

* forward -- one program per (BLOCK_M query rows, batch * head) streams the keys in blocks
  of BLOCK_N with an online softmax (running max m and sum l, rescaling the accumulator),
  in the log2 domain (exp2). It writes O and the row logsumexp (base 2) for the backward.
* backward -- two kernels, no atomics: ``_attn_bwd_dq_kernel`` (per query block: computes
  delta = rowsum(dO * O), stores it, then dq over all key blocks) runs first, then
  ``_attn_bwd_dkdv_kernel`` (per key block: dk, dv over all query blocks) reads delta.
  P is recomputed from the saved logsumexp.

Any Lq, Lk >= 1: rows / keys past the end are masked, not padded by the caller.
key_padding_mask (bool [B, Lk], True = ignore) is applied as -inf scores. A row whose keys
are all ignored gives NaN, like the reference and nn.MultiheadAttention; its gradients are
not meaningful (the NaN output poisons them).

Dropout on the attention weights uses Triton's Philox counter RNG: the keep decision of
element (b*h, i, j) is ``tl.rand(seed, (bh * Lq + i) * Lk + j) >= p`` in the forward and
regenerated identically in both backward kernels, so no mask is stored. The seed is a
one-element tensor drawn from the inputs' device generator (``torch.manual_seed`` makes it
reproducible) and read by the kernels: no host sync, and nothing for torch.compile to break
on. The counter is 32-bit: above 2^32 score elements per call the streams wrap (still a
valid dropout, with correlated masks).

The launchers are custom ops (``kernels/_library.py``): under torch.compile each launch is one
opaque graph node.

Precision: fp16 / bf16 inputs use tensor-core dots with fp32 accumulation; fp32 inputs use
3xTF32 dots (tensor cores, close to fp32 accuracy; plain fp32 "ieee" dots need ~2x the
registers and shared memory); fp64 (gradcheck through the interpreter) is exact and
accumulates in fp64.
"""
import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Optional, Tuple, Union

import torch
import triton
import triton.language as tl

from ._library import launcher_op
from ._settings import FIXED_LAUNCH, LaunchConfig, compile_configs, config_name, tl_dtype

__all__ = ["attention", "unsupported", "draw_seed", "dropout_keep_mask", "CONFIGS", "pick", "AttentionConfig",
           "AttentionBlocks", "COMPILE_CONFIGS"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
HEAD_DIMS = (16, 32, 64, 128)
LOG2E = 1.4426950408889634
# fp32 inputs: 3xTF32 (tensor cores, ~fp32 accuracy); fp64 (interpreter checks): exact.
_PRECISION = {torch.float32: "tf32x3", torch.float64: "ieee"}


@dataclass(frozen=True)
class AttentionBlocks(LaunchConfig):
    """One pass's launch: BLOCK_M query rows x BLOCK_N keys per step."""

    BLOCK_M: int
    BLOCK_N: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class AttentionConfig:
    """The forward kernel's launch and the two backward kernels' (one launch config for both)."""

    forward: AttentionBlocks
    backward: AttentionBlocks


# Chosen to keep register spills off sm_90 for 2-byte inputs (cuobjdump STACK; table in
# NOTES.md): none at d = 32 (every preset) and 64, 8 B in the d = 128 dk/dv kernel. The
# backward, which holds two accumulators, gets more warps at d = 64 and smaller blocks at
# d = 128. 4-byte inputs (3xTF32 dots) take narrow key blocks and 2 stages to fit shared
# memory on sm_80; they still spill at d >= 64 (and in dk/dv at d = 32 on sm_80).
_NARROW_KEYS = AttentionBlocks(BLOCK_M=64, BLOCK_N=16, num_warps=4, num_stages=2)
_SQUARE_64 = AttentionBlocks(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
CONFIGS = {
    "tf32x3": AttentionConfig(forward=_NARROW_KEYS, backward=_NARROW_KEYS),  # fp32 and fp64 inputs
    "half_d32": AttentionConfig(forward=_SQUARE_64, backward=_SQUARE_64),  # 2-byte inputs, d <= 32
    "half_d64": AttentionConfig(forward=_SQUARE_64, backward=replace(_SQUARE_64, num_warps=8)),
    "half_d128": AttentionConfig(forward=AttentionBlocks(BLOCK_M=64, BLOCK_N=32, num_warps=8, num_stages=3),
                                 backward=AttentionBlocks(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=3)),
}


def pick(shape, dtype: torch.dtype) -> AttentionConfig:
    """The CONFIGS entry for q of this shape ([B, h, Lq, d]) and dtype."""
    if dtype.itemsize >= 4:
        return CONFIGS["tf32x3"]
    head_dim = shape[-1]
    return CONFIGS["half_d32" if head_dim <= 32 else "half_d64" if head_dim <= 64 else "half_d128"]


@triton.jit
def _dropout_keep(seed_ptr, bh, offs_m, offs_n, Lq, Lk, dropout_p):
    """Keep decision [BLOCK_M, BLOCK_N] of the dropout on attention weights (same in fwd and bwd)."""
    counter = (bh * Lq + offs_m)[:, None] * Lk + offs_n[None, :]
    return tl.rand(tl.load(seed_ptr), counter) >= dropout_p


@triton.jit
def _head_bases(q_ptr, k_ptr, v_ptr, bh, H, stride_qb, stride_qh, stride_kb, stride_kh, stride_vb, stride_vh):
    """(batch index b, q, k and v of head bh = b * H + h): the per-head base pointers, int64 offsets."""
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    return (b, q_ptr + b * stride_qb + h * stride_qh, k_ptr + b * stride_kb + h * stride_kh,
            v_ptr + b * stride_vb + h * stride_vh)


@triton.jit
def _load_rows(base, offs, stride, valid, HEAD_DIM: tl.constexpr):
    """[len(offs), HEAD_DIM] rows base[offs * stride + :HEAD_DIM]; rows outside `valid` read 0."""
    return tl.load(base + offs[:, None] * stride + tl.arange(0, HEAD_DIM)[None, :], mask=valid[:, None], other=0.0)


@triton.jit
def _key_valid(mask_ptr, b, offs_n, Lk, HAS_MASK: tl.constexpr):
    """True for keys inside [0, Lk) that the padding mask does not ignore."""
    valid = offs_n < Lk
    if HAS_MASK:
        ignored = tl.load(mask_ptr + b * Lk + offs_n, mask=valid, other=1)
        valid = valid & (ignored == 0)
    return valid


@triton.jit
def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, mask_ptr,
                     stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn,
                     H, Lq, Lk, qk_scale, dropout_p, seed_ptr,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, ACC: tl.constexpr,
                     PRECISION: tl.constexpr):
    bh = tl.program_id(1)
    b, q_base, k_base, v_base = _head_bases(q_ptr, k_ptr, v_ptr, bh, H, stride_qb, stride_qh, stride_kb, stride_kh,
                                            stride_vb, stride_vh)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_valid = offs_m < Lq
    q = _load_rows(q_base, offs_m, stride_qm, row_valid, HEAD_DIM)

    m_i = tl.full([BLOCK_M], float("-inf"), ACC)
    l_i = tl.zeros([BLOCK_M], ACC)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], ACC)
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_valid = _key_valid(mask_ptr, b, offs_n, Lk, HAS_MASK)
        k = _load_rows(k_base, offs_n, stride_kn, offs_n < Lk, HEAD_DIM)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=ACC) * qk_scale
        s = tl.where(key_valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # all keys so far ignored: subtract 0 instead of -inf so p = 0 rather than NaN
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if DROPOUT:
            keep = _dropout_keep(seed_ptr, bh, offs_m, offs_n, Lq, Lk, dropout_p)
            p = tl.where(keep, p / (1.0 - dropout_p), 0.0)
        v = _load_rows(v_base, offs_n, stride_vn, offs_n < Lk, HEAD_DIM)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION, out_dtype=ACC)
        m_i = m_new
    # l_i = 0 (every key ignored) gives NaN, like the reference
    out = acc / l_i[:, None]
    o_rows = bh.to(tl.int64) * Lq + offs_m
    tl.store(o_ptr + o_rows[:, None] * HEAD_DIM + offs_d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=row_valid[:, None])
    tl.store(lse_ptr + o_rows, m_i + tl.log2(l_i), mask=row_valid)


@triton.jit
def _attn_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, dq_ptr, lse_ptr, delta_ptr, mask_ptr,
                        stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                        stride_vb, stride_vh, stride_vn,
                        H, Lq, Lk, qk_scale, sm_scale, dropout_p, seed_ptr,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, ACC: tl.constexpr,
                        PRECISION: tl.constexpr):
    """dq of one query block; first stores delta = rowsum(dO * O) for the dk/dv kernel."""
    bh = tl.program_id(1)
    b, q_base, k_base, v_base = _head_bases(q_ptr, k_ptr, v_ptr, bh, H, stride_qb, stride_qh, stride_kb, stride_kh,
                                            stride_vb, stride_vh)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_valid = offs_m < Lq
    q = _load_rows(q_base, offs_m, stride_qm, row_valid, HEAD_DIM)
    rows = bh.to(tl.int64) * Lq + offs_m
    row_offsets = rows[:, None] * HEAD_DIM + offs_d[None, :]
    do = tl.load(do_ptr + row_offsets, mask=row_valid[:, None], other=0.0)
    o = tl.load(o_ptr + row_offsets, mask=row_valid[:, None], other=0.0)
    delta = tl.sum(do.to(ACC) * o.to(ACC), axis=1)
    tl.store(delta_ptr + rows, delta, mask=row_valid)
    lse = tl.load(lse_ptr + rows, mask=row_valid, other=0.0)

    dq = tl.zeros([BLOCK_M, HEAD_DIM], ACC)
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_valid = _key_valid(mask_ptr, b, offs_n, Lk, HAS_MASK)
        k = _load_rows(k_base, offs_n, stride_kn, offs_n < Lk, HEAD_DIM)
        v = _load_rows(v_base, offs_n, stride_vn, offs_n < Lk, HEAD_DIM)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=ACC) * qk_scale
        p = tl.where(key_valid[None, :], tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION, out_dtype=ACC)
        if DROPOUT:
            keep = _dropout_keep(seed_ptr, bh, offs_m, offs_n, Lq, Lk, dropout_p)
            dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION, out_dtype=ACC)
    tl.store(dq_ptr + row_offsets, (dq * sm_scale).to(dq_ptr.dtype.element_ty), mask=row_valid[:, None])


@triton.jit
def _attn_bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, dk_ptr, dv_ptr, lse_ptr, delta_ptr, mask_ptr,
                          stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn,
                          H, Lq, Lk, qk_scale, sm_scale, dropout_p, seed_ptr,
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, ACC: tl.constexpr,
                          PRECISION: tl.constexpr):
    """dk and dv of one key block, looping over all query blocks."""
    bh = tl.program_id(1)
    b, q_base, k_base, v_base = _head_bases(q_ptr, k_ptr, v_ptr, bh, H, stride_qb, stride_qh, stride_kb, stride_kh,
                                            stride_vb, stride_vh)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_in = offs_n < Lk
    key_valid = _key_valid(mask_ptr, b, offs_n, Lk, HAS_MASK)
    k = _load_rows(k_base, offs_n, stride_kn, key_in, HEAD_DIM)
    v = _load_rows(v_base, offs_n, stride_vn, key_in, HEAD_DIM)

    dk = tl.zeros([BLOCK_N, HEAD_DIM], ACC)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], ACC)
    for start_m in range(0, Lq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_valid = offs_m < Lq
        rows = bh.to(tl.int64) * Lq + offs_m
        q = _load_rows(q_base, offs_m, stride_qm, row_valid, HEAD_DIM)
        do = tl.load(do_ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=row_valid[:, None], other=0.0)
        lse = tl.load(lse_ptr + rows, mask=row_valid, other=0.0)
        delta = tl.load(delta_ptr + rows, mask=row_valid, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=ACC) * qk_scale
        p = tl.where(row_valid[:, None] & key_valid[None, :], tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION, out_dtype=ACC)
        p_dropped = p
        if DROPOUT:
            keep = _dropout_keep(seed_ptr, bh, offs_m, offs_n, Lq, Lk, dropout_p)
            p_dropped = tl.where(keep, p / (1.0 - dropout_p), 0.0)
            dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
        dv += tl.dot(tl.trans(p_dropped.to(do.dtype)), do, input_precision=PRECISION, out_dtype=ACC)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION, out_dtype=ACC)
    rows_k = bh.to(tl.int64) * Lk + offs_n
    out_offsets = rows_k[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(dk_ptr + out_offsets, (dk * sm_scale).to(dk_ptr.dtype.element_ty), mask=key_in[:, None])
    tl.store(dv_ptr + out_offsets, dv.to(dv_ptr.dtype.element_ty), mask=key_in[:, None])


@triton.jit
def _dropout_keep_mask_kernel(keep_ptr, Lq, Lk, dropout_p, seed_ptr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The keep mask [B*h, Lq, Lk] the attention kernels draw for this seed (for tests and debugging)."""
    bh = tl.program_id(2)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _dropout_keep(seed_ptr, bh, offs_m, offs_n, Lq, Lk, dropout_p)
    inside = (offs_m < Lq)[:, None] & (offs_n < Lk)[None, :]
    offsets = (bh.to(tl.int64) * Lq + offs_m)[:, None] * Lk + offs_n[None, :]
    tl.store(keep_ptr + offsets, keep.to(tl.int8), mask=inside)


def draw_seed(device=None) -> torch.Tensor:
    """The Philox seed of one dropout call: int64 [1] on ``device``, from its generator."""
    return torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64, device=device)


def dropout_keep_mask(seed: Union[int, torch.Tensor], batch_heads: int, Lq: int, Lk: int, dropout_p: float,
                      device=None) -> torch.Tensor:
    """bool [batch_heads, Lq, Lk]: which attention weights a call with this seed keeps."""
    keep = torch.empty(batch_heads, Lq, Lk, dtype=torch.int8, device=device)
    seed = torch.as_tensor(seed, dtype=torch.int64, device=keep.device).reshape(1)
    grid = (triton.cdiv(Lq, 32), triton.cdiv(Lk, 32), batch_heads)
    _dropout_keep_mask_kernel[grid](keep, Lq, Lk, float(dropout_p), seed, BLOCK_M=32, BLOCK_N=32)
    return keep.bool()


def _acc_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _meta(q: torch.Tensor, has_mask: bool, dropout: bool, blocks: AttentionBlocks) -> dict:
    """Constexprs and launch options of the kernels of one pass for q's shape and dtype."""
    return dict(HEAD_DIM=q.shape[-1], HAS_MASK=has_mask, DROPOUT=dropout, ACC=tl_dtype(_acc_dtype(q)),
                PRECISION=_PRECISION.get(q.dtype, "tf32"), **blocks.kwargs())


def _strides(*tensors):
    return [s for t in tensors for s in t.stride()[:3]]


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _forward_fake(q, k, v, ignore, scale, dropout_p, seed):
    B, H, Lq, _ = q.shape
    return q.new_empty(q.shape), q.new_empty(B * H, Lq, dtype=_acc_dtype(q))


@launcher_op("attention_fwd", _forward_fake)
def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ignore: Optional[torch.Tensor], scale: float,
             dropout_p: float, seed: Optional[torch.Tensor],
             config: Optional[AttentionConfig] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(o [B, h, Lq, d] contiguous, base-2 logsumexp [B*h, Lq]); seed is read only when dropout_p > 0."""
    B, H, Lq, d = q.shape
    Lk = k.shape[2]
    config = pick(q.shape, q.dtype) if config is None else config
    meta = _meta(q, ignore is not None, dropout_p > 0.0, config.forward)
    o = torch.empty(B, H, Lq, d, device=q.device, dtype=q.dtype)
    lse = torch.empty(B * H, Lq, device=q.device, dtype=_acc_dtype(q))
    grid = (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)
    # pointers a kernel does not read (no mask, no dropout) get any tensor
    _attn_fwd_kernel[grid](q, k, v, o, lse, q if ignore is None else ignore, *_strides(q, k, v), H, Lq, Lk,
                           scale * LOG2E, dropout_p, q if seed is None else seed, **meta)
    return o, lse


def _backward_fake(do, q, k, v, o, lse, ignore, scale, dropout_p, seed):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@launcher_op("attention_bwd", _backward_fake)
def _backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
              lse: torch.Tensor, ignore: Optional[torch.Tensor], scale: float, dropout_p: float,
              seed: Optional[torch.Tensor],
              config: Optional[AttentionConfig] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), contiguous: the dq kernel (which also stores rowsum(dO * O)), then dk/dv."""
    B, H, Lq, d = q.shape
    Lk = k.shape[2]
    do = do.contiguous()
    dq = torch.empty_like(o)
    dk = torch.empty(B, H, Lk, d, device=k.device, dtype=k.dtype)
    dv = torch.empty_like(dk)
    delta = torch.empty_like(lse)
    args = (q if ignore is None else ignore, *_strides(q, k, v), H, Lq, Lk, scale * LOG2E, scale, dropout_p,
            q if seed is None else seed)
    config = pick(q.shape, q.dtype) if config is None else config
    meta = _meta(q, ignore is not None, dropout_p > 0.0, config.backward)
    _attn_bwd_dq_kernel[(triton.cdiv(Lq, meta["BLOCK_M"]), B * H)](q, k, v, o, do, dq, lse, delta, *args, **meta)
    _attn_bwd_dkdv_kernel[(triton.cdiv(Lk, meta["BLOCK_N"]), B * H)](q, k, v, do, dk, dv, lse, delta, *args,
                                                                     **meta)
    return dq, dk, dv


class AttentionFunction(torch.autograd.Function):
    """o = dropout(softmax(q k^T * scale, keys ignored where ignore != 0)) v.

    q: [B, h, Lq, d], k, v: [B, h, Lk, d] (unit last stride), ignore: uint8 [B, Lk] or None,
    seed: int64 [1], the Philox seed of the dropout mask (None without dropout). Saves q, k, v,
    o, the logsumexp [B*h, Lq], ignore and seed (the backward regenerates the mask from it).
    """

    @staticmethod
    def forward(ctx, q, k, v, ignore, scale, dropout_p, seed):
        o, lse = _forward(q, k, v, ignore, scale, dropout_p, seed)
        ctx.save_for_backward(q, k, v, o, lse, ignore, seed)
        ctx.scale, ctx.dropout_p = scale, dropout_p
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, ignore, seed = ctx.saved_tensors
        dq, dk, dv = _backward(do, q, k, v, o, lse, ignore, ctx.scale, ctx.dropout_p, seed)
        return dq, dk, dv, None, None, None, None


def unsupported(q, k, v, key_padding_mask=None, scale=None, dropout_p=0.0) -> Optional[str]:
    """Why the kernel cannot run this call (None: it can); ``attention`` raises it, ops falls back on it."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return (f"attention: q, k, v must be [B, h, L, d], got {tuple(q.shape)}, {tuple(k.shape)}, "
                f"{tuple(v.shape)}")
    B, H, Lq, d = q.shape
    if k.shape != v.shape or k.shape[:2] != (B, H) or k.shape[3] != d:
        return f"attention: k and v must be [{B}, {H}, Lk, {d}], got {tuple(k.shape)}, {tuple(v.shape)}"
    if q.numel() == 0 or k.numel() == 0:
        return f"attention: empty input, q {tuple(q.shape)}, k {tuple(k.shape)}"
    if d not in HEAD_DIMS:
        return f"attention: head dim {d} not supported (one of {HEAD_DIMS})"
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in SUPPORTED_DTYPES:
        return (f"attention: q, k, v must share a dtype in {SUPPORTED_DTYPES}, got {q.dtype}, {k.dtype}, "
                f"{v.dtype}")
    if key_padding_mask is not None and (key_padding_mask.dtype != torch.bool
                                         or tuple(key_padding_mask.shape) != (B, k.shape[2])):
        return (f"attention: key_padding_mask must be bool [{B}, {k.shape[2]}], got "
                f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
    devices = {t.device for t in (q, k, v, key_padding_mask) if t is not None}
    if len(devices) > 1:
        return f"attention: inputs on several devices {sorted(map(str, devices))}"
    if not 0.0 <= dropout_p < 1.0:
        return f"attention: dropout_p must be in [0, 1), got {dropout_p}"
    if q.dtype == torch.float64 and q.device.type != "cpu":
        # Triton 3.6 cannot compile these fp64 dots for sm_80/sm_90 ("fp64 don't support largeK
        # MMA"): fp64 is for checks through the interpreter; ops falls back to the reference
        return f"attention: float64 runs only in the Triton interpreter (CPU tensors), got {q.device}"
    return None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """dropout(softmax(q k^T * scale)) v; the Triton twin of ``maskformer_fast.reference.attention``.

    q: [B, h, Lq, d]; k, v: [B, h, Lk, d] (any strides with a unit last stride), d in
    {16, 32, 64, 128}; key_padding_mask: bool [B, Lk], True = ignore; scale defaults to
    1/sqrt(d); dropout_p in [0, 1) drops attention weights inside the kernels (Philox), with a
    seed drawn per call from q.device's generator. Returns contiguous [B, h, Lq, d] in q's dtype.
    """
    reason = unsupported(q, k, v, key_padding_mask, scale, dropout_p)
    if reason is not None:
        raise ValueError(reason)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    ignore = None if key_padding_mask is None else key_padding_mask.contiguous().view(torch.uint8)
    seed = draw_seed(q.device) if dropout_p > 0.0 else None
    q, k, v = (_unit_last_stride(t) for t in (q, k, v))
    return AttentionFunction.apply(q, k, v, ignore, scale, float(dropout_p), seed)


def _compile_examples():
    """(config name, launch) pairs: forward and backward on meta tensors in the model's layout
    (heads of a [B, L, h*d] projection; 100 queries, 256 keys of the res5 map), mask and dropout
    on, at every head dim the launcher accepts, in bf16 and fp32; plus the keep-mask kernel."""
    B, H, Lq, Lk = 2, 8, 100, 256
    for dtype in (torch.bfloat16, torch.float32):
        for d in HEAD_DIMS:
            q, k, v, o = (torch.empty(B, L, H, d, dtype=dtype, device="meta").transpose(1, 2)
                          for L in (Lq, Lk, Lk, Lq))
            ignore = torch.empty(B, Lk, dtype=torch.uint8, device="meta")
            seed = torch.empty(1, dtype=torch.int64, device="meta")
            lse = torch.empty(B * H, Lq, dtype=torch.float32, device="meta")
            name = config_name(CONFIGS, pick(q.shape, dtype))
            yield name, partial(_forward, q, k, v, ignore, 0.2, 0.1, seed, config=CONFIGS[name])
            yield name, partial(_backward, o, q, k, v, o.contiguous(), lse, ignore, 0.2, 0.1, seed,
                                config=CONFIGS[name])
    yield FIXED_LAUNCH, partial(dropout_keep_mask, 0, B * H, Lq, Lk, 0.1, device="meta")


COMPILE_CONFIGS = compile_configs(__name__, _compile_examples())
