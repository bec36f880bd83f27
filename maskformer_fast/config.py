"""MaskFormer configuration: one flat dataclass and the paper's presets.

Every field is flat so that ``KEY=VALUE`` overrides are easy::

    cfg = get_config("maskformer_r50_ade20k", num_decoder_layers=2, crop_size="384,384")

Preset names are ``maskformer_{backbone}_{dataset}`` for every backbone in ``BACKBONES`` and
dataset in ``DATASETS`` (``list_presets()``); the per-dataset numbers (classes, recipe) come from
the table of dataset facts, :mod:`maskformer_fast.dataset_specs`. Architecture and recipe values come from the
official configs (facebookresearch/MaskFormer ``configs/``, ``mask_former/config.py``) and the
paper (Cheng et al. 2021, Sec. 4 and Appendix).
"""
import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from .dataset_specs import DATASETS as DATASET_SPECS, PRESET_DATASETS, get_dataset_spec

__all__ = ["MaskFormerConfig", "get_config", "list_presets", "thing_classes", "BACKBONES", "DATASETS",
           "PRETRAINED_BACKBONES"]

BACKBONES = ("resnet50", "resnet101", "resnet101c", "swin_tiny", "swin_small", "swin_base", "swin_large")
DATASETS = PRESET_DATASETS  # the datasets with presets; every dataset's facts: dataset_specs.DATASETS
LR_SCHEDULES = ("poly", "multistep")
# MODEL.WEIGHTS of the official configs, by backbone (each backbone starts from the same file on
# every dataset): Detectron2 model-zoo URLs, or the names the official configs give the files
# users convert themselves (README "Train from ImageNet weights" says where each comes from)
PRETRAINED_BACKBONES = {
    "resnet50": "detectron2://ImageNetPretrained/torchvision/R-50.pkl",
    "resnet101": "R-101.pkl",
    "resnet101c": "detectron2://DeepLab/R-103.pkl",
    "swin_tiny": "swin_tiny_patch4_window7_224.pkl",
    "swin_small": "swin_small_patch4_window7_224.pkl",
    "swin_base": "swin_base_patch4_window12_384_22k.pkl",
    "swin_large": "swin_large_patch4_window12_384_22k.pkl",
}

# preset short name -> backbone
_PRESET_BACKBONES = {
    "r50": "resnet50", "r101": "resnet101", "r101c": "resnet101c",
    "swin_t": "swin_tiny", "swin_s": "swin_small", "swin_b": "swin_base", "swin_l": "swin_large",
}


@dataclass
class MaskFormerConfig:
    """All settings of one MaskFormer model and its training/test recipe.

    Architecture fields mirror the official ``MODEL.*`` keys; recipe fields mirror
    ``SOLVER.*``/``INPUT.*``/``TEST.*``. Sizes are (height, width).
    """
    name: str = "maskformer_r50_ade20k"
    backbone: str = "resnet50"
    dataset: str = "ade20k"
    num_classes: int = 150

    # transformer predictor (MODEL.MASK_FORMER)
    num_queries: int = 100
    hidden_dim: int = 256
    nheads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    num_decoder_layers: int = 6
    deep_supervision: bool = True
    # 1x1 projection of the transformer input even when its width already equals hidden_dim
    enforce_input_project: bool = False

    # pixel decoder (MODEL.SEM_SEG_HEAD)
    conv_dim: int = 256
    mask_dim: int = 256
    # 0: BasePixelDecoder; 6: the "+6Enc" TransformerEncoderPixelDecoder (COCO R50/R101)
    pixel_decoder_encoder_layers: int = 0

    # backbone
    frozen_bn: bool = True              # ResNet BatchNorm -> FrozenBatchNorm2d (official)
    drop_path_rate: float = 0.0         # Swin stochastic depth (0.3 in every official Swin config)
    window_size: int = 7                # Swin window (12 for the 384-pretrained Swin-B/L)
    pretrain_img_size: int = 224        # Swin pretraining resolution (384 for Swin-B/L)
    # the ImageNet weights the official config trains from (a record: train.py --backbone-weights
    # FILE loads them; PRETRAINED_BACKBONES)
    pretrained_backbone: str = PRETRAINED_BACKBONES["resnet50"]

    # loss (MODEL.MASK_FORMER)
    class_weight: float = 1.0
    mask_weight: float = 20.0
    dice_weight: float = 1.0
    no_object_weight: float = 0.1

    # input normalisation (MODEL.PIXEL_MEAN/STD, RGB, 0-255 scale)
    pixel_mean: Tuple[float, ...] = (123.675, 116.28, 103.53)
    pixel_std: Tuple[float, ...] = (58.395, 57.12, 57.375)
    # MODEL.MASK_FORMER.SIZE_DIVISIBILITY: the model pads a batch bottom/right up to a multiple
    # of this; 0 (the COCO panoptic configs: "COCO model should not pad image") pads a batch to
    # its largest image and nothing more
    size_divisibility: int = 32
    # training id of ignored label pixels: the dataset's (255; ADE20K-Full 65535, where 255 is a class)
    ignore_value: int = 255
    # classes named by the data itself (custom datasets: classes.json, a panoptic json's categories),
    # recorded so that checkpoints carry them; empty: the dataset's shipped names and colours
    class_names: Tuple[str, ...] = ()
    class_colors: Tuple[int, ...] = ()      # r, g, b per class, flat; empty: the dataset's (or generated)
    thing_class_ids: Tuple[int, ...] = ()   # panoptic things of data-defined classes

    # training recipe (SOLVER / INPUT)
    crop_size: Tuple[int, ...] = (512, 512)   # semantic mapper crop; the COCO DETR mapper crops 384-600 itself
    min_scale: float = 0.5                    # short-side jitter, as a multiple of crop_size[0]
    max_scale: float = 2.0
    batch_size: int = 16
    max_iter: int = 160000
    base_lr: float = 1e-4
    weight_decay: float = 1e-4
    backbone_lr_multiplier: float = 0.1
    warmup_iters: int = 0                     # linear warmup from 1e-6 x base_lr (Detectron2 WARMUP_FACTOR)
    lr_schedule: str = "poly"
    lr_steps: Tuple[int, ...] = ()
    poly_power: float = 0.9
    clip_grad_norm: float = 0.01              # full-model L2 clipping

    # test
    test_short_side: int = 512
    test_max_size: int = 2048
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    # official SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE or PANOPTIC_ON: mask logits are cropped and
    # resized to the output size before the sigmoid and the class-mask product (else after)
    sem_seg_postprocess_before_inference: bool = False
    tta_scales: Tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    tta_flip: bool = True

    def __post_init__(self):
        """Every field checked: ValueError naming the field and the value (see ``_validate``)."""
        _validate(self)

    @property
    def is_swin(self) -> bool:
        return self.backbone.startswith("swin")


# ----------------------------------------------------------------------------- validation

_POSITIVE_INTS = ("num_classes", "num_queries", "hidden_dim", "nheads", "dim_feedforward", "num_decoder_layers",
                  "conv_dim", "mask_dim", "window_size", "pretrain_img_size", "batch_size", "max_iter",
                  "test_short_side", "test_max_size")
_NON_NEGATIVE_INTS = ("pixel_decoder_encoder_layers", "size_divisibility", "warmup_iters", "ignore_value")
_POSITIVE_FLOATS = ("base_lr", "min_scale", "max_scale")
_NON_NEGATIVE_FLOATS = ("class_weight", "mask_weight", "dice_weight", "no_object_weight", "weight_decay",
                        "backbone_lr_multiplier", "poly_power", "clip_grad_norm")
_FRACTIONS = ("object_mask_threshold", "overlap_threshold")  # [0, 1]
_PROBABILITIES = ("dropout", "drop_path_rate")  # [0, 1)


def _fail(key: str, rule: str, value: Any) -> None:
    raise ValueError(f"MaskFormerConfig.{key} must be {rule}, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _validate_numbers(cfg: "MaskFormerConfig") -> None:
    for key in _POSITIVE_INTS + _NON_NEGATIVE_INTS:
        value, low = getattr(cfg, key), 1 if key in _POSITIVE_INTS else 0
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            _fail(key, f"an integer >= {low}", value)
    for key in _POSITIVE_FLOATS + _NON_NEGATIVE_FLOATS:
        value = getattr(cfg, key)
        if not _is_number(value) or value < 0 or (key in _POSITIVE_FLOATS and value == 0):
            _fail(key, "a finite number " + ("> 0" if key in _POSITIVE_FLOATS else ">= 0"), value)
    for key in _FRACTIONS + _PROBABILITIES:
        value = getattr(cfg, key)
        if not _is_number(value) or not 0 <= value <= 1 or (key in _PROBABILITIES and value == 1):
            _fail(key, "in [0, 1]" if key in _FRACTIONS else "in [0, 1)", value)
    if cfg.min_scale > cfg.max_scale:
        _fail("min_scale", f"<= max_scale ({cfg.max_scale})", cfg.min_scale)


def _validate_sequences(cfg: "MaskFormerConfig") -> None:
    if len(cfg.crop_size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                          for v in cfg.crop_size):
        _fail("crop_size", "(height, width), two integers >= 1", cfg.crop_size)
    if len(cfg.pixel_mean) != 3 or not all(_is_number(v) for v in cfg.pixel_mean):
        _fail("pixel_mean", "3 finite numbers (RGB)", cfg.pixel_mean)
    if len(cfg.pixel_std) != 3 or not all(_is_number(v) and v > 0 for v in cfg.pixel_std):
        _fail("pixel_std", "3 finite numbers > 0 (RGB)", cfg.pixel_std)
    if not cfg.tta_scales or not all(_is_number(v) and v > 0 for v in cfg.tta_scales):
        _fail("tta_scales", "one or more finite numbers > 0", cfg.tta_scales)
    steps = cfg.lr_steps
    if not all(isinstance(v, int) and v >= 1 for v in steps) or any(a >= b for a, b in zip(steps, steps[1:])):
        _fail("lr_steps", "strictly increasing iterations >= 1", steps)


def _validate(cfg: "MaskFormerConfig") -> None:
    for key, choices in (("backbone", BACKBONES), ("dataset", tuple(DATASET_SPECS)), ("lr_schedule", LR_SCHEDULES)):
        if getattr(cfg, key) not in choices:
            raise ValueError(f"MaskFormerConfig.{key} must be one of {choices}, got {getattr(cfg, key)!r}")
    _validate_numbers(cfg)
    _validate_sequences(cfg)
    if cfg.hidden_dim % cfg.nheads:
        raise ValueError(f"MaskFormerConfig.hidden_dim ({cfg.hidden_dim}) must be divisible by nheads ({cfg.nheads})")
    if cfg.conv_dim % 32:
        raise ValueError(f"MaskFormerConfig.conv_dim must be a multiple of 32 (GroupNorm(32)), got {cfg.conv_dim}")
    # a panoptic class id is a category of the dataset's json: ids past its count name nothing
    spec = get_dataset_spec(cfg.dataset)
    if spec.task == "panoptic" and spec.num_classes is not None and cfg.num_classes > spec.num_classes:
        raise ValueError(f"MaskFormerConfig.num_classes={cfg.num_classes} exceeds the {spec.num_classes} "
                         f"categories of dataset {cfg.dataset!r}")
    _validate_classes(cfg)


def _validate_classes(cfg: "MaskFormerConfig") -> None:
    if cfg.class_names and len(cfg.class_names) != cfg.num_classes:
        _fail("class_names", f"empty or {cfg.num_classes} names (num_classes)", f"{len(cfg.class_names)} names")
    if cfg.class_colors and (len(cfg.class_colors) != 3 * cfg.num_classes
                             or not all(isinstance(v, int) and 0 <= v <= 255 for v in cfg.class_colors)):
        _fail("class_colors", f"empty or {3 * cfg.num_classes} values in 0..255 (r, g, b per class)",
              f"{len(cfg.class_colors)} values")
    if not all(isinstance(v, int) and 0 <= v < cfg.num_classes for v in cfg.thing_class_ids):
        _fail("thing_class_ids", f"class ids in [0, {cfg.num_classes})", cfg.thing_class_ids)


_FIELD_TYPES = typing.get_type_hints(MaskFormerConfig)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _coerce_scalar(key: str, kind: type, value: Any) -> Any:
    """value as `kind` (int/float/bool/str), accepting the string forms KEY=VALUE gives."""
    bad = ValueError(f"config field {key!r} expects {kind.__name__}, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise bad
    if isinstance(value, bool):  # bool is an int subclass: refuse it for numbers and strings
        raise bad
    if kind is str:
        if isinstance(value, str):
            return value
        raise bad
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if kind is float:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    raise TypeError(f"unsupported config field type {kind} for {key!r}")


def _coerce(key: str, value: Any) -> Any:
    """Check/convert an override against the dataclass field type (tuples from lists or "a,b")."""
    kind = _FIELD_TYPES[key]
    if typing.get_origin(kind) is tuple:
        item_kind = typing.get_args(kind)[0]
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config field {key!r} expects a sequence of {item_kind.__name__}, got {value!r}")
        return tuple(_coerce_scalar(key, item_kind, v) for v in value)
    return _coerce_scalar(key, kind, value)


def _backbone_settings(backbone: str) -> Dict[str, Any]:
    if not backbone.startswith("swin"):
        return dict(frozen_bn=True, drop_path_rate=0.0, pretrained_backbone=PRETRAINED_BACKBONES[backbone])
    large_window = backbone in ("swin_base", "swin_large")  # the IN-21k 384 checkpoints
    return dict(drop_path_rate=0.3, window_size=12 if large_window else 7,
                pretrain_img_size=384 if large_window else 224, pretrained_backbone=PRETRAINED_BACKBONES[backbone])


def _recipe(backbone: str, dataset: str) -> Dict[str, Any]:
    """SOLVER/INPUT/TEST values of the official config for this backbone and dataset: the
    dataset's recipe (dataset_specs), then what the backbone changes in it."""
    swin = backbone.startswith("swin")
    spec = get_dataset_spec(dataset)
    r: Dict[str, Any] = dict(num_classes=spec.num_classes, dataset=dataset, ignore_value=spec.ignore_label,
                             **spec.recipe)
    if dataset == "ade20k" and backbone in ("swin_base", "swin_large"):
        r.update(crop_size=(640, 640), test_short_side=640, test_max_size=2560)
    if spec.task == "panoptic" and not swin:
        r.update(pixel_decoder_encoder_layers=6)  # "+6Enc" (COCO and ADE20K panoptic R50/R101)
    if dataset == "coco_panoptic" and swin:
        r.update(enforce_input_project=True)
    if swin:  # the Swin configs' SOLVER block: linear warmup from 1e-6 over 1500 iterations
        r.update(base_lr=6e-5, weight_decay=0.01, backbone_lr_multiplier=1.0, warmup_iters=1500)
    return r


def _build_presets() -> Dict[str, Dict[str, Any]]:
    presets = {}
    for short, backbone in _PRESET_BACKBONES.items():
        for dataset in DATASETS:
            name = f"maskformer_{short}_{dataset}"
            presets[name] = dict(name=name, backbone=backbone, **_backbone_settings(backbone),
                                 **_recipe(backbone, dataset))
    return presets


_PRESETS = _build_presets()


def thing_classes(dataset: str) -> Tuple[int, ...]:
    """Contiguous ids of the thing classes of a panoptic dataset (() for the semantic ones)."""
    return get_dataset_spec(dataset).thing_classes


def list_presets() -> List[str]:
    """Names accepted by get_config."""
    return sorted(_PRESETS)


def get_config(name: str = "maskformer_r50_ade20k", **overrides: Any) -> MaskFormerConfig:
    """The preset `name` with `overrides` applied (values type-checked against the fields).

    Raises ValueError naming an unknown preset, an unknown field or a value of the wrong type.
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown MaskFormer preset {name!r}; known presets: {', '.join(list_presets())}")
    values = dict(_PRESETS[name])
    known = {f.name for f in dataclasses.fields(MaskFormerConfig)}
    for key, value in overrides.items():
        if key not in known:
            raise ValueError(f"unknown MaskFormerConfig field {key!r} (preset {name!r})")
        values[key] = _coerce(key, value)
    return MaskFormerConfig(**values)
