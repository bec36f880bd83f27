"""The official model's size rules at sizes that are not multiples of 32 (nor of 4), with the
official formulas written out here (facebookresearch/MaskFormer ``mask_former_model.py``,
Detectron2's ``ImageList.from_tensors`` and ``sem_seg_postprocess``, the matcher's nearest
downsampling):

* the input is padded to ``size_divisibility`` (0: not at all for one image), and the stride-4
  grid is what the convolutions give (ceil arithmetic, not padded_size / 4);
* mask logits are upsampled bilinearly to the padded size, then cropped to the image and
  resized to the output size; with PANOPTIC_ON that happens to the logits before the sigmoid;
* the criterion pads targets to the padded size and the matcher resizes them to the grid with
  ``F.interpolate(mode="nearest")``.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import maskformer_fast as mf
from maskformer_fast.criterion import MaskFormerCriterion
from tests.helpers import assert_close_verbose
from tests.test_criterion import make_batch, official_losses64

SMALL = dict(num_decoder_layers=2, dim_feedforward=64, num_queries=10)


def resnet_grid(size, divisibility):
    """Official: pad to a multiple of divisibility (ImageList), then conv7/s2 + maxpool/s2, each
    floor((n + 2p - k) / 2) + 1 = ceil(n / 2)."""
    padded = [n if divisibility <= 1 else math.ceil(n / divisibility) * divisibility for n in size]
    return tuple(padded), tuple(math.ceil(math.ceil(n / 2) / 2) for n in padded)


def official_semantic(logits, masks, padded, image_size, output_size, before_inference):
    """MaskFormer.forward (inference) + semantic_inference for one image, in float32 as the
    official model runs (float64 would place the bilinear source pixels differently, ~1e-5)."""
    up = F.interpolate(masks[None].float(), size=padded, mode="bilinear", align_corners=False)[0]

    def sem_seg_postprocess(result):
        result = result[:, : image_size[0], : image_size[1]][None]
        return F.interpolate(result, size=output_size, mode="bilinear", align_corners=False)[0]

    if before_inference:
        up = sem_seg_postprocess(up)
    semseg = torch.einsum("qc,qhw->chw", logits.float().softmax(-1)[..., :-1], up.sigmoid())
    return semseg if before_inference else sem_seg_postprocess(semseg)


@pytest.mark.parametrize("preset,size,divisibility,before", [
    ("maskformer_r50_coco_panoptic", (333, 487), 0, True),
    ("maskformer_swin_t_coco_panoptic", (333, 487), 0, True),
    ("maskformer_r50_ade20k", (301, 430), 32, False),
    ("maskformer_r50_ade20k_panoptic", (301, 430), 32, True),
])
def test_presets_padding_and_grid(preset, size, divisibility, before):
    cfg = mf.get_config(preset, **SMALL)
    assert (cfg.size_divisibility, cfg.sem_seg_postprocess_before_inference) == (divisibility, before)
    model = mf.build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    padded, grid = resnet_grid(size, divisibility)
    if cfg.is_swin:  # D2SwinTransformer: pad to the patch size 4, then the same halvings
        grid = tuple(math.ceil(n / 4) for n in padded)
    assert out["padded_size"] == padded and out["input_size"] == size
    assert tuple(out["pred_masks"].shape[-2:]) == grid
    if preset == "maskformer_r50_coco_panoptic":
        assert grid == (84, 122)  # the official model's grid for this input


@pytest.mark.parametrize("before", [False, True], ids=["after", "before-inference"])
@pytest.mark.parametrize("image_size,padded,grid,output_size", [
    ((333, 487), (333, 487), (84, 122), (500, 731)),   # COCO: unpadded, grid by ceil arithmetic
    ((301, 430), (320, 448), (80, 112), (301, 430)),   # ADE20K: padded to 32, cropped back
    ((290, 401), (320, 448), (80, 112), (611, 845)),   # a smaller image of a padded batch
])
def test_semantic_inference_is_the_official_postprocessing(before, image_size, padded, grid, output_size):
    g = torch.Generator().manual_seed(0)
    logits, masks = 2 * torch.randn(1, 7, 5, generator=g), 4 * torch.randn(1, 7, *grid, generator=g)
    out = {"pred_logits": logits, "pred_masks": masks, "padded_size": padded}
    got = mf.semantic_inference(out, [image_size], [output_size], postprocess_before_inference=before)[0]
    expected = official_semantic(logits[0], masks[0], padded, image_size, output_size, before)
    assert got.shape == (4, *output_size)
    assert_close_verbose(got, expected, rtol=1e-5, atol=1e-6, name="semantic scores")
    if output_size != image_size:  # a crop alone commutes with the sigmoid; a resize does not
        other = official_semantic(logits[0], masks[0], padded, image_size, output_size, not before)
        assert (other - got).abs().max() > 1e-3  # the flag is not a no-op


def test_panoptic_masks_are_resized_before_the_sigmoid():
    """panoptic_inference: the official sem_seg_postprocess on the logits, then sigmoid; one
    query per class covering a region, so the id map is the per-pixel argmax."""
    grid, padded, image_size, output_size = (84, 122), (333, 487), (333, 487), (500, 731)
    g = torch.Generator().manual_seed(1)
    masks = 3 * torch.randn(1, 3, *grid, generator=g)
    logits = torch.full((1, 3, 4), -10.0)
    logits[0, torch.arange(3), torch.arange(3)] = 10.0  # query q: class q with p ~ 1
    out = {"pred_logits": logits, "pred_masks": masks, "padded_size": padded}
    ids, segments = mf.panoptic_inference(out, [image_size], [output_size], {"thing_classes": []},
                                          overlap_threshold=0.0)[0]
    up = F.interpolate(masks.double(), size=padded, mode="bilinear", align_corners=False)
    prob = F.interpolate(up[:, :, : image_size[0], : image_size[1]], size=output_size, mode="bilinear",
                         align_corners=False)[0].sigmoid()
    winner = prob.argmax(0)
    id_of_query = {s["category_id"]: s["id"] for s in segments}
    expected = torch.tensor([id_of_query.get(q, 0) for q in range(3)])[winner]
    assert ids.shape == output_size
    assert (ids.long() == expected).float().mean() > 0.9999  # rounding may flip a pixel at a tie


@pytest.mark.parametrize("size,padded,grid", [((300, 430), (300, 430), (75, 108)),
                                              ((301, 430), (320, 448), (80, 112))])
def test_criterion_is_the_official_loop_on_unpadded_targets(size, padded, grid):
    """Targets at the input size, padded by the criterion to the padded size, nearest-resized to
    a grid that is not padded / 4: losses and matches equal the float64 official loop."""
    outputs, targets = make_batch((3, 2), Q=8, C=5, h=grid[0], w=grid[1], input_size=size, padded_size=padded)
    crit = MaskFormerCriterion(num_classes=5)
    losses = crit(outputs, targets)
    expected, indices = official_losses64(outputs, targets, num_classes=5)
    for key in expected:
        assert_close_verbose(losses[key], expected[key].float(), rtol=1e-5, atol=1e-6, name=key)
    cols = crit.match(outputs, targets)
    for l, per_image in enumerate(indices):
        for b, (rows, tcols) in enumerate(per_image):
            assert cols[l, b, torch.as_tensor(rows)].tolist() == list(tcols)


def test_nearest_target_grid_is_not_a_strided_slice():
    """The matcher's targets at 300x430 -> 75x108: F.interpolate(nearest) picks columns
    floor(j * 430 / 108), which a [::4] slice does not."""
    cols = [math.floor(j * 430 / 108) for j in range(108)]
    assert cols != list(range(0, 430, 4))[:108]
    mask = torch.zeros(1, 300, 430, dtype=torch.bool)
    mask[0, :, cols[-1]] = True  # a column the slice never reads
    outputs, _ = make_batch((1,), Q=2, C=2, h=75, w=108, input_size=(300, 430), padded_size=(300, 430), num_aux=0)
    target = [{"labels": torch.tensor([1]), "masks": mask}]
    low_res = MaskFormerCriterion(num_classes=2)._prepare_targets(outputs, target).low_res
    assert low_res[0, 0, :, -1].all() and low_res[0, 0].sum() == 75


def test_model_batch_losses_match_the_official_loop():
    """A COCO-preset model (size_divisibility 0) on a 300x430 batch whose second image is
    smaller (its targets padded to the batch), against the official float64 loop."""
    torch.manual_seed(0)
    cfg = mf.get_config("maskformer_r50_coco_panoptic", pixel_decoder_encoder_layers=1, dropout=0.0, **SMALL)
    model = mf.build_model(cfg).double().eval()
    images = torch.randn(2, 3, 300, 430, dtype=torch.float64)
    images[1, :, 280:] = 0
    images[1, :, :, 400:] = 0
    g = torch.Generator().manual_seed(3)
    targets = []
    for h, w in ((300, 430), (280, 400)):
        masks = torch.zeros(3, 300, 430, dtype=torch.bool)
        masks[:, :h, :w] = torch.rand(3, h, w, generator=g) > 0.5
        targets.append({"labels": torch.randint(0, cfg.num_classes, (3,), generator=g), "masks": masks})
    with torch.no_grad(), mf.ops.use("eager"):
        out = model(images)
        losses = MaskFormerCriterion(cfg.num_classes)(out, targets)
    assert out["padded_size"] == (300, 430) and tuple(out["pred_masks"].shape[-2:]) == (75, 108)
    expected, _ = official_losses64(out, targets, cfg.num_classes)
    for key in expected:
        assert_close_verbose(losses[key], expected[key], rtol=1e-8, atol=1e-12, name=key)  # empty_weight is fp32


# Every official maskformer_*.yaml (facebookresearch/MaskFormer configs/, _BASE_ chains resolved):
# MODEL.MASK_FORMER.SIZE_DIVISIBILITY (default 32) and SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE
# or TEST.PANOPTIC_ON, with the preset that mirrors it. The same table is in NOTES.md.
OFFICIAL_CONFIGS = {
    "ade20k-150-panoptic/maskformer_panoptic_R101_bs16_720k": ("maskformer_r101_ade20k_panoptic", 32, True),
    "ade20k-150-panoptic/maskformer_panoptic_R50_bs16_720k": ("maskformer_r50_ade20k_panoptic", 32, True),
    "ade20k-150/maskformer_R101_bs16_160k": ("maskformer_r101_ade20k", 32, False),
    "ade20k-150/maskformer_R101c_bs16_160k": ("maskformer_r101c_ade20k", 32, False),
    "ade20k-150/maskformer_R50_bs16_160k": ("maskformer_r50_ade20k", 32, False),
    "ade20k-150/swin/maskformer_swin_base_IN21k_384_bs16_160k_res640": ("maskformer_swin_b_ade20k", 32, False),
    "ade20k-150/swin/maskformer_swin_large_IN21k_384_bs16_160k_res640": ("maskformer_swin_l_ade20k", 32, False),
    "ade20k-150/swin/maskformer_swin_small_bs16_160k": ("maskformer_swin_s_ade20k", 32, False),
    "ade20k-150/swin/maskformer_swin_tiny_bs16_160k": ("maskformer_swin_t_ade20k", 32, False),
    "ade20k-full-847/maskformer_R101_bs16_200k": ("maskformer_r101_ade20k_full", 32, False),
    "ade20k-full-847/maskformer_R101c_bs16_200k": ("maskformer_r101c_ade20k_full", 32, False),
    "ade20k-full-847/maskformer_R50_bs16_200k": ("maskformer_r50_ade20k_full", 32, False),
    "cityscapes-19/maskformer_R101_bs16_90k": ("maskformer_r101_cityscapes", 32, False),
    "cityscapes-19/maskformer_R101c_bs16_90k": ("maskformer_r101c_cityscapes", 32, False),
    "coco-panoptic/maskformer_panoptic_R101_bs64_554k": ("maskformer_r101_coco_panoptic", 0, True),
    "coco-panoptic/maskformer_panoptic_R50_bs64_554k": ("maskformer_r50_coco_panoptic", 0, True),
    "coco-panoptic/swin/maskformer_panoptic_swin_base_IN21k_384_bs64_554k": ("maskformer_swin_b_coco_panoptic", 0, True),
    "coco-panoptic/swin/maskformer_panoptic_swin_large_IN21k_384_bs64_554k": ("maskformer_swin_l_coco_panoptic", 0, True),
    "coco-panoptic/swin/maskformer_panoptic_swin_small_bs64_554k": ("maskformer_swin_s_coco_panoptic", 0, True),
    "coco-panoptic/swin/maskformer_panoptic_swin_tiny_bs64_554k": ("maskformer_swin_t_coco_panoptic", 0, True),
    "coco-stuff-10k-171/maskformer_R101_bs32_60k": ("maskformer_r101_coco_stuff", 32, False),
    "coco-stuff-10k-171/maskformer_R101c_bs32_60k": ("maskformer_r101c_coco_stuff", 32, False),
    "coco-stuff-10k-171/maskformer_R50_bs32_60k": ("maskformer_r50_coco_stuff", 32, False),
    "mapillary-vistas-65/maskformer_R50_bs16_300k": ("maskformer_r50_mapillary", 32, False),
}


@pytest.mark.parametrize("yaml_name", sorted(OFFICIAL_CONFIGS))
def test_presets_follow_their_official_config(yaml_name):
    preset, divisibility, before = OFFICIAL_CONFIGS[yaml_name]
    cfg = mf.get_config(preset)
    assert (cfg.size_divisibility, cfg.sem_seg_postprocess_before_inference) == (divisibility, before)


def test_presets_without_an_official_config_follow_their_dataset():
    """Presets the official code has no yaml for take their dataset's rule (COCO panoptic: no
    padding; panoptic datasets: postprocessing before inference)."""
    covered = {p for p, _, _ in OFFICIAL_CONFIGS.values()}
    for name in sorted(set(mf.list_presets()) - covered):
        cfg = mf.get_config(name)
        assert cfg.size_divisibility == (0 if cfg.dataset == "coco_panoptic" else 32), name
        assert cfg.sem_seg_postprocess_before_inference == (cfg.dataset in ("coco_panoptic", "ade20k_panoptic")), name
