"""The drop-in fast model (``build_model(cfg, fast=True)``, ``mf.optimize``) against the eager one.

Every backbone family (ResNet, R101c's DeepLab stem + multi-grid res5, Swin) at a small size.
Errors are measured against a float64 run of the eager model with the same weights; the fast
model may be at most twice as far from it as the float32 eager model (FlashAttention's rule),
plus a floor of 1e-6 of the output's scale for the case where eager happens to be exact. The
frozen-BN statistics are random (a random-init model has mean 0, var 1, weight 1, bias 0, which
would make folding them a no-op that any bug passes).
"""
import copy

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

import maskformer_fast as mf
from maskformer_fast.fast import FoldedConv2d

FAMILIES = {"maskformer_r50_ade20k": 53, "maskformer_r101c_ade20k": 106, "maskformer_swin_t_ade20k": 0}
OUTPUTS = ("pred_logits", "pred_masks")


def randomise_frozen_norms(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            n = module.weight.numel()
            module.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            module.bias.copy_(torch.randn(n, generator=g) * 0.1)
            module.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
    return model


def tiny_eager(preset):
    torch.manual_seed(0)
    cfg = mf.get_config(preset, num_decoder_layers=2, dim_feedforward=64, dropout=0.0, num_classes=5,
                        num_queries=8, drop_path_rate=0.0)
    return randomise_frozen_norms(mf.build_model(cfg))


def within_twice_eager(fast, eager, ref64, name, factor=2.0):
    scale = ref64.abs().max().item()
    fast_err = (fast.double() - ref64).abs().max().item()
    eager_err = (eager.double() - ref64).abs().max().item()
    assert fast_err <= factor * eager_err + 1e-6 * scale, \
        f"{name}: fast error {fast_err:.3g} vs eager {eager_err:.3g} (scale {scale:.3g})"
    assert (fast - eager).abs().max().item() <= 1e-4 * scale, f"{name}: fast differs from eager by over 1e-4"


# Inference runs channels_last, whose mkldnn convolutions are less accurate than NCHW ones on a
# CPU (masks' rms error vs float64 2.4x NCHW's, measured for R50/R101c 2026-12-02; the same
# model NCHW is within 1.1x): the eval outputs get 4x eager's error, training (NCHW) 2x.
CHANNELS_LAST_FACTOR = 4.0


def images(seed=1, shape=(2, 3, 72, 88)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def targets():
    g = torch.Generator().manual_seed(2)
    owner = torch.randint(0, 3, (2, 9, 11), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    return [{"labels": torch.tensor([0, 2, 4]), "masks": owner[0][None] == torch.arange(3)[:, None, None]},
            {"labels": torch.tensor([1]), "masks": owner[1][None] == 0}]


@torch.no_grad()
def eval_outputs(model, x):
    return model.eval()(x)


@pytest.mark.parametrize("preset", FAMILIES)
def test_optimized_model_matches_eager_in_eval(preset):
    eager = tiny_eager(preset)
    fast = mf.optimize(copy.deepcopy(eager), compile=False)
    assert fast.fast.folded_norms == FAMILIES[preset]
    assert not any(type(m) is FrozenBatchNorm2d for m in fast.modules()), "a frozen norm was left unfolded"
    assert fast.state_dict().keys() == eager.state_dict().keys()
    x = images()
    out_e, out_f = eval_outputs(eager, x), eval_outputs(fast, x)
    out_64 = eval_outputs(copy.deepcopy(eager).double(), x.double())
    assert "aux_outputs" in out_e and "aux_outputs" not in out_f  # final layer only
    assert out_f["padded_size"] == out_e["padded_size"] and out_f["input_size"] == out_e["input_size"]
    for key in OUTPUTS:
        assert out_f[key].dtype == torch.float32 and out_f[key].shape == out_e[key].shape
        within_twice_eager(out_f[key], out_e[key], out_64[key], f"{preset} {key}", CHANNELS_LAST_FACTOR)


def test_weights_load_both_ways_and_refold():
    """A fast model's state dict runs the eager model and vice versa; new weights loaded into a
    fast model are used (the folded cache follows them)."""
    eager = tiny_eager("maskformer_r50_ade20k")
    fast = mf.optimize(copy.deepcopy(eager), compile=False)
    x = images()
    eval_outputs(fast, x)  # fills the folded cache
    other = randomise_frozen_norms(copy.deepcopy(eager), seed=7)
    fast.load_state_dict(other.state_dict())
    out_f, out_o = eval_outputs(fast, x), eval_outputs(other, x)
    torch.testing.assert_close(out_f["pred_masks"], out_o["pred_masks"], rtol=1e-4, atol=1e-4)
    plain = mf.build_model(eager.cfg)
    plain.load_state_dict(fast.state_dict())
    torch.testing.assert_close(eval_outputs(plain, x)["pred_logits"], out_o["pred_logits"], rtol=1e-4, atol=1e-5)


def training_step(model, x, t, matching):
    model.zero_grad(set_to_none=True)
    out = model(x)
    losses = model.criterion(out, t, matching=matching)
    sum(losses.values()).backward()
    return out, losses, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("preset", FAMILIES)
def test_fast_model_trains_like_eager(preset):
    """build_model(cfg, fast=True) in training mode: outputs and every loss in float32 (2x rule);
    every gradient in float64, where folding is exact (1e-9). float32 gradients of a deep ReLU net
    hinge on near-ties (a pre-activation within rounding of 0 flips its mask, and both eager and
    fast show such jumps, 1e-3..1e-1 of a gradient's max, at machine-dependent places), so
    they are not compared in float32."""
    eager = tiny_eager(preset).train()
    fast = mf.build_model(eager.cfg, fast=True).train()
    fast.load_state_dict(eager.state_dict())
    x, t = images(), targets()
    with torch.no_grad():
        matching = eager.criterion.match(eager(x), t)
    out_e, loss_e, _ = training_step(eager, x, t, matching)
    out_f, loss_f, _ = training_step(fast, x, t, matching)
    out_r, loss_r, grad_r = training_step(copy.deepcopy(eager).double(), x.double(), t, matching)
    assert len(out_f["aux_outputs"]) == len(out_e["aux_outputs"]) == 1
    for key in OUTPUTS:
        within_twice_eager(out_f[key], out_e[key], out_r[key], f"{preset} {key}")
    assert loss_f.keys() == loss_e.keys()
    for key in loss_e:
        within_twice_eager(loss_f[key], loss_e[key], loss_r[key], f"{preset} loss {key}")
    _, loss_64, grad_64 = training_step(fast.double(), x.double(), t, matching)
    assert grad_64.keys() == grad_r.keys()
    for name in grad_r:
        err = (grad_64[name] - grad_r[name]).abs().max() / grad_r[name].abs().max().clamp_min(1e-30)
        assert err < 1e-9, f"{preset}: float64 gradient of {name} differs by {err:.2e}"
    for key in loss_r:
        torch.testing.assert_close(loss_64[key], loss_r[key], rtol=1e-12, atol=1e-14, msg=key)


def _compile_marks(preset):
    if preset == "maskformer_r50_ade20k":
        return ()
    marks = [pytest.mark.slow]
    if preset.startswith("maskformer_swin"):
        # torch 2.11's inductor C++ codegen fails on Swin on an AVX-512 CPU ("'decltype' evaluates to
        # 'float'"), with or without freezing: a torch bug, noted in NOTES "Known missing"
        from torch._inductor.exc import InductorError
        marks.append(pytest.mark.xfail(raises=InductorError, strict=False, reason="inductor CPU codegen bug"))
    return marks


@pytest.mark.parametrize("preset", [pytest.param(p, marks=_compile_marks(p)) for p in FAMILIES])
def test_compiled_optimized_model_matches_eager_and_refuses_stale_weights(preset):
    """inductor compiles a model for a minute on 2 cores: R50 always, the others with --runslow."""
    eager = tiny_eager(preset)
    fast = mf.optimize(copy.deepcopy(eager))  # compile=True, inference=True: inductor with freezing
    x = images(shape=(1, 3, 64, 96))
    out_e, out_f = eval_outputs(eager, x), eval_outputs(fast, x)
    out_64 = eval_outputs(copy.deepcopy(eager).double(), x.double())
    for key in OUTPUTS:
        within_twice_eager(out_f[key], out_e[key], out_64[key], f"compiled {key}", CHANNELS_LAST_FACTOR)
    with pytest.raises(ValueError, match="NaN"):
        fast(torch.full_like(x, float("nan")))  # the input check stays outside the compiled graph
    fast.load_state_dict(randomise_frozen_norms(copy.deepcopy(eager), seed=3).state_dict())
    with pytest.raises(RuntimeError, match="weights changed after optimize"):
        fast(x)


def test_optimize_refuses_bad_arguments():
    eager = tiny_eager("maskformer_r50_ade20k")
    with pytest.raises(ValueError, match="amp"):
        mf.optimize(copy.deepcopy(eager), amp="fp8")
    with pytest.raises(ValueError, match="MaskFormer"):
        mf.optimize(torch.nn.Linear(2, 2))
    fast = mf.optimize(eager, compile=False)
    with pytest.raises(ValueError, match="already optimized"):
        mf.optimize(fast)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda_graphs"):
            mf.optimize(tiny_eager("maskformer_r50_ade20k"), cuda_graphs=True)
    assert all(isinstance(m, FoldedConv2d) for m in (fast.backbone.conv1, fast.backbone.layer4[2].conv3))
