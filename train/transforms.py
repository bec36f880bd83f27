"""Training and test mappers: the official MaskFormer augmentations without Detectron2.

* :class:`SemanticTrainMapper` follows ``MaskFormerSemanticDatasetMapper`` (ADE20K, COCO-Stuff,
  Cityscapes): resize the short side to a random choice in [min_scale, max_scale] x the test size,
  random crop with the category-area constraint, SSD colour jitter, horizontal flip, pad
  the image with 128 and the label with 255 up to the crop size; then one binary mask per
  class present (ignore excluded). Panoptic samples (ADE20K panoptic) get the same geometry,
  as ``MaskFormerPanopticDatasetMapper``: segment ids resized by nearest neighbour and padded
  with 0 (void), one mask per non-crowd segment.
* :class:`PanopticTrainMapper` follows ``DETRPanopticDatasetMapper`` (COCO panoptic): flip,
  then either a short-side resize or (half the time) a 400/500/600 resize + random crop
  384..600 before it; one mask per non-crowd segment.

Every random draw comes from the ``np.random.Generator`` passed in, so a sample's
augmentation depends only on the seed the loader derives for it (see ``train.py``).
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from maskformer_fast.preprocessing import normalize, resize_image, resized_shape  # shared with predict

__all__ = ["resized_shape", "resize_image", "resize_label", "ColorAugSSD", "SemanticTrainMapper",
           "PanopticTrainMapper", "collate"]


def resize_label(label: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """[H,W] integer map -> nearest-neighbour resize to ``shape``."""
    if label.shape[:2] == tuple(shape):
        return label
    resized = Image.fromarray(label.astype(np.int32), mode="I").resize((shape[1], shape[0]), Image.NEAREST)
    return np.asarray(resized).astype(label.dtype)


class ColorAugSSD:
    """SSD-style photometric jitter (PointRend's ColorAugSSDTransform), each part with p = 0.5.

    Brightness +-32, contrast and saturation x[0.5, 1.5], hue +-18 degrees-of-180 (applied in
    PIL's 0..255 hue scale). Contrast goes before or after saturation/hue at random.
    """

    def __init__(self, brightness_delta: float = 32, contrast: Tuple[float, float] = (0.5, 1.5),
                 saturation: Tuple[float, float] = (0.5, 1.5), hue_delta: int = 18):
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast
        self.saturation_range = saturation
        self.hue_delta = hue_delta

    @staticmethod
    def _affine(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def _saturation_hue(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        do_sat, sat = rng.integers(2), rng.uniform(*self.saturation_range)
        do_hue, hue = rng.integers(2), int(rng.integers(-self.hue_delta, self.hue_delta + 1))
        if not (do_sat or do_hue):
            return image
        hsv = np.array(Image.fromarray(image).convert("HSV"))
        if do_sat:
            hsv[..., 1] = self._affine(hsv[..., 1], alpha=sat)
        if do_hue:
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + round(hue * 256 / 180)) % 256
        return np.asarray(Image.fromarray(hsv, mode="HSV").convert("RGB"))

    def _contrast(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        do, alpha = rng.integers(2), rng.uniform(*self.contrast_range)
        return self._affine(image, alpha=alpha) if do else image

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        do, beta = rng.integers(2), rng.uniform(-self.brightness_delta, self.brightness_delta)
        if do:
            image = self._affine(image, beta=beta)
        if rng.integers(2):
            return self._saturation_hue(self._contrast(image, rng), rng)
        return self._contrast(self._saturation_hue(image, rng), rng)


def _random_crop_box(height: int, width: int, crop_h: int, crop_w: int,
                     rng: np.random.Generator) -> Tuple[int, int, int, int]:
    crop_h, crop_w = min(crop_h, height), min(crop_w, width)
    y0 = int(rng.integers(0, height - crop_h + 1))
    x0 = int(rng.integers(0, width - crop_w + 1))
    return y0, x0, crop_h, crop_w


def category_area_crop(label: np.ndarray, crop_size: Tuple[int, int], max_area: float, ignore_label: int,
                       rng: np.random.Generator) -> Tuple[int, int, int, int]:
    """Detectron2's RandomCrop_CategoryAreaConstraint: up to 10 tries to find a crop where no
    single class covers more than ``max_area`` of the labelled pixels (1.0 = plain crop)."""
    height, width = label.shape
    if max_area >= 1.0:
        return _random_crop_box(height, width, *crop_size, rng)
    for _ in range(10):
        box = _random_crop_box(height, width, *crop_size, rng)
        y0, x0, h, w = box
        labels, counts = np.unique(label[y0:y0 + h, x0:x0 + w], return_counts=True)
        counts = counts[labels != ignore_label]
        if len(counts) > 1 and counts.max() < counts.sum() * max_area:
            break
    return box


def semantic_targets(label: np.ndarray, ignore_label: int) -> Dict[str, torch.Tensor]:
    """One binary mask per class present in ``label`` (ignore excluded)."""
    label_t = torch.from_numpy(np.ascontiguousarray(label)).long()
    classes = torch.unique(label_t)
    classes = classes[classes != ignore_label]
    masks = label_t[None] == classes[:, None, None]
    return {"labels": classes, "masks": masks}


def panoptic_targets(pan_seg: np.ndarray, segments_info: Sequence[Dict]) -> Dict[str, torch.Tensor]:
    """One binary mask per non-crowd segment (crowd regions are no target, as the official mapper)."""
    ids = torch.from_numpy(np.ascontiguousarray(pan_seg)).long()
    kept = [s for s in segments_info if not s.get("iscrowd", 0)]
    labels = torch.tensor([s["label"] for s in kept], dtype=torch.int64)
    seg_ids = torch.tensor([s["id"] for s in kept], dtype=torch.int64)
    return {"labels": labels, "masks": ids[None] == seg_ids[:, None, None]}


def _segment_classes(pan_seg: np.ndarray, segments_info: Sequence[Dict], ignore_label: int) -> np.ndarray:
    """Segment ids -> class labels (void and unlisted ids -> ignore_label)."""
    classes = np.full(pan_seg.shape, ignore_label, dtype=np.int64)
    for segment in segments_info:
        classes[pan_seg == segment["id"]] = segment["label"]
    return classes


def _to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class SemanticTrainMapper:
    """ADE20K-style training augmentation (see the module docstring).

    Args:
        crop_size: (h, w) of the random crop; the output is padded up to it.
        short_sides: short-side lengths the resize chooses from.
        max_size: cap on the long side after resizing.
        single_category_max_area: category-area constraint of the crop (1.0 = off).
        color_aug: apply SSD colour jitter.
        ignore_label: label value of ignored pixels (also the label padding).
    """

    def __init__(self, crop_size: Tuple[int, int], short_sides: Sequence[int], max_size: int,
                 single_category_max_area: float = 1.0, color_aug: bool = True, ignore_label: int = 255):
        self.crop_size = tuple(crop_size)
        self.short_sides = list(short_sides)
        self.max_size = max_size
        self.max_area = single_category_max_area
        self.color_aug = ColorAugSSD() if color_aug else None
        self.ignore_label = ignore_label

    @classmethod
    def from_config(cls, cfg) -> "SemanticTrainMapper":
        """Short sides int(0.1 k x S) for k in [10 min_scale, 10 max_scale] and long side <= 4 S,
        with S = test_short_side: the official lists (ADE20K 256..1024 / 2048 for S = 512,
        COCO-Stuff 320..1280 / 2560 for 640, Cityscapes 512..2048 / 4096 for 1024)."""
        base = cfg.test_short_side
        scales = range(int(round(cfg.min_scale * 10)), int(round(cfg.max_scale * 10)) + 1)
        return cls(cfg.crop_size, [int(k * 0.1 * base) for k in scales], 4 * base, ignore_label=cfg.ignore_value)

    def __call__(self, sample: Dict, rng: np.random.Generator) -> Dict:
        """A semantic sample (``sem_seg``) or a panoptic one (``pan_seg`` + ``segments_info``)."""
        panoptic = "pan_seg" in sample
        image, label = sample["image"], sample["pan_seg" if panoptic else "sem_seg"]
        shape = resized_shape(*image.shape[:2], float(rng.choice(self.short_sides)), self.max_size)
        image, label = resize_image(image, shape), resize_label(label, shape)
        if panoptic and self.max_area < 1.0:  # the area constraint is on classes, not segments
            classes = _segment_classes(label, sample["segments_info"], self.ignore_label)
            y0, x0, h, w = category_area_crop(classes, self.crop_size, self.max_area, self.ignore_label, rng)
        else:
            y0, x0, h, w = category_area_crop(label, self.crop_size, self.max_area, self.ignore_label, rng)
        image, label = image[y0:y0 + h, x0:x0 + w], label[y0:y0 + h, x0:x0 + w]
        if self.color_aug is not None:
            image = self.color_aug(image, rng)
        if rng.uniform() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        pad_h, pad_w = self.crop_size[0] - image.shape[0], self.crop_size[1] - image.shape[1]
        image = np.pad(image, ((0, max(pad_h, 0)), (0, max(pad_w, 0)), (0, 0)), constant_values=128)
        label = np.pad(label, ((0, max(pad_h, 0)), (0, max(pad_w, 0))), constant_values=0 if panoptic else self.ignore_label)
        targets = (panoptic_targets(label, sample["segments_info"]) if panoptic
                   else semantic_targets(label, self.ignore_label))
        return {"image": _to_chw(image), **targets}


class PanopticTrainMapper:
    """DETR-style COCO panoptic training augmentation (see the module docstring).

    Args:
        short_sides: choices of the final short-side resize (COCO: 480, 512, ..., 800).
        max_size: cap on the long side (COCO: 1333).
        crop_short_sides: choices of the resize before the crop (COCO: 400, 500, 600).
        crop_range: (min, max) side of the random crop (COCO: 384, 600).
    """

    def __init__(self, short_sides: Sequence[int], max_size: int, crop_short_sides: Sequence[int],
                 crop_range: Tuple[int, int]):
        self.short_sides = list(short_sides)
        self.max_size = max_size
        self.crop_short_sides = list(crop_short_sides)
        self.crop_range = crop_range

    @classmethod
    def from_config(cls, cfg) -> "PanopticTrainMapper":
        """The COCO sizes, scaled by test_short_side / 800 (so they are exact for COCO)."""
        s = cfg.test_short_side / 800.0
        return cls([round(v * s) for v in range(480, 801, 32)], round(cfg.test_max_size),
                   [round(v * s) for v in (400, 500, 600)], (round(384 * s), round(600 * s)))

    def __call__(self, sample: Dict, rng: np.random.Generator) -> Dict:
        image, ids = sample["image"], sample["pan_seg"]
        if rng.uniform() < 0.5:
            image, ids = image[:, ::-1], ids[:, ::-1]
        if rng.uniform() <= 0.5:  # the official mapper crops when rand() <= 0.5
            shape = resized_shape(*image.shape[:2], float(rng.choice(self.crop_short_sides)), float("inf"))
            image, ids = resize_image(np.ascontiguousarray(image), shape), resize_label(ids, shape)
            height, width = image.shape[:2]
            lo, hi = self.crop_range
            crop_h = int(rng.integers(min(height, lo), min(height, hi) + 1))
            crop_w = int(rng.integers(min(width, lo), min(width, hi) + 1))
            y0, x0, h, w = _random_crop_box(height, width, crop_h, crop_w, rng)
            image, ids = image[y0:y0 + h, x0:x0 + w], ids[y0:y0 + h, x0:x0 + w]
        shape = resized_shape(*image.shape[:2], float(rng.choice(self.short_sides)), self.max_size)
        image, ids = resize_image(np.ascontiguousarray(image), shape), resize_label(ids, shape)
        return {"image": _to_chw(image), **panoptic_targets(ids, sample["segments_info"])}


def collate(batch: List[Dict], pixel_mean: Sequence[float], pixel_std: Sequence[float],
            ) -> Tuple[torch.Tensor, List[Dict[str, torch.Tensor]], List[Tuple[int, int]]]:
    """Normalise and pad a list of mapped samples into a batch.

    Images are normalised then zero-padded to the largest height/width (Detectron2's
    ImageList); target masks are padded with False to the same size.

    Returns:
        images [B,3,H,W] float32, targets (labels [K] int64, masks [K,H,W] bool), image sizes.
    """
    sizes = [tuple(s["image"].shape[-2:]) for s in batch]
    height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
    images = torch.zeros(len(batch), 3, height, width)
    targets = []
    for i, s in enumerate(batch):
        h, w = sizes[i]
        images[i, :, :h, :w] = normalize(s["image"], pixel_mean, pixel_std)
        if "masks" in s:
            masks = torch.zeros(len(s["masks"]), height, width, dtype=torch.bool)
            masks[:, :h, :w] = s["masks"]
            targets.append({"labels": s["labels"], "masks": masks})
    return images, targets, sizes
