"""Config presets (values from the official configs / paper) and override checking."""
import pytest

from maskformer_fast.config import BACKBONES, DATASETS, MaskFormerConfig, get_config, list_presets, thing_classes

SHORT = ("r50", "r101", "r101c", "swin_t", "swin_s", "swin_b", "swin_l")


def test_every_required_preset_exists():
    presets = set(list_presets())
    for short in SHORT:
        for dataset in ("ade20k", "coco_panoptic"):
            assert f"maskformer_{short}_{dataset}" in presets
    for short in ("r50", "swin_t"):
        for dataset in ("ade20k_full", "coco_stuff", "cityscapes", "mapillary"):
            assert f"maskformer_{short}_{dataset}" in presets
    for name in presets:
        cfg = get_config(name)
        assert cfg.name == name and cfg.backbone in BACKBONES and cfg.dataset in DATASETS


@pytest.mark.parametrize("dataset, classes", [("ade20k", 150), ("ade20k_full", 847), ("ade20k_panoptic", 150),
                                              ("coco_panoptic", 133),
                                              ("coco_stuff", 171), ("cityscapes", 19), ("mapillary", 65)])
def test_num_classes(dataset, classes):
    assert get_config(f"maskformer_r50_{dataset}").num_classes == classes


def test_ade20k_resnet_recipe():
    c = get_config("maskformer_r50_ade20k")
    assert (c.batch_size, c.crop_size, c.max_iter) == (16, (512, 512), 160000)
    assert (c.base_lr, c.weight_decay, c.backbone_lr_multiplier, c.warmup_iters) == (1e-4, 1e-4, 0.1, 0)
    assert (c.lr_schedule, c.poly_power, c.clip_grad_norm) == ("poly", 0.9, 0.01)
    assert (c.num_queries, c.hidden_dim, c.num_decoder_layers, c.nheads, c.dim_feedforward) == (100, 256, 6, 8, 2048)
    assert (c.class_weight, c.mask_weight, c.dice_weight, c.no_object_weight) == (1.0, 20.0, 1.0, 0.1)
    assert c.frozen_bn and c.pixel_decoder_encoder_layers == 0 and c.deep_supervision
    assert (c.test_short_side, c.test_max_size, c.size_divisibility) == (512, 2048, 32)


def test_swin_recipes():
    t = get_config("maskformer_swin_t_ade20k")
    assert (t.base_lr, t.weight_decay, t.backbone_lr_multiplier, t.warmup_iters) == (6e-5, 0.01, 1.0, 1500)
    assert (t.window_size, t.pretrain_img_size, t.drop_path_rate, t.crop_size) == (7, 224, 0.3, (512, 512))
    for short in ("swin_b", "swin_l"):
        c = get_config(f"maskformer_{short}_ade20k")
        assert (c.window_size, c.pretrain_img_size, c.crop_size) == (12, 384, (640, 640))


def test_other_dataset_recipes():
    stuff = get_config("maskformer_r50_coco_stuff")
    assert (stuff.batch_size, stuff.crop_size, stuff.max_iter) == (32, (640, 640), 60000)
    assert get_config("maskformer_r50_ade20k_full").max_iter == 200000
    for short in ("r50", "r101"):
        c = get_config(f"maskformer_{short}_coco_panoptic")
        assert c.pixel_decoder_encoder_layers == 6  # "+6Enc"
        assert (c.batch_size, c.max_iter, c.lr_schedule, c.lr_steps) == (64, 554400, "multistep", (369600,))
        assert (c.base_lr, c.weight_decay, c.backbone_lr_multiplier, c.warmup_iters) == (1e-4, 1e-4, 0.1, 0)
    for short in ("swin_t", "swin_s", "swin_b", "swin_l"):
        c = get_config(f"maskformer_{short}_coco_panoptic")
        assert c.enforce_input_project and c.pixel_decoder_encoder_layers == 0
        assert (c.base_lr, c.weight_decay, c.backbone_lr_multiplier, c.warmup_iters) == (6e-5, 0.01, 1.0, 1500)


def test_overrides_are_coerced_from_strings_and_lists():
    c = get_config("maskformer_r50_ade20k", num_decoder_layers="3", dropout="0", deep_supervision="false",
                   crop_size="384, 320", tta_scales=[1, 1.5], base_lr=2e-4, frozen_bn="1")
    assert c.num_decoder_layers == 3 and isinstance(c.num_decoder_layers, int)
    assert c.dropout == 0.0 and isinstance(c.dropout, float)
    assert c.deep_supervision is False and c.frozen_bn is True
    assert c.crop_size == (384, 320) and c.tta_scales == (1.0, 1.5)
    assert c.base_lr == 2e-4
    assert get_config("maskformer_r50_ade20k") == MaskFormerConfig()  # the dataclass defaults are this preset


@pytest.mark.parametrize("overrides, needle", [
    (dict(num_querys=10), "num_querys"),
    (dict(num_decoder_layers="three"), "num_decoder_layers"),
    (dict(num_decoder_layers=2.5), "num_decoder_layers"),
    (dict(num_queries=True), "num_queries"),
    (dict(deep_supervision="maybe"), "deep_supervision"),
    (dict(crop_size="a,b"), "crop_size"),
    (dict(crop_size=512), "crop_size"),
    (dict(crop_size=(1, 2, 3)), "crop_size"),
    (dict(backbone="resnet18"), "backbone"),
    (dict(lr_schedule="cosine"), "lr_schedule"),
    (dict(hidden_dim=250), "hidden_dim"),
    (dict(num_classes=0), "num_classes"),
])
def test_bad_overrides_name_the_field(overrides, needle):
    with pytest.raises(ValueError, match=needle):
        get_config("maskformer_r50_ade20k", **overrides)


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="maskformer_r18_ade20k"):
        get_config("maskformer_r18_ade20k")


def test_ade20k_panoptic_recipe_and_thing_classes():
    # configs/ade20k-150-panoptic/maskformer_panoptic_R50_bs16_720k.yaml
    c = get_config("maskformer_r50_ade20k_panoptic")
    assert (c.batch_size, c.crop_size, c.max_iter, c.test_short_side, c.test_max_size) == \
        (16, (640, 640), 720000, 640, 2560)
    assert (c.pixel_decoder_encoder_layers, c.object_mask_threshold, c.overlap_threshold) == (6, 0.7, 0.8)
    assert (c.base_lr, c.weight_decay, c.lr_schedule) == (1e-4, 1e-4, "poly")
    things = thing_classes("ade20k_panoptic")
    # the 100 instance-challenge classes: person (12), car (20), chair (19) are things; wall (0),
    # sky (2), floor (3), tree (4) are stuff; the last class (flag, 149) is a thing
    assert len(things) == len(set(things)) == 100 and {12, 19, 20, 149} <= set(things)
    assert not {0, 2, 3, 4} & set(things)
    assert thing_classes("coco_panoptic") == tuple(range(80)) and thing_classes("ade20k") == ()
    with pytest.raises(ValueError, match="unknown dataset"):
        thing_classes("pascal")


# IMS_PER_BATCH, CROP.SIZE, MAX_ITER, MIN_SIZE_TEST, MAX_SIZE_TEST of each official Base-*.yaml
# (facebookresearch/MaskFormer configs/*/Base-*.yaml; COCO panoptic: its R50 config's test sizes)
OFFICIAL_BASE_RECIPES = {
    "maskformer_r50_ade20k": (16, (512, 512), 160000, 512, 2048),
    "maskformer_r50_ade20k_full": (16, (512, 512), 200000, 512, 2048),
    "maskformer_r50_cityscapes": (16, (512, 1024), 90000, 1024, 2048),
    "maskformer_r50_coco_stuff": (32, (640, 640), 60000, 640, 2560),
    "maskformer_r50_mapillary": (16, (1280, 1280), 300000, 2048, 2048),
    "maskformer_r50_coco_panoptic": (64, (800, 1333), 554400, 800, 1333),
}


@pytest.mark.parametrize("preset", sorted(OFFICIAL_BASE_RECIPES))
def test_dataset_recipes_equal_the_official_base_configs(preset):
    c = get_config(preset)
    assert (c.batch_size, c.crop_size, c.max_iter, c.test_short_side, c.test_max_size) == \
        OFFICIAL_BASE_RECIPES[preset]


@pytest.mark.parametrize("overrides, needle", [
    (dict(crop_size=(0, 0)), "crop_size"),
    (dict(crop_size=(-64, 64)), "crop_size"),
    (dict(test_short_side=-1), "test_short_side"),
    (dict(base_lr=float("nan")), "base_lr"),
    (dict(base_lr=float("inf")), "base_lr"),
    (dict(base_lr=-1e-4), "base_lr"),
    (dict(weight_decay=float("nan")), "weight_decay"),
    (dict(pixel_std=(0.0, 1.0, 1.0)), "pixel_std"),
    (dict(pixel_mean=(float("nan"), 0.0, 0.0)), "pixel_mean"),
    (dict(min_scale=2.0, max_scale=1.0), "min_scale"),
    (dict(min_scale=0.0), "min_scale"),
    (dict(tta_scales=()), "tta_scales"),
    (dict(tta_scales=(1.0, -0.5)), "tta_scales"),
    (dict(lr_schedule="multistep", lr_steps=(200, 100)), "lr_steps"),
    (dict(lr_steps=(100, 100)), "lr_steps"),
    (dict(no_object_weight=float("nan")), "no_object_weight"),
    (dict(mask_weight=-1.0), "mask_weight"),
    (dict(max_iter=0), "max_iter"),
    (dict(warmup_iters=-5), "warmup_iters"),
    (dict(object_mask_threshold=1.5), "object_mask_threshold"),
    (dict(drop_path_rate=1.0), "drop_path_rate"),
    (dict(clip_grad_norm=float("nan")), "clip_grad_norm"),
    (dict(size_divisibility=-32), "size_divisibility"),
    (dict(dataset="coco_panoptic", num_classes=150), "150 exceeds the 133 categories"),
])
def test_every_field_is_validated(overrides, needle):
    with pytest.raises(ValueError, match=needle):
        get_config("maskformer_r50_ade20k", **overrides)


def test_validation_accepts_every_preset_and_the_edges():
    for name in list_presets():
        get_config(name)
    cfg = get_config("maskformer_r50_coco_panoptic", size_divisibility=0, num_classes=133, warmup_iters=0,
                     no_object_weight=0.0, lr_steps=(10, 20), max_iter=2)  # steps beyond max_iter: harmless
    assert cfg.size_divisibility == 0 and cfg.lr_steps == (10, 20)
    assert get_config("maskformer_r50_ade20k", num_classes=24).num_classes == 24  # a subset of the classes
