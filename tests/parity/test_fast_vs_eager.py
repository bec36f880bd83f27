"""The whole model through the Triton kernels (interpreted on CPU) equals the eager reference.

Same weights, same input, same targets: forward outputs, every loss term and every gradient
agree between ``ops.use("fast")`` and ``ops.use("eager")``. Tiny size (64x64 image, 2
decoder layers) because the interpreter is slow; dropout off so the two runs see the same
function. float32, since the mask kernels read fp32/fp16/bf16 only (fp64 runs the reference).
On a GPU machine the same test runs compiled kernels on CUDA tensors (benchmarks/gpu_suite.sh),
where reduction orders differ more than in the interpreter, hence the wider CUDA tolerances.
"""
import pytest
import torch

import maskformer_fast as mf
from maskformer_fast import ops
from tests.helpers import spy_kernels as _spy_kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (output atol, output and loss rtol, gradient error relative to each gradient's max)
TOLERANCES = {"cpu": (2e-5, 1e-5, 1e-4), "cuda": (2e-4, 1e-4, 2e-3)}




def _run(model, images, targets, mode):
    model.zero_grad(set_to_none=True)
    with ops.use(mode):
        out = model(images)
        losses = model.criterion(out, targets)
        sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, losses, grads


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = mf.get_config("maskformer_r50_ade20k", num_decoder_layers=2, dim_feedforward=256, dropout=0.0,
                        num_classes=5, num_queries=10)
    return mf.build_model(cfg).to(DEVICE).train()


def test_model_matches_eager_through_every_kernel(tiny_model, monkeypatch):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 80, generator=g).to(DEVICE)
    owner = torch.randint(0, 3, (2, 8, 10), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    targets = [{"labels": torch.tensor([0, 2, 4]), "masks": owner[0][None] == torch.arange(3)[:, None, None]},
               {"labels": torch.tensor([1]), "masks": owner[1][None] == 0}]
    targets = [{k: v.to(DEVICE) for k, v in t.items()} for t in targets]
    out_atol, out_rtol, grad_rel = TOLERANCES[DEVICE]

    out_e, losses_e, grads_e = _run(tiny_model, images, targets, "eager")
    calls = _spy_kernels(monkeypatch)
    out_t, losses_t, grads_t = _run(tiny_model, images, targets, "fast")

    assert set(calls) == set(ops.OPS), calls  # every registered kernel ran, the matcher's included
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(out_t[key], out_e[key], rtol=out_rtol, atol=out_atol, msg=key)
    assert losses_t.keys() == losses_e.keys()
    for key in losses_e:
        torch.testing.assert_close(losses_t[key], losses_e[key], rtol=out_rtol, atol=out_rtol / 10, msg=key)
    assert grads_t.keys() == grads_e.keys()
    for name in grads_e:
        scale = grads_e[name].abs().max().clamp_min(1e-12)
        err = (grads_t[name] - grads_e[name]).abs().max() / scale
        assert err < grad_rel, f"gradient of {name} differs by {err:.2e} (relative to its max)"
