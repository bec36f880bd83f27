"""kernels/mask_losses.py (fused upsample + focal + dice) against the float64 eager reference."""
import pytest
import torch

from maskformer_fast import ops, reference
from maskformer_fast.kernels import mask_costs as mask_costs_kernel
from maskformer_fast.kernels import mask_losses as kernel

from .helpers import assert_close_verbose, spy

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"


def _problem(M, h, w, H, W, target_dtype=torch.bool, pred_dtype=torch.float32, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = (torch.randn(M, h, w, generator=g) * scale).to(pred_dtype)
    target = torch.rand(M, H, W, generator=g) > 0.6
    return pred.to(DEVICE), target.to(target_dtype).to(DEVICE)


def _weights(seed=1):
    """Random weights on the two losses, so both gradients are checked (and not only their sum)."""
    return torch.rand(2, generator=torch.Generator().manual_seed(seed)).tolist()


def _check(pred, target, num_masks=2.5, rtol=1e-5, atol=1e-7, grad_rtol=1e-5):
    wf, wd = _weights()
    x = pred.detach().clone().requires_grad_()
    focal, dice = kernel.mask_losses(x, target, num_masks)
    (wf * focal + wd * dice).backward()

    x64 = pred.detach().double().requires_grad_()  # on the same device
    ref_focal, ref_dice = reference.mask_losses(x64, target, num_masks)
    (wf * ref_focal + wd * ref_dice).backward()

    assert focal.dtype == dice.dtype == torch.float32 and focal.shape == dice.shape == ()
    assert_close_verbose(focal.detach().cpu(), ref_focal.cpu(), rtol=rtol, atol=atol, name="focal")
    assert_close_verbose(dice.detach().cpu(), ref_dice.cpu(), rtol=rtol, atol=atol, name="dice")
    assert x.grad.dtype == pred.dtype
    scale = x64.grad.abs().max().item()
    assert_close_verbose(x.grad.cpu(), x64.grad.cpu(), rtol=grad_rtol, atol=grad_rtol * scale, name="grad")


@pytest.mark.parametrize("M,h,w,H,W", [
    (3, 5, 7, 20, 28),      # the usual factor 4
    (2, 6, 5, 21, 17),      # H = 4h - 3, W = 4w - 3: the padded-image case
    (2, 1, 9, 4, 36),       # a single source row
    (2, 9, 1, 36, 3),       # a single source column, W < 4w
    (2, 8, 8, 5, 7),        # downsampling (H < h)
    (1, 3, 4, 3, 4),        # same size: the identity map
    (1, 40, 36, 160, 144),  # several source tiles and output chunks per program
    (1, 2, 2, 13, 130),     # large factors; several forward column blocks
    (1, 50, 40, 3, 5),      # strong downsampling: most source pixels get no gradient (stored 0)
    (1, 3, 5, 50, 83),      # non-integer large upsampling (16.7x, 16.6x)
])
def test_forward_and_backward_match_float64_reference(poisoned_outputs, M, h, w, H, W):
    _check(*_problem(M, h, w, H, W))


@pytest.mark.parametrize("target_dtype", [torch.uint8, torch.float32, torch.float16])
def test_target_dtypes(poisoned_outputs, target_dtype):
    _check(*_problem(2, 4, 6, 16, 24, target_dtype=target_dtype))


def test_soft_targets_follow_the_general_formula(poisoned_outputs):
    pred, _ = _problem(2, 4, 5, 16, 20)
    soft = torch.rand(2, 16, 20, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    _check(pred, soft)


@pytest.mark.parametrize("pred_dtype", [torch.float16, torch.bfloat16])
def test_half_logits(poisoned_outputs, pred_dtype):
    """Same half inputs as the reference; the gradient is rounded to the logits' dtype."""
    pred, target = _problem(2, 4, 6, 16, 24, pred_dtype=pred_dtype)
    _check(pred, target, grad_rtol=torch.finfo(pred_dtype).eps)


def test_strided_inputs(poisoned_outputs):
    pred, target = _problem(3, 6, 5, 24, 20)
    _check(pred.transpose(1, 2).contiguous().transpose(1, 2), target[:, :, :].transpose(1, 2).contiguous()
           .transpose(1, 2))
    _check(pred[::2], target[::2])


def test_large_logits_stay_finite(poisoned_outputs):
    pred, target = _problem(2, 4, 4, 16, 16, scale=60.0)
    _check(pred, target)


def test_num_masks_as_tensor(poisoned_outputs):
    pred, target = _problem(2, 3, 3, 12, 12)
    _check(pred, target, num_masks=torch.tensor(3.0, device=DEVICE))


def test_no_masks():
    x = torch.zeros(0, 4, 4, device=DEVICE, requires_grad=True)
    focal, dice = kernel.mask_losses(x, torch.zeros(0, 16, 16, dtype=torch.bool, device=DEVICE), 1.0)
    assert focal.item() == 0.0 and dice.item() == 0.0
    (focal + dice).backward()
    assert x.grad.shape == x.shape


@pytest.mark.filterwarnings("ignore:Input #0 requires gradient and is not a double")
def test_gradcheck_tiny():
    """Finite differences of the kernel itself (fp32 kernel: loose eps and tolerances)."""
    pred, target = _problem(2, 3, 2, 7, 6, scale=1.0)
    x = pred.clone().requires_grad_()

    def weighted(x):
        focal, dice = kernel.mask_losses(x, target, 2.0)
        return 5.0 * focal + dice

    assert torch.autograd.gradcheck(weighted, (x,), eps=1e-2, atol=2e-4, rtol=1e-2)


def test_ops_dispatch_matches_eager(poisoned_outputs, monkeypatch):
    pred, target = _problem(3, 5, 6, 20, 22)
    calls = []
    for module, name in ((kernel, "triton"), (reference, "eager")):
        monkeypatch.setattr(module, "mask_losses", spy(module.mask_losses, calls, name))
    results = {}
    for mode in ("eager", "fast"):
        x = pred.clone().requires_grad_()
        with ops.use(mode):
            focal, dice = ops.mask_losses(x, target, 3.0)
        (2.0 * focal + dice).backward()
        results[mode] = (focal.detach(), dice.detach(), x.grad)
    assert calls == ["eager", "triton"]
    for name, a, e in zip(("focal", "dice", "grad"), results["fast"], results["eager"]):
        assert_close_verbose(a, e, rtol=1e-5, atol=1e-7, name=name)


def test_criterion_matches_eager(monkeypatch):
    """The whole criterion (matching costs + mask losses, 3 layers) with both ops on Triton."""
    from maskformer_fast.criterion import MaskFormerCriterion
    from tests.test_criterion import make_batch

    criterion = MaskFormerCriterion(num_classes=4)
    calls = []
    for module, name in ((kernel, "triton"), (reference, "eager")):
        monkeypatch.setattr(module, "mask_losses", spy(module.mask_losses, calls, name))
    for name, module in (("costs triton", mask_costs_kernel), ("costs eager", reference)):
        monkeypatch.setattr(module, "mask_costs", spy(module.mask_costs, calls, name))
    results = {}
    for mode in ("eager", "fast"):
        outputs, targets = make_batch((3, 0, 2), Q=6, h=5, w=7, input_size=(18, 26), seed=4, requires_grad=True)
        with ops.use(mode):
            cols = criterion.match(outputs, targets)
            losses = criterion(outputs, targets)
        sum(losses.values()).backward()
        results[mode] = cols, losses, outputs["pred_masks"].grad, outputs["aux_outputs"][1]["pred_masks"].grad
    # one cost call per match() and per loss evaluation, one loss call per decoder layer (3)
    assert calls == ["costs eager"] * 2 + ["eager"] * 3 + ["costs triton"] * 2 + ["triton"] * 3
    (cols, losses, grad, aux_grad), (cols_e, losses_e, grad_e, aux_grad_e) = results["fast"], results["eager"]
    assert torch.equal(cols, cols_e)
    for key in losses_e:
        assert_close_verbose(losses[key].detach(), losses_e[key].detach(), rtol=1e-5, atol=1e-7, name=key)
    assert_close_verbose(grad, grad_e, rtol=1e-5, atol=1e-7, name="pred_masks grad")
    assert_close_verbose(aux_grad, aux_grad_e, rtol=1e-5, atol=1e-7, name="aux pred_masks grad")


@pytest.mark.parametrize("pred_shape,target_shape,match", [
    ((2, 4, 4), (3, 16, 16), "expected"),
    ((2, 4, 4), (2, 16), "expected"),
    ((2, 0, 4), (2, 16, 16), "no pixels"),
    ((2, 4, 4), (2, 16, 0), "no pixels"),
])
def test_bad_shapes_raise(pred_shape, target_shape, match):
    with pytest.raises(ValueError, match=match):
        kernel.mask_losses(torch.zeros(pred_shape), torch.zeros(target_shape, dtype=torch.bool), 1.0)


def test_bad_dtypes_raise():
    with pytest.raises(ValueError, match="logits"):
        kernel.mask_losses(torch.zeros(1, 2, 2, dtype=torch.float64), torch.zeros(1, 8, 8), 1.0)
    with pytest.raises(ValueError, match="targets"):
        kernel.mask_losses(torch.zeros(1, 2, 2), torch.zeros(1, 8, 8, dtype=torch.int64), 1.0)


@pytest.mark.gpu
def test_benchmark_shape_on_gpu():
    """The training shape (800 matched masks, 128x128 -> 512x512) in bf16, against fp64."""
    pred, target = _problem(800, 128, 128, 512, 512, pred_dtype=torch.bfloat16)
    _check(pred, target, num_masks=800.0, grad_rtol=torch.finfo(torch.bfloat16).eps)


@pytest.mark.gpu
def test_memory_is_a_fraction_of_eager():
    """Forward + backward peak memory above the inputs: <= 0.25x the eager path's."""
    pred, target = _problem(64, 128, 128, 512, 512)

    def peak(fn):
        x = pred.clone().requires_grad_()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        focal, dice = fn(x, target, 64.0)
        (focal + dice).backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    assert peak(kernel.mask_losses) <= 0.25 * peak(reference.mask_losses)
