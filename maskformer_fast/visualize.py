"""Class names, palettes and overlay drawings of semantic, panoptic and instance predictions.

    from maskformer_fast.visualize import dataset_metadata, draw_semantic_overlay
    meta = dataset_metadata("ade20k")              # 150 names and the official colours
    overlay = draw_semantic_overlay(image, labels, meta)   # PIL RGB image, the input's size

The names and colours ship as package data (``maskformer_fast/data/*.json``, one file per
dataset, the list position being the contiguous class id this project trains with). They are
copied from the official sources named in each file's ``source`` and ``palette_source``; where a
dataset has no official colour for a class, the file says so and uses :func:`generated_palette`.

Overlays blend the image with the class colours (``ALPHA``), outline every segment in its own
colour, and list the classes present in a legend at the top-left corner (swatch + first synonym
of the name). Panoptic things and instance masks of one class get distinct shades of the class
colour (:func:`instance_shades`); instance masks are labelled "NAME SCORE".
"""
import colorsys
import functools
import importlib.resources
import itertools
import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .dataset_specs import DATASETS

__all__ = ["DatasetMetadata", "dataset_metadata", "config_metadata", "read_class_names", "generated_palette",
           "instance_shades", "label_palette", "draw_semantic_overlay", "draw_panoptic_overlay", "draw_instance_overlay",
           "draw_legend", "overlay_font", "segment_edges", "DATA_FILES"]

Color = Tuple[int, int, int]

# dataset -> package data file (dataset_specs' class_file; ADE20K panoptic uses the 150 classes of ADE20K)
DATA_FILES = {name: spec.class_file for name, spec in DATASETS.items() if spec.class_file}
ALPHA = 0.5  # weight of the class colour; applied as an integer weight out of 256 (exact, no float ties)
LEGEND_BACKGROUND = (32, 32, 32)
LEGEND_TEXT = (255, 255, 255)
LEGEND_PAD = 3
SHADE_STEP = 40  # per-channel offset of the instance shades


@dataclass(frozen=True)
class DatasetMetadata:
    """Per contiguous class id: its name, RGB colour and whether it is a thing."""

    names: Tuple[str, ...]
    colors: Tuple[Color, ...]
    isthing: Tuple[bool, ...]
    palette_source: str

    @property
    def num_classes(self) -> int:
        return len(self.names)


# --------------------------------------------------------------------------- metadata


def generated_palette(count: int) -> List[Color]:
    """Colours for classes without official ones: golden-ratio hue steps at three saturation/value
    levels, so that neighbouring ids differ (deterministic: plain float arithmetic)."""
    levels = ((0.85, 0.95), (0.6, 0.8), (0.95, 0.65))
    colors = []
    for i in range(count):
        saturation, value = levels[i % 3]
        rgb = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, saturation, value)
        colors.append(tuple(int(c * 255 + 0.5) for c in rgb))
    return colors


@functools.lru_cache(maxsize=None)
def _shipped(filename: str) -> Dict:
    with importlib.resources.files("maskformer_fast").joinpath("data", filename).open("r", encoding="utf-8") as f:
        return json.load(f)


def dataset_metadata(dataset: Optional[str], num_classes: Optional[int] = None,
                     class_names: Optional[Sequence[str]] = None, class_colors: Optional[Sequence[Color]] = None,
                     thing_ids: Optional[Sequence[int]] = None) -> DatasetMetadata:
    """Names, colours and thing flags of ``num_classes`` classes (default: the dataset's count).

    ``class_names`` (a custom dataset) replaces the names and must have ``num_classes`` entries;
    so do ``class_colors`` the colours, and ``thing_ids`` (contiguous ids) the thing flags.
    Classes beyond the shipped ones (or of an unknown/None dataset) are named "class N" and get
    :func:`generated_palette` colours; a model with fewer classes keeps the first ones, as
    :func:`maskformer_fast.config.thing_classes` users do.
    """
    shipped = _shipped(DATA_FILES[dataset]) if dataset in DATA_FILES else {"categories": []}
    categories = shipped["categories"]
    count = num_classes if num_classes is not None else len(class_names or categories)
    if count < 1:
        raise ValueError(f"no classes: dataset {dataset!r} has no shipped names and no num_classes was given")
    if class_names is not None and len(class_names) != count:
        raise ValueError(f"{len(class_names)} class names given for {count} classes")
    if class_colors is not None and len(class_colors) != count:
        raise ValueError(f"{len(class_colors)} class colours given for {count} classes")
    extra = generated_palette(count)
    names = tuple(class_names) if class_names is not None else tuple(
        categories[i]["name"] if i < len(categories) else f"class {i}" for i in range(count))
    colors = tuple(tuple(categories[i]["color"]) if i < len(categories) else extra[i] for i in range(count))
    isthing = tuple(i < len(categories) and bool(categories[i]["isthing"]) for i in range(count))
    source = shipped.get("palette_source", "generated_palette (no shipped metadata)")
    if class_colors is not None:
        colors, source = tuple(tuple(int(v) for v in c) for c in class_colors), "the dataset's own colours"
    if thing_ids is not None:
        things = set(thing_ids)
        isthing = tuple(i in things for i in range(count))
    return DatasetMetadata(names, colors, isthing, source)


def config_metadata(cfg, class_names: Optional[Sequence[str]] = None) -> DatasetMetadata:
    """The classes of a model config: ``class_names`` (e.g. --class-names), else the names, colours
    and things its data recorded (``cfg.class_names``...), else its dataset's shipped ones."""
    colors = [tuple(cfg.class_colors[i:i + 3]) for i in range(0, len(cfg.class_colors), 3)]
    return dataset_metadata(cfg.dataset, cfg.num_classes, class_names or cfg.class_names or None, colors or None,
                            cfg.thing_class_ids or None)


def read_class_names(path: str) -> List[str]:
    """Class names of a custom dataset: a JSON list of strings, or a text file with one name a line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read class names file {path}: {getattr(e, 'strerror', None) or e}") from None
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except ValueError as e:
            raise ValueError(f"class names file {path} is not a valid JSON list: {e}") from None
        if not all(isinstance(n, str) for n in names):
            raise ValueError(f"class names file {path} must list strings only")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError(f"class names file {path} lists no names")
    return names


def label_palette(metadata: DatasetMetadata) -> List[int]:
    """The 768 entries of a mode "P" PNG palette: class id i -> its colour (unused ids black)."""
    flat = [v for color in metadata.colors[:256] for v in color]
    return flat + [0] * (768 - len(flat))


def instance_shades(color: Color, count: int) -> List[Color]:
    """``count`` shades of ``color`` for the instances of one class: the colour itself first, then
    offsets of +-SHADE_STEP and +-2 SHADE_STEP per channel (uniform brightness steps first), clipped
    and deduplicated. Deterministic; shades repeat only after every distinct offset is used."""
    steps = (0, SHADE_STEP, -SHADE_STEP, 2 * SHADE_STEP, -2 * SHADE_STEP)
    offsets = sorted(itertools.product(steps, repeat=3), key=lambda o: (max(map(abs, o)), o.count(0), len(set(o)), o))
    shades = list(dict.fromkeys(tuple(int(np.clip(c + d, 0, 255)) for c, d in zip(color, o)) for o in offsets))
    return [shades[i % len(shades)] for i in range(count)]


# --------------------------------------------------------------------------- drawing primitives


@functools.lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def overlay_font(height: int, width: int) -> ImageFont.ImageFont:
    """PIL's default font, scaled with the image (10 px at 400 px short side and below)."""
    return _font(max(10, round(min(height, width) / 40)))


def _line_height(font: ImageFont.ImageFont) -> int:
    return font.getbbox("Hg")[3]


def segment_edges(segment_map: np.ndarray, width: int = 1) -> np.ndarray:
    """Bool [H, W]: pixels within ``width`` (4-neighbour steps) of a pixel of another segment."""
    edges = np.zeros(segment_map.shape, bool)
    for d in range(1, width + 1):
        rows = segment_map[d:] != segment_map[:-d]
        edges[d:] |= rows
        edges[:-d] |= rows
        cols = segment_map[:, d:] != segment_map[:, :-d]
        edges[:, d:] |= cols
        edges[:, :-d] |= cols
    return edges


def _blend_segments(image: np.ndarray, segment_map: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """``image`` blended with ``colors[segment]`` where segment >= 0, segment edges in full colour."""
    weight = int(ALPHA * 256)
    covered = segment_map >= 0
    color = colors[segment_map[covered]].astype(np.uint32)
    out = image.copy()
    out[covered] = ((image[covered].astype(np.uint32) * (256 - weight) + color * weight + 128) >> 8).astype(np.uint8)
    edges = segment_edges(segment_map, max(1, min(segment_map.shape) // 300)) & covered
    out[edges] = colors[segment_map[edges]]
    return out


def _short_name(name: str) -> str:
    """The first synonym: ADE20K names such as "road, route" list several."""
    return name.split(",")[0].strip() or name


def draw_legend(canvas: Image.Image, entries: Sequence[Tuple[str, Optional[Color]]],
                font: ImageFont.ImageFont) -> Tuple[int, int, int, int]:
    """Rows of swatch + text in a dark box at the top-left corner of ``canvas`` (in place); rows
    that do not fit are summarised as "+N more". Returns the box (x0, y0, x1, y1), inclusive."""
    line = _line_height(font)
    max_rows = max(1, (canvas.height - LEGEND_PAD) // (line + LEGEND_PAD))
    rows = list(entries)
    if len(rows) > max_rows:
        rows = rows[:max_rows - 1] + [(f"+{len(rows) - max_rows + 1} more", None)]
    text_x = 2 * LEGEND_PAD + line
    width = text_x + max(font.getbbox(text)[2] for text, _ in rows) + LEGEND_PAD
    box = (0, 0, width - 1, LEGEND_PAD + len(rows) * (line + LEGEND_PAD) - 1)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle(box, fill=LEGEND_BACKGROUND)
    for i, (text, color) in enumerate(rows):
        y = LEGEND_PAD + i * (line + LEGEND_PAD)
        if color is not None:
            draw.rectangle((LEGEND_PAD, y, LEGEND_PAD + line - 1, y + line - 1), fill=tuple(color))
        draw.text((text_x, y), text, fill=LEGEND_TEXT, font=font)
    return box


def _legend_entries(classes: Sequence[int], metadata: DatasetMetadata) -> List[Tuple[str, Color]]:
    return [(_short_name(metadata.names[c]), metadata.colors[c]) for c in classes]


def _by_area(segment_classes: np.ndarray, segment_map: np.ndarray) -> List[int]:
    """Classes of the pixels with segment >= 0, largest total area first (ties: smaller id first)."""
    covered = segment_map[segment_map >= 0]
    areas = np.bincount(segment_classes[covered], minlength=int(segment_classes.max(initial=0)) + 1)
    present = np.flatnonzero(areas)
    return [int(c) for c in present[np.argsort(-areas[present], kind="stable")]]


def _check_image(image: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != tuple(shape):
        raise ValueError(f"overlay image must be uint8 [H, W, 3] of the prediction's size {tuple(shape)}, "
                         f"got {image.dtype} {image.shape}")
    return image


# --------------------------------------------------------------------------- overlays


def draw_semantic_overlay(image: np.ndarray, labels: np.ndarray, metadata: DatasetMetadata) -> Image.Image:
    """[H, W] class ids over the [H, W, 3] uint8 image: colours, outlines, legend."""
    labels = np.asarray(labels).astype(np.int64)
    image = _check_image(image, labels.shape)
    if labels.size and (labels.min() < 0 or labels.max() >= metadata.num_classes):
        raise ValueError(f"label map holds ids outside 0..{metadata.num_classes - 1}")
    colors = np.asarray(metadata.colors, np.uint8)
    canvas = Image.fromarray(_blend_segments(image, labels, colors))
    classes = _by_area(np.arange(metadata.num_classes), labels)
    if classes:
        draw_legend(canvas, _legend_entries(classes, metadata), overlay_font(*labels.shape))
    return canvas


def _thing_shades(classes: Sequence[int], isthing: Sequence[bool], metadata: DatasetMetadata) -> np.ndarray:
    """[S, 3] colour per segment: stuff the class colour, the k-th thing of a class its k-th shade."""
    counts: Dict[int, int] = {}
    colors = []
    for c, thing in zip(classes, isthing):
        k = counts.get(c, 0) if thing else 0
        if thing:
            counts[c] = k + 1
        colors.append(instance_shades(metadata.colors[c], k + 1)[k])
    return np.asarray(colors, np.uint8).reshape(-1, 3)


def draw_panoptic_overlay(image: np.ndarray, ids: np.ndarray, segments_info: Sequence[Dict],
                          metadata: DatasetMetadata) -> Image.Image:
    """Segment ids [H, W] (0 = void, left as the image) with their ``segments_info`` (``id``,
    ``category_id`` contiguous, ``isthing``): stuff in class colours, things in shades."""
    ids = np.asarray(ids).astype(np.int64)
    image = _check_image(image, ids.shape)
    index = np.full(max([int(ids.max(initial=0))] + [s["id"] for s in segments_info]) + 1, -1, np.int64)
    for i, s in enumerate(segments_info):
        index[s["id"]] = i
    segment_map = index[ids]
    classes = np.asarray([s["category_id"] for s in segments_info], np.int64)
    colors = _thing_shades(classes, [bool(s["isthing"]) for s in segments_info], metadata)
    canvas = Image.fromarray(_blend_segments(image, segment_map, colors))
    present = _by_area(classes, segment_map) if len(classes) else []
    if present:
        draw_legend(canvas, _legend_entries(present, metadata), overlay_font(*ids.shape))
    return canvas


def _draw_instance_labels(canvas: Image.Image, masks: np.ndarray, texts: Sequence[str], colors: np.ndarray,
                          font: ImageFont.ImageFont) -> None:
    """Each text on a box of its mask's colour at the mask's top-left corner (kept inside the image);
    the first (best) label is drawn last, on top."""
    draw = ImageDraw.Draw(canvas)
    for mask, text, color in reversed(list(zip(masks, texts, colors))):
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            continue
        right, bottom = font.getbbox(text)[2:]
        x = max(0, min(int(xs.min()), canvas.width - right))
        y = max(0, min(int(ys.min()), canvas.height - bottom))
        dark = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] < 128
        draw.rectangle((x, y, x + right - 1, y + bottom - 1), fill=tuple(int(v) for v in color))
        draw.text((x, y), text, fill=(255, 255, 255) if dark else (0, 0, 0), font=font)


def draw_instance_overlay(image: np.ndarray, masks: np.ndarray, scores: Sequence[float], labels: Sequence[int],
                          metadata: DatasetMetadata, score_threshold: float = 0.5,
                          top_k: int = 100) -> Image.Image:
    """Masks [K, H, W] bool with scores and class labels: the ``top_k`` best with score >=
    ``score_threshold``, in class shades (better masks on top), each labelled "NAME SCORE"."""
    masks = np.asarray(masks).astype(bool)
    image = _check_image(image, masks.shape[1:])
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.int64)
    keep = np.argsort(-scores, kind="stable")
    keep = keep[scores[keep] >= score_threshold][:top_k]
    masks, scores, labels = masks[keep], scores[keep], labels[keep]
    colors = _thing_shades(labels, [True] * len(labels), metadata)
    segment_map = np.full(masks.shape[1:], -1, np.int64)
    for i in range(len(keep) - 1, -1, -1):  # worst first: the best mask ends on top
        segment_map[masks[i]] = i
    canvas = Image.fromarray(_blend_segments(image, segment_map, colors))
    font = overlay_font(*masks.shape[1:])
    texts = [f"{_short_name(metadata.names[c])} {s:.2f}" for c, s in zip(labels, scores)]
    _draw_instance_labels(canvas, masks, texts, colors, font)
    if len(keep):
        draw_legend(canvas, _legend_entries(list(dict.fromkeys(labels.tolist())), metadata), font)
    return canvas
