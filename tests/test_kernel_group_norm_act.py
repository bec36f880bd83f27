"""The Triton GroupNorm + activation against the eager reference (float64 through the interpreter).

Every kernel-allocated buffer (outputs and partial statistics) is filled with NaN by the
``poisoned_outputs`` fixture, so an element a kernel forgets to write fails the comparison.
"""
import pytest
import torch

from maskformer_fast import ops, reference
from maskformer_fast.kernels import group_norm_act as gn
from tests.helpers import assert_close_verbose, error_ratio_ok, spy

pytestmark = [pytest.mark.usefixtures("poisoned_outputs"), pytest.mark.interpreter]

# (N, C, H, W, groups): odd H*W, a single pixel row, N = 1, C = groups (one channel a group),
# a single pixel, one group for all channels, and channels per group not a power of two.
SHAPES = [
    (2, 8, 5, 7, 4),
    (1, 6, 1, 9, 3),
    (3, 4, 3, 3, 4),
    (2, 4, 1, 1, 2),
    (1, 12, 4, 5, 1),
    (2, 12, 3, 5, 4),
]
# Small enough that the SHAPES-sized groups take the two-phase path (64-element chunks).
TWO_PHASE = gn.GroupNormConfig(one_pass_max=32, chunk=64)




@pytest.fixture
def two_phase(monkeypatch):
    """Shrink the one-pass limit and chunk size so small groups take the two-phase path."""
    monkeypatch.setattr(gn, "pick", lambda shape, dtype: TWO_PHASE)


def group_norm_act64(x, num_groups, weight, bias, eps=1e-5, activation="relu"):
    """Float64 GroupNorm + activation written out (reference.group_norm_act computes in fp32)."""
    N, C = x.shape[:2]
    xg = x.double().reshape(N, num_groups, -1)
    mean = xg.mean(-1, keepdim=True)
    var = ((xg - mean) ** 2).mean(-1, keepdim=True)
    y = ((xg - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    if weight is not None:
        y = y * weight.double()[None, :, None, None] + bias.double()[None, :, None, None]
    return torch.relu(y) if activation == "relu" else y


def _inputs(shape, dtype=torch.float64, channels_last=False, seed=0):
    N, C, H, W, G = shape
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(N, C, H, W, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    b = torch.randn(C, generator=g, dtype=torch.float64).to(dtype)
    return x, G, w, b


def _check_forward_backward(shape, activation="relu", channels_last=False, affine=True):
    x, G, w, b = _inputs(shape, channels_last=channels_last)
    if not affine:
        w = b = None
    leaves = [t.requires_grad_() for t in (x, w, b) if t is not None]
    y = gn.group_norm_act(x, G, w, b, eps=1e-5, activation=activation)
    y_ref = group_norm_act64(x, G, w, b, eps=1e-5, activation=activation)
    assert_close_verbose(y, y_ref, rtol=1e-10, atol=1e-10, name="y")
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    grads = torch.autograd.grad(y, leaves, dy)
    grads_ref = torch.autograd.grad(y_ref, leaves, dy)
    for name, got, want in zip(("dx", "dweight", "dbias"), grads, grads_ref):
        assert_close_verbose(got, want, rtol=1e-9, atol=1e-9, name=name)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("activation", ["relu", "none"])
def test_one_pass_matches_reference(shape, activation):
    assert gn._Schedule(shape[1] // shape[4], shape[2] * shape[3], gn.CONFIGS["default"]).one_pass
    _check_forward_backward(shape, activation)


@pytest.mark.parametrize("shape", [(2, 8, 5, 7, 2), (1, 6, 1, 37, 3), (2, 12, 9, 11, 4), (1, 64, 2, 3, 2)], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_two_phase_matches_reference(two_phase, shape, channels_last):
    s = gn._Schedule(shape[1] // shape[4], shape[2] * shape[3], TWO_PHASE)
    assert not s.one_pass and s.num_chunks > 1
    _check_forward_backward(shape, "relu", channels_last)


@pytest.mark.parametrize("shape, one_pass", [((1, 16, 30, 30, 2), True), ((1, 16, 45, 50, 2), False)], ids=str)
def test_default_limits_at_the_model_group_width(shape, one_pass):
    # 8 channels a group as in the model, with the shipped config (512-pixel chunks)
    s = gn._Schedule(shape[1] // shape[4], shape[2] * shape[3], gn.pick(shape[:4], torch.float32))
    assert s.one_pass == one_pass and (one_pass or s.num_chunks == 5)
    _check_forward_backward(shape, "relu", channels_last=not one_pass)


@pytest.mark.parametrize("shape", [(2, 8, 5, 7, 4), (1, 12, 3, 1, 3)], ids=str)
def test_channels_last_one_pass(shape):
    _check_forward_backward(shape, "relu", channels_last=True)


@pytest.mark.parametrize("channels_last", [False, True])
def test_width_one_with_arbitrary_width_stride(channels_last):
    # torch ignores the stride of a size-1 dim when judging contiguity: the kernel must too
    N, C, H = 2, 8, 5
    x, G, w, b = _inputs((N, C, H, 1, 4))
    strides = (H * C, 1, C, 3) if channels_last else (C * H, H, 1, 7)
    x = torch.empty(N * C * H * 7, dtype=x.dtype).as_strided((N, C, H, 1), strides).copy_(x)
    assert x.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_close_verbose(gn.group_norm_act(x, G, w, b), group_norm_act64(x, G, w, b), rtol=1e-10, atol=1e-10,
                         name="y")


def test_without_affine():
    _check_forward_backward((2, 8, 3, 5, 4), "relu", affine=False)


def test_float32_statistics_close_to_float64():
    # fp32 input with a large common offset: the two-pass / Chan statistics keep ~1e-5 relative error
    x, G, w, b = _inputs((2, 8, 6, 7, 4))
    x = x + 100.0
    want = group_norm_act64(x, G, w, b)
    assert_close_verbose(reference.group_norm_act(x.float(), G, w.float(), b.float()), want, rtol=1e-5, atol=3e-5,
                         name="eager fp32")
    for path in ("one_pass", "two_phase"):
        with pytest.MonkeyPatch.context() as mp:
            if path == "two_phase":
                mp.setattr(gn, "pick", lambda shape, dtype: TWO_PHASE)
            got = gn.group_norm_act(x.float(), G, w.float(), b.float())
        assert got.dtype == torch.float32
        assert_close_verbose(got, want, rtol=1e-5, atol=3e-5, name=path)


def test_gradcheck_float64():
    x, G, w, b = _inputs((1, 4, 2, 3, 2))
    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: gn.group_norm_act(x, G, w, b), inputs, eps=1e-6, atol=1e-6,
                                    fast_mode=True)


def test_fp32_weight_with_half_input_keeps_dtypes():
    # AMP: conv output in bf16, GN parameters in fp32; output in x's dtype, grads in each tensor's dtype
    x, G, w, b = _inputs((1, 8, 3, 4, 4))
    x16 = x.to(torch.bfloat16).requires_grad_()
    w32, b32 = w.float().requires_grad_(), b.float().requires_grad_()
    y = gn.group_norm_act(x16, G, w32, b32)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x16.grad.dtype == torch.bfloat16 and w32.grad.dtype == torch.float32
    y_ref = group_norm_act64(x16.detach(), G, w32.detach(), b32.detach())
    assert_close_verbose(y, y_ref, rtol=2e-2, atol=2e-2, name="bf16 y")


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_groups=3), "divisible"),
    (dict(activation="gelu"), "activation"),
    (dict(weight=torch.ones(5)), "weight"),
    (dict(x=torch.ones(2, 8, 3)), r"\[N, C, H, W\]"),
    (dict(x=torch.ones(1, 8, 2, 2, dtype=torch.int32)), "dtype"),
    (dict(x=torch.ones(0, 8, 2, 2)), "empty"),
    (dict(bias=torch.zeros(8, device="meta")), "bias"),
])
def test_bad_input_raises(kwargs, match):
    args = dict(x=torch.randn(1, 8, 2, 2), num_groups=4, weight=None, bias=None, activation="relu")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        gn.group_norm_act(**args)


def test_dispatch_routes_by_mode(monkeypatch):
    calls = []
    kernel, ref = gn.group_norm_act, reference.group_norm_act
    monkeypatch.setattr(gn, "group_norm_act", spy(kernel, calls, "triton"))
    monkeypatch.setattr(reference, "group_norm_act", spy(ref, calls, "eager"))
    x, G, w, b = _inputs((1, 4, 2, 2, 2))
    with ops.use("fast"):
        y_triton = ops.group_norm_act(x, G, w, b)
    with ops.use("eager"):
        y_eager = ops.group_norm_act(x, G, w, b)
    with ops.use("auto"):  # CPU tensors: the reference
        ops.group_norm_act(x, G, w, b)
    assert calls == ["triton", "eager", "eager"]
    assert_close_verbose(y_triton, y_eager, rtol=1e-5, atol=1e-5, name="dispatch")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("hw, channels_last", [(16, False), (64, True), (128, False)])
def test_gpu_low_precision_error_within_2x_torch(dtype, hw, channels_last):
    x, G, w, b = _inputs((2, 256, hw, hw, 32), channels_last=channels_last)
    x, w, b = x.cuda(), w.cuda(), b.cuda()
    leaves = [t.to(dtype).requires_grad_() for t in (x, w, b)]
    # the float64 reference sees the rounded inputs, so the errors compared are the ops' own
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    y = gn.group_norm_act(*leaves[:1], G, *leaves[1:])
    y_torch = torch.relu(torch.nn.functional.group_norm(leaves[0], G, leaves[1], leaves[2]))
    y64 = group_norm_act64(ref_leaves[0], G, ref_leaves[1], ref_leaves[2])
    assert error_ratio_ok(y, y_torch, y64)
    dy = torch.randn_like(y64).to(dtype)
    for got, torch_grad, want in zip(torch.autograd.grad(y, leaves, dy),
                                     torch.autograd.grad(y_torch, leaves, dy),
                                     torch.autograd.grad(y64, ref_leaves, dy.double())):
        assert error_ratio_ok(got, torch_grad, want, factor=3.0)
