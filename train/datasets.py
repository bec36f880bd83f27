"""Readers for ADE20K (semantic and panoptic), COCO panoptic, COCO-Stuff-10k and Cityscapes.

Each reader lists a split into records (file names plus, for panoptic, the segments) and
checks the layout up front, so a wrong folder fails at start-up with the path it expected.
Files are decoded lazily by :meth:`SegmentationDataset.load`, which names the file when it is
missing or corrupt. Labels come out in training ids: 0..C-1 for classes, 255 for ignore.

Layouts (``root`` is what ``--data-root`` points at):
  ade20k         root[/ADEChallengeData2016]/images/{training,validation}/*.jpg and
                 annotations/{training,validation}/*.png, raw ids (0 = other -> 255, k -> k-1)
  ade20k_panoptic  root[/ADEChallengeData2016]/images/{training,validation}/*.jpg,
                 ade20k_panoptic_{train,val}.json and ade20k_panoptic_{train,val}/*.png, as the
                 official datasets/prepare_ade20k_pan_seg.py writes them (categories 0..149)
  coco_panoptic  root/{train2017,val2017}/*.jpg, root/annotations/panoptic_{train,val}2017.json,
                 root/annotations/panoptic_{train,val}2017/*.png (RGB-encoded segment ids)
  coco_stuff     root/images_detectron2/{train,test}/*.jpg and root/annotations_detectron2/
                 {train,test}/*.png (COCO-Stuff-10k as the official preparation script writes
                 it: contiguous ids 0..170, 255 = unlabeled)
  cityscapes     root/leftImg8bit/{train,val}/CITY/*_leftImg8bit.png and
                 root/gtFine/{train,val}/CITY/*_gtFine_labelTrainIds.png (0..18, 255 = void)
"""
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from maskformer_fast.preprocessing import open_image, read_image, rgb_to_id

__all__ = ["DATASETS", "DatasetInfo", "SegmentationDataset", "build_dataset", "read_image",
           "read_label", "read_panoptic_png", "rgb_to_id"]

DATASETS = ("ade20k", "ade20k_panoptic", "coco_panoptic", "coco_stuff", "cityscapes")
IGNORE_LABEL = 255
# user-facing split name -> directory name, per dataset
_SPLIT_DIRS = {
    "ade20k": {"train": "training", "val": "validation"},
    "coco_stuff": {"train": "train", "val": "test"},
    "cityscapes": {"train": "train", "val": "val"},
    "coco_panoptic": {"train": "train2017", "val": "val2017"},
}
_NUM_CLASSES = {"ade20k": 150, "coco_stuff": 171, "cityscapes": 19}


@dataclass
class DatasetInfo:
    """What training and evaluation need to know about a dataset split.

    ``categories`` (panoptic only) lists the json's categories in order; the position of a
    category is its contiguous training id.
    """

    name: str
    split: str
    task: str  # "semantic" | "panoptic"
    num_classes: int
    ignore_label: int = IGNORE_LABEL
    categories: List[Dict] = field(default_factory=list)
    panoptic_json: Optional[str] = None
    panoptic_root: Optional[str] = None

    @property
    def dataset_id_to_contiguous(self) -> Dict[int, int]:
        return {c["id"]: i for i, c in enumerate(self.categories)}

    @property
    def thing_classes(self) -> List[int]:
        """Contiguous ids of the thing categories (panoptic)."""
        return [i for i, c in enumerate(self.categories) if c.get("isthing", 0) == 1]


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
    if img.mode not in ("L", "P", "I", "I;16"):
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
            label = read_label(record["sem_seg_file_name"])
            if self.info.name == "ade20k":
                label = np.where(label == 0, IGNORE_LABEL, label - 1)
            bad = (label >= self.info.num_classes) & (label != self.info.ignore_label)
            if bad.any():
                raise ValueError(f"annotation {record['sem_seg_file_name']} has label {int(label[bad][0])}, "
                                 f"out of range for {self.info.num_classes} classes")
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


def _sorted_files(folder: str, suffix: str) -> List[str]:
    out = []
    for dirpath, _, names in os.walk(folder):
        out.extend(os.path.join(dirpath, n) for n in names if n.endswith(suffix))
    return sorted(out)


def _paired_records(image_dir: str, label_dir: str, image_suffix: str, label_suffix: str,
                    what: str) -> List[Dict]:
    """Pair every image under ``image_dir`` with the label of the same stem under ``label_dir``."""
    records = []
    for image_file in _sorted_files(image_dir, image_suffix):
        rel = os.path.relpath(image_file, image_dir)[: -len(image_suffix)]
        label_file = os.path.join(label_dir, rel + label_suffix)
        _require_file(label_file, f"{what} annotation of {image_file}")
        records.append({"file_name": image_file, "sem_seg_file_name": label_file,
                        "image_id": os.path.basename(rel)})
    return records


def _ade20k(root: str, split: str) -> SegmentationDataset:
    if os.path.isdir(os.path.join(root, "ADEChallengeData2016")):
        root = os.path.join(root, "ADEChallengeData2016")
    d = _SPLIT_DIRS["ade20k"][split]
    what = "ADE20K layout (ADEChallengeData2016/images/<split>/*.jpg)"
    image_dir = _require_dir(os.path.join(root, "images", d), what)
    label_dir = _require_dir(os.path.join(root, "annotations", d), what)
    records = _paired_records(image_dir, label_dir, ".jpg", ".png", "ADE20K")
    return SegmentationDataset(records, DatasetInfo("ade20k", split, "semantic", _NUM_CLASSES["ade20k"]))


def _coco_stuff(root: str, split: str) -> SegmentationDataset:
    d = _SPLIT_DIRS["coco_stuff"][split]
    what = "COCO-Stuff-10k layout (images_detectron2/<split>/*.jpg, annotations_detectron2/<split>/*.png)"
    image_dir = _require_dir(os.path.join(root, "images_detectron2", d), what)
    label_dir = _require_dir(os.path.join(root, "annotations_detectron2", d), what)
    records = _paired_records(image_dir, label_dir, ".jpg", ".png", "COCO-Stuff")
    return SegmentationDataset(records, DatasetInfo("coco_stuff", split, "semantic", _NUM_CLASSES["coco_stuff"]))


def _cityscapes(root: str, split: str) -> SegmentationDataset:
    d = _SPLIT_DIRS["cityscapes"][split]
    what = "Cityscapes layout (leftImg8bit/<split>/<city>/*_leftImg8bit.png)"
    image_dir = _require_dir(os.path.join(root, "leftImg8bit", d), what)
    label_dir = _require_dir(os.path.join(root, "gtFine", d), what)
    records = _paired_records(image_dir, label_dir, "_leftImg8bit.png", "_gtFine_labelTrainIds.png",
                              "Cityscapes (gtFine *_labelTrainIds.png, written by cityscapesscripts' "
                              "createTrainIdLabelImgs)")
    return SegmentationDataset(records, DatasetInfo("cityscapes", split, "semantic", _NUM_CLASSES["cityscapes"]))


def _coco_panoptic(root: str, split: str) -> SegmentationDataset:
    d = _SPLIT_DIRS["coco_panoptic"][split]
    what = "COCO panoptic layout (annotations/panoptic_<split>2017.json)"
    json_file = _require_file(os.path.join(root, "annotations", f"panoptic_{d}.json"), what)
    png_dir = _require_dir(os.path.join(root, "annotations", f"panoptic_{d}"), what)
    image_dir = _require_dir(os.path.join(root, d), what)
    return _panoptic("coco_panoptic", split, json_file, png_dir, image_dir)


def _ade20k_panoptic(root: str, split: str) -> SegmentationDataset:
    if os.path.isdir(os.path.join(root, "ADEChallengeData2016")):
        root = os.path.join(root, "ADEChallengeData2016")
    what = "ADE20K panoptic layout (ADEChallengeData2016/ade20k_panoptic_<split>.json, from prepare_ade20k_pan_seg.py)"
    json_file = _require_file(os.path.join(root, f"ade20k_panoptic_{split}.json"), what)
    png_dir = _require_dir(os.path.join(root, f"ade20k_panoptic_{split}"), what)
    image_dir = _require_dir(os.path.join(root, "images", _SPLIT_DIRS["ade20k"][split]), what)
    return _panoptic("ade20k_panoptic", split, json_file, png_dir, image_dir)


def _panoptic(name: str, split: str, json_file: str, png_dir: str, image_dir: str) -> SegmentationDataset:
    """A COCO-panoptic-format split: json (images, annotations, categories) + RGB-id PNGs."""
    try:
        with open(json_file) as f:
            data = json.load(f)
        categories = data["categories"]
        images = {im["id"]: im for im in data["images"]}
        annotations = data["annotations"]
    except (ValueError, KeyError) as e:
        raise ValueError(f"cannot parse panoptic json {json_file}: {e!r}") from None
    info = DatasetInfo(name, split, "panoptic", len(categories), categories=categories,
                       panoptic_json=json_file, panoptic_root=png_dir)
    to_contiguous = info.dataset_id_to_contiguous
    records = []
    for ann in annotations:
        image = images.get(ann["image_id"])
        if image is None:
            raise ValueError(f"{json_file}: annotation {ann['file_name']} refers to unknown image id {ann['image_id']}")
        segments = []
        for seg in ann["segments_info"]:
            if seg["category_id"] not in to_contiguous:
                raise ValueError(f"{json_file}: segment {seg['id']} of {ann['file_name']} has unknown "
                                 f"category {seg['category_id']}")
            segments.append(dict(seg, label=to_contiguous[seg["category_id"]]))
        records.append({"file_name": os.path.join(image_dir, image["file_name"]),
                        "pan_seg_file_name": os.path.join(png_dir, ann["file_name"]),
                        "image_id": ann["image_id"], "segments_info": segments})
    records.sort(key=lambda r: r["file_name"])
    return SegmentationDataset(records, info)


_READERS = {"ade20k": _ade20k, "ade20k_panoptic": _ade20k_panoptic, "coco_panoptic": _coco_panoptic,
            "coco_stuff": _coco_stuff, "cityscapes": _cityscapes}


def build_dataset(name: str, root: str, split: str) -> SegmentationDataset:
    """List ``split`` ("train" or "val") of dataset ``name`` under ``root``."""
    if name not in _READERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    _require_dir(root, f"{name} data root")
    return _READERS[name](root, split)
