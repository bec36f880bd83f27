"""Full-resolution post-processing in bands of output rows: the same label and panoptic maps as
one pass, with no buffer above the tile budget (a 100-megapixel photo must not need Q x H x W)."""
import pytest
import torch
import torch.nn.functional as F

import maskformer_fast as mf
from maskformer_fast import inference


def _outputs(seed=0, Q=12, C=6, grid=(21, 31), padded=(84, 122)):
    g = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(1, Q, C + 1, generator=g)
    logits[..., :-1] += 6  # most queries keep their segment
    return {"pred_logits": logits, "pred_masks": 4 * torch.randn(1, Q, *grid, generator=g), "padded_size": padded}


@pytest.fixture
def band_sizes(monkeypatch):
    """Records the shape of every band the tiled path builds."""
    seen = []
    real = inference._bands

    def spy(maps, image_size, output_size, rows_per_band):
        for rows, band in real(maps, image_size, output_size, rows_per_band):
            seen.append(tuple(band.shape))
            yield rows, band

    monkeypatch.setattr(inference, "_bands", spy)
    return seen


@pytest.mark.parametrize("before", [False, True])
def test_semantic_labels_in_bands_equal_one_pass(band_sizes, before):
    out, size = _outputs(), (517, 763)
    whole = mf.semantic_inference(out, [(80, 120)], [size], postprocess_before_inference=before)[0].argmax(0)
    one = inference.semantic_labels(out, [(80, 120)], [size], before)[0]
    assert torch.equal(one, whole) and len(band_sizes) == 1
    band_sizes.clear()
    tiled = inference.semantic_labels(out, [(80, 120)], [size], before, tile_elements=12 * 763 * 10)[0]
    assert len(band_sizes) == 52 and max(b[1] for b in band_sizes) == 10  # 517 rows, 10 a band
    assert all(b[0] * b[1] * b[2] <= 12 * 763 * 10 for b in band_sizes)
    assert (tiled == whole).float().mean() > 0.999  # bands round differently (~1e-5): rare ties flip
    assert len(torch.unique(whole)) > 3


def test_panoptic_in_bands_equals_one_pass(band_sizes):
    out, size = _outputs(seed=1, Q=8), (400, 601)
    out["pred_logits"] = torch.full((1, 8, 7), -9.0)
    out["pred_logits"][0, torch.arange(8), torch.tensor([0, 1, 2, 3, 4, 5, 3, 0])] = 9.0  # two stuff 3s merge
    meta = {"thing_classes": [0, 1, 2]}
    ids, segments = mf.panoptic_inference(out, [(84, 122)], [size], meta, 0.5, 0.1)[0]
    band_sizes.clear()
    tiled, tiled_segments = mf.panoptic_inference(out, [(84, 122)], [size], meta, 0.5, 0.1,
                                                  tile_elements=8 * 601 * 7)[0]
    assert len(band_sizes) == 2 * 58  # two passes over 400 rows in bands of 7
    assert len(segments) >= 3 and [s["category_id"] for s in tiled_segments] == [s["category_id"] for s in segments]
    assert (tiled == ids).float().mean() > 0.999
    for a, b in zip(segments, tiled_segments):
        assert abs(a["area"] - b["area"]) <= 0.001 * size[0] * size[1]
        assert b["area"] == int((tiled == b["id"]).sum())


def test_band_resize_is_pytorch_bilinear():
    maps = torch.randn(3, 40, 57)
    expected = F.interpolate(maps[:, :33, :50][None], size=(301, 433), mode="bilinear", align_corners=False)[0]
    bands = list(inference._bands(maps, (33, 50), (301, 433), rows_per_band=16))
    assert len(bands) == 19
    got = torch.cat([b for _, b in bands], 1)
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-5)


def test_instance_masks_beyond_the_limit_are_refused_before_allocating(monkeypatch):
    from maskformer_fast import predictor
    cfg = mf.get_config("maskformer_r50_ade20k", num_classes=6)
    p = predictor.Predictor(torch.nn.Identity(), cfg, "instance", top_k=100)
    monkeypatch.setattr(predictor, "INSTANCE_BYTES_LIMIT", 100 * 300 * 400 * 5 - 1)
    out = _outputs()
    with pytest.raises(ValueError, match=r"instance masks of a 400x300 image need .*lower --top-k"):
        p._postprocess(out, [(80, 120)], [(300, 400)])
    monkeypatch.setattr(predictor, "INSTANCE_BYTES_LIMIT", 100 * 300 * 400 * 5)
    assert p._postprocess(out, [(80, 120)], [(300, 400)])[0]["masks"].shape[-2:] == (300, 400)
