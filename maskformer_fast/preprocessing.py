"""The one image pipeline of predict, training and evaluation: reading, resizing, normalising.

Detectron2's conventions, without Detectron2:

* :func:`read_image` is Detectron2's ``read_image(path, format="RGB")``: EXIF orientation
  applied, palette / greyscale / CMYK / alpha images converted to RGB (alpha dropped). Unlike
  PIL's ``convert("RGB")``, which clips 16-bit values to 255 (a 16-bit PNG turns white), 16-bit
  images are scaled to 8 bits.
* :func:`resized_shape` / :func:`resize_image` are ``ResizeShortestEdge`` (PIL bilinear on uint8).
* :func:`normalize` is the model's ``(x - pixel_mean) / pixel_std`` on 0-255 RGB.
* :func:`id_to_rgb` / :func:`rgb_to_id` are the COCO panoptic PNG encoding (panopticapi's);
  :func:`save_label_map` writes a semantic label map (predict and evaluation alike).
"""
import os
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

__all__ = ["read_image", "open_image", "apply_exif_orientation", "resized_shape", "resize_image", "normalize", "preprocess",
           "id_to_rgb", "rgb_to_id", "save_label_map"]

_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE,
              6: Image.ROTATE_270, 7: Image.TRANSVERSE, 8: Image.ROTATE_90}
# modes that hold more than 8 bits per pixel; PIL's convert("RGB") would clip them at 255
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Detectron2's ``_apply_exif_orientation``: the image as the camera's orientation tag says
    (an unreadable EXIF block leaves it as stored)."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # broken EXIF blocks raise all sorts of errors (detectron2 #1885)
        return image
    method = _TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


def _to_rgb(image: Image.Image, path: str) -> np.ndarray:
    if image.mode in _WIDE_MODES:
        values = np.asarray(image).astype(np.float64)
        # "I" holds 16-bit PNGs (PIL's decoder) or 32-bit TIFFs: scale by the format's range
        peak = 65535.0 if image.mode != "I" or values.max(initial=0) <= 65535 else 2.0 ** 31 - 1
        if values.min(initial=0) < 0:
            raise ValueError(f"image {path} has negative {image.mode} pixel values; expected an unsigned image")
        grey = np.round(values * (255.0 / peak)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode == "F":
        raise ValueError(f"image {path} holds floating-point pixels (PIL mode F), whose range is unknown; "
                         f"convert it to an 8- or 16-bit image")
    return np.asarray(image.convert("RGB"))


def open_image(path: str, what: str = "image") -> Image.Image:
    """The decoded PIL image of ``path`` with its EXIF orientation applied; FileNotFoundError /
    ValueError name the file (``what`` says which kind, e.g. "annotation")."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return apply_exif_orientation(img)
    except (OSError, SyntaxError) as e:  # UnidentifiedImageError and truncated files are OSErrors
        raise ValueError(f"cannot decode {what} {path}: {e}") from None


def read_image(path: str) -> np.ndarray:
    """[H, W, 3] uint8 RGB of an image file (see the module docstring)."""
    return _to_rgb(open_image(path), path)


def resized_shape(height: int, width: int, short: float, max_size: float) -> Tuple[int, int]:
    """Detectron2's ResizeShortestEdge output shape: short side -> ``short``, long side <= ``max_size``."""
    scale = short / min(height, width)
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    # at least one pixel: a strip like 3 x 20000 would round to 0 rows (Detectron2 then fails)
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def resize_image(image: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """[H,W,3] uint8 -> bilinear resize to ``shape`` (h, w), as Detectron2 does with PIL."""
    if image.shape[:2] == tuple(shape):
        return image
    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.BILINEAR))


def normalize(image: torch.Tensor, pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> torch.Tensor:
    """uint8 (or float 0-255) RGB [..., 3, H, W] -> float32 ``(x - pixel_mean) / pixel_std``."""
    mean = torch.tensor(pixel_mean, dtype=torch.float32, device=image.device).view(3, 1, 1)
    std = torch.tensor(pixel_std, dtype=torch.float32, device=image.device).view(3, 1, 1)
    return (image.float() - mean) / std


def preprocess(image: np.ndarray, pixel_mean: Sequence[float], pixel_std: Sequence[float], short_side: int,
               max_size: int) -> torch.Tensor:
    """[H,W,3] uint8 RGB -> resized (test-time ResizeShortestEdge), normalised float32 [3, h, w]."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}")
    resized = resize_image(image, resized_shape(*image.shape[:2], float(short_side), max_size))
    return normalize(torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))), pixel_mean, pixel_std)


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids [H,W] -> the COCO panoptic RGB encoding (id = R + 256 G + 256^2 B)."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 256 ** 2 % 256], axis=-1).astype(np.uint8)


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colours [H,W,3] -> segment ids [H,W] (id = R + 256 G + 256^2 B)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def save_label_map(labels: np.ndarray, num_classes: int, path: str, palette: Optional[Sequence[int]] = None) -> None:
    """A semantic label map [H, W] as a PNG: uint8, or uint16 when there are more than 255 classes.

    ``palette`` (768 RGB values) makes the uint8 map a mode "P" PNG: the pixel values stay the
    class ids (``np.asarray(Image.open(path))`` reads them back), viewers show the colours. A
    uint16 map cannot carry one (mode "P" has 256 entries) and is written without it."""
    image = Image.fromarray(labels.astype(np.uint8 if num_classes <= 255 else np.uint16))
    if palette is not None and num_classes <= 255:
        image.putpalette(list(palette))  # turns the "L" image into mode "P", the values unchanged
    image.save(path)
