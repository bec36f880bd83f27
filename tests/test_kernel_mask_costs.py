"""kernels/mask_costs.py against the float64 eager reference (interpreted on CPU)."""
import pytest
import torch

from maskformer_fast import ops, reference
from maskformer_fast.kernels import mask_costs as kernel

from .helpers import assert_close_verbose, only_kernel, spy

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"


def _problem(B, Q, K, h, w, num_targets, target_dtype=torch.bool, pred_dtype=torch.float32, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = (torch.randn(B, Q, h, w, generator=g) * scale).to(pred_dtype)
    target = torch.rand(B, K, h, w, generator=g) > 0.6
    return pred.to(DEVICE), target.to(target_dtype).to(DEVICE), torch.tensor(num_targets, dtype=torch.int64).to(DEVICE)


def _reference64(pred, target, num_targets):
    return reference.mask_costs(pred.double(), target.double(), num_targets)


def _check(pred, target, num_targets, rtol=1e-5, atol=1e-6):
    focal, dice = kernel.mask_costs(pred, target, num_targets)
    ref_focal, ref_dice = _reference64(pred, target, num_targets)  # on the same device
    assert focal.dtype == dice.dtype == torch.float32
    assert_close_verbose(focal.cpu(), ref_focal.cpu(), rtol=rtol, atol=atol, name="focal")
    assert_close_verbose(dice.cpu(), ref_dice.cpu(), rtol=rtol, atol=atol, name="dice")


@pytest.mark.parametrize("B,Q,K,h,w,num_targets", [
    (2, 5, 3, 7, 9, [3, 1]),          # h*w = 63: one partial pixel block
    (1, 33, 20, 5, 13, [20]),         # two query blocks, the second with one row
    (3, 4, 7, 1, 17, [0, 7, 4]),      # a single pixel row; an image without targets
    (2, 3, 70, 4, 5, [70, 65]),       # two target blocks (K > 64), the second partly padding
    (2, 6, 130, 3, 3, [10, 130]),     # image 0's 2nd and 3rd target blocks (k 64..129) are all padding
    (1, 2, 2, 1, 1, [2]),             # a single pixel
    (2, 9, 5, 16, 20, [5, 2]),        # several pixel blocks
])
def test_forward_matches_float64_reference(poisoned_outputs, B, Q, K, h, w, num_targets):
    _check(*_problem(B, Q, K, h, w, num_targets))


@pytest.mark.parametrize("target_dtype", [torch.bool, torch.uint8, torch.float32, torch.float16])
def test_target_dtypes(poisoned_outputs, target_dtype):
    _check(*_problem(2, 5, 4, 6, 7, [4, 3], target_dtype=target_dtype))


@pytest.mark.parametrize("pred_dtype", [torch.float16, torch.bfloat16])
def test_half_logits_are_read_exactly(poisoned_outputs, pred_dtype):
    """The reference upcasts the same half values: the costs agree to fp32 accuracy."""
    _check(*_problem(2, 5, 4, 6, 7, [4, 2], pred_dtype=pred_dtype))


def test_num_targets_beyond_kmax_reads_nothing_outside(poisoned_outputs):
    """num_targets > Kmax means every column is valid (as the reference), not a read past Kmax."""
    pred, target, _ = _problem(2, 3, 4, 5, 5, [4, 4])
    _check(pred, target, torch.tensor([9, -1], device=DEVICE))


def test_no_targets_at_all(poisoned_outputs):
    pred, target, num_targets = _problem(2, 5, 0, 4, 4, [0, 0])
    focal, dice = kernel.mask_costs(pred, target, num_targets)
    assert focal.shape == dice.shape == (2, 5, 0)


def test_expanded_targets_are_not_copied(poisoned_outputs):
    """Several predictions sharing one image's targets through a stride-0 view."""
    pred, target, _ = _problem(3, 4, 5, 5, 6, [5])
    shared = target[:1].expand(3, -1, -1, -1)
    assert shared.stride(0) == 0
    _check(pred, shared, torch.tensor([5, 5, 5], device=DEVICE))


def test_non_contiguous_logits(poisoned_outputs):
    pred, target, num_targets = _problem(2, 4, 3, 6, 5, [3, 3])
    _check(pred.transpose(0, 1).contiguous().transpose(0, 1), target, num_targets)  # batch-strided
    _check(pred.transpose(2, 3).contiguous().transpose(2, 3), target, num_targets)  # pixels strided


def test_large_fp16_logits_stay_finite():
    """|x| = 60 in fp16: the pairwise focal cost summed in fp16 overflows, the kernel's fp32 does not."""
    B, Q, K, h, w = 1, 4, 2, 64, 64
    g = torch.Generator().manual_seed(3)
    pred = torch.where(torch.rand(B, Q, h, w, generator=g) < 0.8, 60.0, -60.0).to(torch.float16)
    target = torch.rand(B, K, h, w, generator=g) > 0.5
    num_targets = torch.tensor([K])
    # the naive formulation in fp16: per-pixel focal terms of ~45 summed over 4096 pixels
    x16 = pred.reshape(B, Q, -1)
    t16 = target.reshape(B, K, -1).half()
    focal_neg16 = 0.75 * x16.sigmoid() ** 2 * torch.nn.functional.softplus(x16.float()).half()
    naive = torch.einsum("bqp,bkp->bqk", focal_neg16, 1 - t16)
    assert not torch.isfinite(naive).all()

    focal, dice = kernel.mask_costs(pred.to(DEVICE), target.to(DEVICE), num_targets.to(DEVICE))
    ref_focal, ref_dice = _reference64(pred, target, num_targets)
    assert torch.isfinite(focal).all() and torch.isfinite(dice).all()
    assert_close_verbose(focal.cpu(), ref_focal, rtol=1e-5, atol=1e-6, name="focal")
    assert_close_verbose(dice.cpu(), ref_dice, rtol=1e-5, atol=1e-6, name="dice")


def test_ops_dispatch_matches_eager(poisoned_outputs, monkeypatch):
    pred, target, num_targets = _problem(2, 6, 4, 8, 8, [4, 1])
    calls = []
    for module, name in ((kernel, "triton"), (reference, "eager")):
        monkeypatch.setattr(module, "mask_costs", spy(module.mask_costs, calls, name))
    with ops.use("eager"):
        eager = ops.mask_costs(pred, target, num_targets)
    with ops.use("fast"):
        fast = ops.mask_costs(pred, target, num_targets)
    assert calls == ["eager", "triton"]
    for name, a, e in zip(("focal", "dice"), fast, eager):
        assert_close_verbose(a, e, rtol=1e-5, atol=1e-6, name=name)


def test_unsupported_dtype_falls_back_to_eager(monkeypatch):
    pred, target, num_targets = _problem(1, 3, 2, 4, 4, [2])
    assert "logits must be fp32" in kernel.unsupported(pred.double(), target, num_targets)
    with ops.use("fast"), pytest.raises(ValueError, match="logits must be fp32"):  # fast raises the reason
        ops.mask_costs(pred.double(), target, num_targets)
    only_kernel(monkeypatch, "mask_costs", "triton")  # "auto" picks the kernel for CPU tensors: it declines fp64
    with ops.use("auto"):
        focal, _ = ops.mask_costs(pred.double(), target, num_targets)
    assert focal.dtype == torch.float64  # the reference ran


@pytest.mark.parametrize("args,match", [
    (((2, 3, 4, 4), (2, 2, 4, 5), [2, 2]), "do not match"),
    (((2, 3, 4, 4), (1, 2, 4, 4), [2]), "do not match"),
    (((2, 3, 4, 4), (2, 2, 4, 4), [2]), "num_targets"),
    (((2, 3, 0, 4), (2, 2, 0, 4), [2, 2]), "no pixels"),
    (((2, 3, 4), (2, 2, 4), [2, 2]), "expected"),
])
def test_bad_shapes_raise(args, match):
    pred_shape, target_shape, num_targets = args
    with pytest.raises(ValueError, match=match):
        kernel.mask_costs(torch.zeros(pred_shape), torch.zeros(target_shape, dtype=torch.bool),
                          torch.tensor(num_targets))


def test_bad_dtypes_raise():
    with pytest.raises(ValueError, match="logits"):
        kernel.mask_costs(torch.zeros(1, 2, 3, 3, dtype=torch.float64), torch.zeros(1, 1, 3, 3), torch.tensor([1]))
    with pytest.raises(ValueError, match="num_targets"):
        kernel.mask_costs(torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 3, 3), torch.tensor([1.0]))


@pytest.mark.gpu
def test_benchmark_shape_on_gpu():
    """The matcher's real shape (16 images x 6 layers x 100 queries, 128x128), bf16 logits."""
    pred, target, num_targets = _problem(16, 600, 50, 128, 128, [50, 20, 5, 37] * 4, pred_dtype=torch.bfloat16)
    _check(pred, target, num_targets)
