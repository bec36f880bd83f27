"""torch.compile of the whole model gives the eager model's outputs (CPU inductor, eager ops).

Slow (about 75 s of compilation on a 2-core CPU), hence marked; `--runslow` runs it.
"""
import pytest
import torch

import maskformer_fast as mf


@pytest.mark.slow
def test_compiled_model_matches_eager():
    torch.manual_seed(0)
    cfg = mf.get_config("maskformer_r50_ade20k", num_decoder_layers=2, dim_feedforward=64, num_queries=10,
                        num_classes=5)
    model = mf.build_model(cfg).eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), mf.ops.use("eager"):
        expected = model(images)
        got = torch.compile(model)(images)
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-4, msg=key)
    assert len(got["aux_outputs"]) == len(expected["aux_outputs"]) == 1
