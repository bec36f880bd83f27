"""Readers of every dataset in maskformer_fast.dataset_specs.DATASETS: one function per layout.

Each reader lists a split into records (file names plus, for panoptic, the segments) and
checks the layout up front, so a wrong folder fails at start-up with the path it expected.
Files are decoded lazily by :meth:`SegmentationDataset.load`, which names the file when it is
missing or corrupt. Labels come out in training ids: 0..C-1 for classes and the dataset's
``ignore_label`` (255; 65535 for ADE20K-Full) for ignored pixels.

Layouts (``root`` is what ``--data-root`` points at; each dataset's folders, suffixes and label
meaning are its ``DatasetSpec``):
  paired         one label map per image, same stem: ade20k (raw ids, 0 = other -> ignore, k -> k-1),
                 ade20k_full (16-bit TIFF trainIds, 65535 = ignore), coco_stuff, cityscapes,
                 mapillary (palette PNG, 65 = unlabeled -> 255), semantic_folder (custom:
                 DIR/images/{train,val}/*, DIR/annotations/{train,val}/*.png, 255 = ignore, and
                 DIR/classes.json: a JSON list of names or of {"name": ..., "color": [r, g, b]})
  panoptic_json  a COCO-panoptic json (images, annotations, categories) + RGB-id PNGs:
                 coco_panoptic, ade20k_panoptic (as the official prepare_ade20k_pan_seg.py writes
                 it), coco_panoptic_custom (any categories: DIR/images/{train,val}/*,
                 DIR/annotations/panoptic_{train,val}.json + panoptic_{train,val}/*.png)
"""
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from maskformer_fast.dataset_specs import DATASETS as SPECS, DatasetSpec, get_dataset_spec
from maskformer_fast.preprocessing import open_image, read_image, rgb_to_id

__all__ = ["DATASETS", "DatasetInfo", "SegmentationDataset", "build_dataset", "read_classes_json", "read_image",
           "read_label", "read_panoptic_png", "rgb_to_id"]

DATASETS = tuple(SPECS)


@dataclass
class DatasetInfo:
    """What training and evaluation need to know about a dataset split.

    ``categories`` (panoptic only) lists the json's categories in order; the position of a
    category is its contiguous training id. ``class_names`` / ``class_colors`` are the classes
    the data names itself (custom datasets; empty for the others, whose names ship with the package).
    """

    name: str
    split: str
    task: str  # "semantic" | "panoptic"
    num_classes: int
    ignore_label: int = 255
    categories: List[Dict] = field(default_factory=list)
    panoptic_json: Optional[str] = None
    panoptic_root: Optional[str] = None
    class_names: List[str] = field(default_factory=list)
    class_colors: List[Tuple[int, int, int]] = field(default_factory=list)
    label_shift: int = 0
    raw_ignore: Optional[int] = 255

    @property
    def dataset_id_to_contiguous(self) -> Dict[int, int]:
        return {c["id"]: i for i, c in enumerate(self.categories)}

    @property
    def thing_classes(self) -> List[int]:
        """Contiguous ids of the thing categories (panoptic)."""
        return [i for i, c in enumerate(self.categories) if c.get("isthing", 0) == 1]

    def to_train_ids(self, stored: np.ndarray) -> np.ndarray:
        """Stored label values -> training ids (``stored - label_shift``; ``raw_ignore`` -> ignore_label)."""
        label = stored - self.label_shift
        if self.raw_ignore is not None:
            label = np.where(stored == self.raw_ignore, self.ignore_label, label)
        return label


def _require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what}: expected the folder {path}, which does not exist")
    return path


def _require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: expected the file {path}, which does not exist")
    return path


def read_label(path: str) -> np.ndarray:
    """Decode a single-channel label PNG to [H,W] (its stored integer values; EXIF orientation
    applied, as Detectron2's read_image does for annotations too)."""
    img = open_image(path, "annotation")
    if img.mode not in ("L", "P", "I", "I;16", "I;16L", "I;16B"):
        raise ValueError(f"annotation {path} has mode {img.mode}; expected a single-channel label PNG")
    return np.asarray(img).astype(np.int64)


def read_panoptic_png(path: str) -> np.ndarray:
    return rgb_to_id(np.asarray(open_image(path, "panoptic annotation").convert("RGB")))


class SegmentationDataset(torch.utils.data.Dataset):
    """Records of one split; ``load(i)`` / ``dataset[i]`` decode image ``i`` and its labels.

    A loaded sample is a dict with ``image`` [H,W,3] uint8 and either ``sem_seg`` [H,W] int64
    (training ids, 255 = ignore) or ``pan_seg`` [H,W] int64 segment ids plus ``segments_info``
    (each with ``label``, the contiguous class), and ``file_name``, ``image_id``.
    """

    def __init__(self, records: List[Dict], info: DatasetInfo):
        if not records:
            raise ValueError(f"{info.name} {info.split}: no images found")
        self.records = records
        self.info = info

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Dict:
        return self.load(index)

    def load(self, index: int) -> Dict:
        record = self.records[index]
        image = read_image(record["file_name"])
        sample = {"image": image, "file_name": record["file_name"], "image_id": record["image_id"]}
        if self.info.task == "semantic":
            label = self.info.to_train_ids(read_label(record["sem_seg_file_name"]))
            bad = ((label < 0) | (label >= self.info.num_classes)) & (label != self.info.ignore_label)
            if bad.any():
                raise ValueError(f"annotation {record['sem_seg_file_name']} has label {int(label[bad][0])}, "
                                 f"out of range for {self.info.num_classes} classes "
                                 f"(ignore: {self.info.ignore_label})")
            sample["sem_seg"] = label
            label_file = record["sem_seg_file_name"]
        else:
            sample["pan_seg"] = read_panoptic_png(record["pan_seg_file_name"])
            sample["segments_info"] = record["segments_info"]
            label_file = record["pan_seg_file_name"]
        label_shape = (sample.get("sem_seg", sample.get("pan_seg"))).shape
        if label_shape != image.shape[:2]:
            raise ValueError(f"image {record['file_name']} is {image.shape[:2]} but its annotation "
                             f"{label_file} is {label_shape}")
        return sample


def _sorted_files(folder: str, suffixes: Tuple[str, ...]) -> List[str]:
    out, endings = [], tuple(s.lower() for s in suffixes)  # case-blind: photo.JPG is an image too
    for dirpath, _, names in os.walk(folder):
        out.extend(os.path.join(dirpath, n) for n in names if n.lower().endswith(endings))
    return sorted(out)


def _paired_records(image_dir: str, label_dir: str, image_suffixes: Tuple[str, ...], label_suffix: str,
                    what: str) -> List[Dict]:
    """Pair every image under ``image_dir`` with the label of the same stem under ``label_dir``."""
    records = []
    for image_file in _sorted_files(image_dir, image_suffixes):
        suffix = next(s for s in image_suffixes if image_file.lower().endswith(s.lower()))
        rel = os.path.relpath(image_file, image_dir)[: -len(suffix)]
        label_file = os.path.join(label_dir, rel + label_suffix)
        _require_file(label_file, f"{what}: annotation of {image_file}")
        records.append({"file_name": image_file, "sem_seg_file_name": label_file,
                        "image_id": os.path.basename(rel)})
    return records


def read_classes_json(path: str) -> Tuple[List[str], List[Tuple[int, int, int]]]:
    """The names and colours ([] unless every class has one) of a custom dataset's classes.json:
    a JSON list of names, or of {"name": ..., "color": [r, g, b]}; the position is the class id."""
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"cannot read classes file {path}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"classes file {path} must hold a non-empty JSON list of class names")
    names, colors = [], []
    for i, entry in enumerate(entries):
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"classes file {path}: entry {i} is neither a name nor an object with a \"name\"")
        color = entry.get("color")
        if color is not None:
            if not (isinstance(color, list) and len(color) == 3 and all(isinstance(v, int) and 0 <= v <= 255
                                                                         for v in color)):
                raise ValueError(f"classes file {path}: the color of {entry['name']!r} must be [r, g, b] in 0..255")
            colors.append(tuple(color))
        names.append(entry["name"])
    return names, colors if len(colors) == len(names) else []


def _dataset_root(spec: DatasetSpec, root: str) -> str:
    """``root``, or the dataset's own folder inside it (e.g. root/ADEChallengeData2016)."""
    inner = os.path.join(root, spec.root_folder) if spec.root_folder else root
    return inner if os.path.isdir(inner) else root


def _split_paths(spec: DatasetSpec, root: str, split: str) -> Tuple[str, str]:
    """The image folder and the label (or panoptic PNG) folder of a split, checked."""
    fmt = {"dir": spec.splits[split], "split": split}
    image_dir = _require_dir(os.path.join(root, spec.image_dir.format(**fmt)), spec.layout())
    label_dirs = [os.path.join(root, d.format(**fmt)) for d in spec.label_dirs]
    label_dir = next((d for d in label_dirs if os.path.isdir(d)), None)
    if label_dir is None:
        raise FileNotFoundError(f"{spec.layout()}: expected the folder {' or '.join(label_dirs)}, which does not exist")
    return image_dir, label_dir


def _paired(spec: DatasetSpec, root: str, split: str) -> "SegmentationDataset":
    """A split of one label map per image (the layout ``spec`` describes)."""
    image_dir, label_dir = _split_paths(spec, root, split)
    names, colors = [], []
    if spec.classes_file:
        names, colors = read_classes_json(_require_file(os.path.join(root, spec.classes_file), spec.layout()))
    records = _paired_records(image_dir, label_dir, spec.image_suffixes, spec.label_suffix, spec.layout())
    info = DatasetInfo(spec.name, split, "semantic", spec.num_classes or len(names), spec.ignore_label,
                       class_names=names, class_colors=colors, label_shift=spec.label_shift,
                       raw_ignore=spec.raw_ignore)
    return SegmentationDataset(records, info)


def _panoptic_record(ann: Dict, images: Dict, to_contiguous: Dict[int, int], image_dir: str, png_dir: str,
                     json_file: str) -> Dict:
    """One image's record from its panoptic annotation, segments labelled with contiguous classes."""
    image = images.get(ann["image_id"])
    if image is None:
        raise ValueError(f"{json_file}: annotation {ann['file_name']} refers to unknown image id {ann['image_id']}")
    segments = []
    for seg in ann["segments_info"]:
        if seg["category_id"] not in to_contiguous:
            raise ValueError(f"{json_file}: segment {seg['id']} of {ann['file_name']} has unknown "
                             f"category {seg['category_id']}")
        segments.append(dict(seg, label=to_contiguous[seg["category_id"]]))
    return {"file_name": os.path.join(image_dir, image["file_name"]),
            "pan_seg_file_name": os.path.join(png_dir, ann["file_name"]),
            "image_id": ann["image_id"], "segments_info": segments}


def _panoptic_json(spec: DatasetSpec, root: str, split: str) -> "SegmentationDataset":
    """A COCO-panoptic-format split: json (images, annotations, categories) + RGB-id PNGs."""
    fmt = {"dir": spec.splits[split], "split": split}
    json_file = _require_file(os.path.join(root, spec.panoptic_json.format(**fmt)), spec.layout())
    image_dir, png_dir = _split_paths(spec, root, split)
    try:
        with open(json_file) as f:
            data = json.load(f)
        categories = data["categories"]
        images = {im["id"]: im for im in data["images"]}
        annotations = data["annotations"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot parse panoptic json {json_file}: {e!r}") from None
    if not categories:
        raise ValueError(f"panoptic json {json_file} lists no categories")
    try:
        names, colors = [], []
        if spec.classes_from_data:
            names = [str(c.get("name", f"category {c['id']}")) for c in categories]
            colors = [tuple(c["color"]) for c in categories] if all("color" in c for c in categories) else []
        info = DatasetInfo(spec.name, split, "panoptic", len(categories), spec.ignore_label, categories=categories,
                           panoptic_json=json_file, panoptic_root=png_dir, class_names=names, class_colors=colors)
        if len(info.dataset_id_to_contiguous) != len(categories):
            raise ValueError(f"panoptic json {json_file}: category ids repeat "
                             f"({sorted(i for i, n in Counter(c['id'] for c in categories).items() if n > 1)[:5]})")
        records = [_panoptic_record(ann, images, info.dataset_id_to_contiguous, image_dir, png_dir, json_file)
                   for ann in annotations]
    except (KeyError, TypeError, AttributeError) as e:  # an entry without "id", "file_name", "segments_info"...
        what = f"an entry lacks {e.args[0]!r}" if isinstance(e, KeyError) else f"an entry is malformed ({e})"
        raise ValueError(f"cannot parse panoptic json {json_file}: {what}") from None
    records.sort(key=lambda r: r["file_name"])
    return SegmentationDataset(records, info)


_READERS = {"paired": _paired, "panoptic_json": _panoptic_json}


def build_dataset(name: str, root: str, split: str) -> SegmentationDataset:
    """List ``split`` ("train" or "val") of dataset ``name`` under ``root``."""
    spec = get_dataset_spec(name)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    _require_dir(root, f"{name} data root")
    return _READERS[spec.reader](spec, _dataset_root(spec, root), split)
