"""The Triton attention (FlashAttention-2 style) against the eager reference in float64.

Float64 runs through the interpreter with fp64 accumulation, so forward and backward are
compared at ~1e-10; every kernel-allocated buffer starts as NaN (``poison_torch_empty``).
"""
import math

import pytest
import torch

from maskformer_fast import ops, reference
from maskformer_fast.kernels import attention as attn
from tests.helpers import assert_close_verbose, error_ratio_ok, spy

# Triton 3.6's interpreter converts 1-element arrays to scalars the way numpy 1.25+ deprecates.
pytestmark = [pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
              pytest.mark.usefixtures("poisoned_outputs"), pytest.mark.interpreter]

# (B, h, Lq, Lk, d): Lq != Lk, Lk = 1, Lq = 100 with Lk = 37, several key blocks,
# a single query, exact block multiples, head dims 16 / 32 / 64 / 128.
SHAPES = [
    (2, 2, 5, 7, 32),
    (2, 3, 100, 37, 32),
    (1, 2, 70, 130, 64),
    (2, 1, 3, 1, 32),
    (1, 1, 1, 66, 16),
    (1, 1, 64, 64, 64),
    (1, 1, 9, 40, 128),
]




def _inputs(B, H, Lq, Lk, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, d, generator=g, dtype=torch.float64).to(dtype) for L in (Lq, Lk, Lk))
    return q, k, v


def _padding_mask(B, Lk, seed=0):
    """Random key padding with at least one kept key per batch element."""
    ignore = torch.rand(B, Lk, generator=torch.Generator().manual_seed(seed)) < 0.4
    ignore[:, 0] = False
    return ignore


def _check(q, k, v, ignore=None, scale=None, rtol=1e-10, atol=1e-10):
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = attn.attention(q, k, v, key_padding_mask=ignore, scale=scale)
    want = reference.attention(q, k, v, key_padding_mask=ignore, scale=scale)
    assert out.dtype == q.dtype
    assert_close_verbose(out, want, rtol=rtol, atol=atol, name="out")
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    for name, got, ref in zip(("dq", "dk", "dv"), torch.autograd.grad(out, leaves, dout),
                              torch.autograd.grad(want, leaves, dout)):
        assert_close_verbose(got, ref, rtol=rtol, atol=atol, name=name)


@pytest.fixture(params=["wide", "half"])
def launch_config(request, monkeypatch):
    """Run float64 through either block table: "half" is what fp16 / bf16 get on the GPU."""
    if request.param == "half":
        table = attn.pick
        monkeypatch.setattr(attn, "pick", lambda shape, dtype: table(shape, torch.bfloat16))
    return request.param


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(launch_config, shape):
    _check(*_inputs(*shape))


@pytest.mark.parametrize("shape", [(2, 2, 5, 7, 32), (2, 3, 100, 37, 32), (3, 1, 20, 130, 64)], ids=str)
def test_key_padding_mask_matches_reference(launch_config, shape):
    B, Lk = shape[0], shape[3]
    _check(*_inputs(*shape), ignore=_padding_mask(B, Lk))


def test_leading_key_blocks_all_ignored(launch_config):
    # Whole key blocks (BLOCK_N = 16 or 64) ignored before the first kept key: the running max
    # stays -inf across them, which must give weights 0, not NaN, once a key is kept.
    q, k, v = _inputs(2, 2, 9, 150, 32)
    ignore = torch.zeros(2, 150, dtype=torch.bool)
    ignore[0, :70] = True
    ignore[1, :130] = True
    _check(q, k, v, ignore=ignore)


def test_explicit_scale_and_strided_inputs():
    # q, k, v as the decoder makes them: [B, L, h, d] permuted to [B, h, L, d] (not contiguous)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, L, 4, 32, generator=g, dtype=torch.float64).permute(0, 2, 1, 3) for L in (11, 23, 23))
    assert not q.is_contiguous()
    _check(q, k, v, ignore=_padding_mask(2, 23), scale=0.3)


def test_float32_within_1e5_of_float64():
    q, k, v = _inputs(2, 2, 100, 37, 32)
    ignore = _padding_mask(2, 37)
    want = reference.attention(q, k, v, key_padding_mask=ignore)
    got = attn.attention(q.float(), k.float(), v.float(), key_padding_mask=ignore)
    assert got.dtype == torch.float32
    assert_close_verbose(got, want, rtol=1e-5, atol=1e-5, name="fp32 out")


def test_fully_masked_batch_gives_nan_like_reference():
    q, k, v = _inputs(2, 2, 6, 9, 32)
    ignore = _padding_mask(2, 9)
    ignore[1] = True  # every key of image 1 ignored
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = attn.attention(q, k, v, key_padding_mask=ignore)
    want = reference.attention(q, k, v, key_padding_mask=ignore)
    assert torch.isnan(out[1]).all() and torch.isnan(want[1]).all()
    assert_close_verbose(out[0], want[0], rtol=1e-10, atol=1e-10, name="unmasked image")
    # the NaN image does not leak into the other image's gradients
    grads = torch.autograd.grad(out[0].sum(), leaves)
    grads_ref = torch.autograd.grad(want[0].sum(), leaves)
    for name, got, ref in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert_close_verbose(got[0], ref[0], rtol=1e-10, atol=1e-10, name=name)


def test_gradcheck_float64():
    q, k, v = _inputs(1, 1, 3, 5, 16)
    ignore = torch.tensor([[False, True, False, False, True]])
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: attn.attention(q, k, v, key_padding_mask=ignore), inputs,
                                    eps=1e-6, atol=1e-6, fast_mode=True)


def _dropout_reference(q, k, v, keep, p, ignore=None):
    """Reference attention with an explicit keep mask [B*h, Lq, Lk] in place of F.dropout."""
    B, H, Lq, d = q.shape
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if ignore is not None:
        scores = scores.masked_fill(ignore[:, None, None, :], float("-inf"))
    weights = scores.softmax(-1) * keep.view(B, H, Lq, -1) / (1 - p)
    return weights @ v


def test_dropout_matches_reference_with_the_same_mask(launch_config):
    p = 0.3
    q, k, v = _inputs(2, 2, 70, 37, 32)
    ignore = _padding_mask(2, 37)
    torch.manual_seed(123)
    seed = attn.draw_seed(q.device)
    torch.manual_seed(123)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = attn.attention(q, k, v, key_padding_mask=ignore, dropout_p=p)
    keep = attn.dropout_keep_mask(seed, 4, 70, 37, p, device=q.device)
    want = _dropout_reference(q, k, v, keep, p, ignore)
    assert_close_verbose(out, want, rtol=1e-10, atol=1e-10, name="out")
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    for name, got, ref in zip(("dq", "dk", "dv"), torch.autograd.grad(out, leaves, dout),
                              torch.autograd.grad(want, leaves, dout)):
        assert_close_verbose(got, ref, rtol=1e-10, atol=1e-10, name=name)


def test_dropout_keep_mask_rate_seed_and_independence():
    keep = attn.dropout_keep_mask(7, 4, 64, 64, 0.25)
    assert abs(keep.float().mean().item() - 0.75) < 0.02
    assert torch.equal(keep, attn.dropout_keep_mask(7, 4, 64, 64, 0.25))
    assert not torch.equal(keep, attn.dropout_keep_mask(8, 4, 64, 64, 0.25))
    # Masks of different (batch, head) pairs, and of neighbouring rows across them, agree as two
    # independent draws do: p^2 + (1-p)^2 = 0.625 (a counter that ignored b*h, or streams that
    # overlapped, would agree everywhere). 4096 pairs each: 0.03 is 4 standard deviations.
    for a, b in [(keep[0], keep[1]), (keep[2], keep[3]), (keep[0, 1:], keep[1, :-1]), (keep[1, :, 1:], keep[1, :, :-1])]:
        assert abs((a == b).float().mean().item() - 0.625) < 0.03


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=torch.randn(1, 2, 4, 16)), "k and v"),
    (dict(q=torch.randn(1, 2, 3, 24), k=torch.randn(1, 2, 4, 24), v=torch.randn(1, 2, 4, 24)), "head dim"),
    (dict(key_padding_mask=torch.zeros(1, 4)), "key_padding_mask"),
    (dict(key_padding_mask=torch.zeros(1, 5, dtype=torch.bool)), "key_padding_mask"),
    (dict(q=torch.randn(1, 2, 3, 32).half()), "dtype"),
    (dict(dropout_p=1.0), "dropout_p"),
    (dict(q=torch.randn(2, 3, 32)), r"\[B, h, L, d\]"),
    (dict(k=torch.randn(1, 2, 0, 32), v=torch.randn(1, 2, 0, 32)), "empty"),
    (dict(key_padding_mask=torch.zeros(1, 4, dtype=torch.bool, device="meta")), "devices"),
])
def test_bad_input_raises(kwargs, match):
    args = dict(q=torch.randn(1, 2, 3, 32), k=torch.randn(1, 2, 4, 32), v=torch.randn(1, 2, 4, 32))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        attn.attention(**args)


def test_float64_only_through_the_interpreter():
    # Triton cannot compile the fp64 dots for a GPU: the kernel declines fp64 off the CPU (meta
    # tensors stand in for CUDA ones here) and the dispatch runs the reference instead.
    q, k = (torch.empty(1, 2, n, 32, dtype=torch.float64, device="meta") for n in (3, 4))
    assert attn.unsupported(q, k, k) is not None and attn.unsupported(q.float(), k.float(), k.float()) is None
    with pytest.raises(ValueError, match="float64 runs only in the Triton interpreter"):
        attn.attention(q, k, k)
    assert attn.unsupported(*_inputs(1, 2, 3, 4, 32)) is None  # fp64 CPU tensors: the interpreter runs it


def test_dispatch_routes_by_mode(monkeypatch):
    calls = []
    kernel, ref = attn.attention, reference.attention
    monkeypatch.setattr(attn, "attention", spy(kernel, calls, "triton"))
    monkeypatch.setattr(reference, "attention", spy(ref, calls, "eager"))
    q, k, v = _inputs(1, 2, 4, 6, 16)
    with ops.use("fast"):
        out_triton = ops.attention(q, k, v)
        with pytest.raises(ValueError, match="head dim 24 not supported"):  # fast raises the kernel's reason
            ops.attention(*_inputs(1, 2, 4, 6, 24))
    with ops.use("eager"):
        out_eager = ops.attention(q, k, v)
    with ops.use("auto"):  # CPU tensors: the reference
        ops.attention(q, k, v)
    assert calls == ["triton", "triton", "eager", "eager"]
    assert_close_verbose(out_triton, out_eager, rtol=1e-10, atol=1e-10, name="dispatch")


def _low_precision_leaves(q, k, v, dtype):
    """(q, k, v in dtype, on CUDA, requiring grad; their float64 copies): the float64 reference
    sees the rounded inputs, so the errors compared are the ops' own."""
    low = [t.cuda().to(dtype).requires_grad_() for t in (q, k, v)]
    return low, [t.detach().double().requires_grad_() for t in low]


def _assert_within_torch_error(out, out_torch, out64, low, ref_leaves, floor):
    """Output error <= 2x, gradient errors <= 3x plain torch's at the same dtype (vs float64)."""
    assert error_ratio_ok(out, out_torch, out64, floor=floor)
    dout = torch.randn_like(out64).to(out.dtype)
    for got, torch_grad, want in zip(torch.autograd.grad(out, low, dout),
                                     torch.autograd.grad(out_torch, low, dout),
                                     torch.autograd.grad(out64, ref_leaves, dout.double())):
        assert error_ratio_ok(got, torch_grad, want, factor=3.0, floor=floor)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape, masked", [((16, 8, 100, 100, 32), False), ((16, 8, 100, 256, 32), True),
                                           ((2, 8, 100, 1024, 64), True), ((2, 4, 77, 300, 128), True)])
def test_gpu_low_precision_error_within_2x_torch(dtype, shape, masked):
    floor = 1e-5 if dtype == torch.float32 else 1e-6  # fp32 runs 3xTF32 dots, torch exact fp32
    low, ref_leaves = _low_precision_leaves(*_inputs(*shape), dtype)
    ignore = _padding_mask(shape[0], shape[3]).cuda() if masked else None
    out = attn.attention(*low, key_padding_mask=ignore)
    out_torch = reference.attention(*low, key_padding_mask=ignore)
    out64 = reference.attention(*ref_leaves, key_padding_mask=ignore)
    _assert_within_torch_error(out, out_torch, out64, low, ref_leaves, floor)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_dropout_matches_reference_with_the_same_mask(dtype):
    # The decoder's cross-attention in training: forward and both backward kernels must draw the
    # keep mask dropout_keep_mask gives for the same seed, on the GPU.
    B, H, Lq, Lk, d, p = 16, 8, 100, 256, 32, 0.1
    floor = 1e-5 if dtype == torch.float32 else 1e-6
    low, ref_leaves = _low_precision_leaves(*_inputs(B, H, Lq, Lk, d), dtype)
    ignore = _padding_mask(B, Lk).cuda()
    torch.manual_seed(5)
    seed = attn.draw_seed(low[0].device)
    torch.manual_seed(5)
    out = attn.attention(*low, key_padding_mask=ignore, dropout_p=p)
    keep = attn.dropout_keep_mask(seed, B * H, Lq, Lk, p, device=low[0].device)
    out_torch = _dropout_reference(*low, keep, p, ignore)
    out64 = _dropout_reference(*ref_leaves, keep, p, ignore)
    _assert_within_torch_error(out, out_torch, out64, low, ref_leaves, floor)
