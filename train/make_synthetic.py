"""Write a small synthetic segmentation dataset in a real on-disk format.

Shapes (ellipses, rectangles, triangles) of several classes and instances on textured
backgrounds, every class with its own colour and stripe texture so a model can learn them.
Everything is drawn from ``--seed``, so the same arguments give the same files.

    python train/make_synthetic.py --format ade20k --out DIR --num-images 8 --size 64 --seed 0

The files carry the real datasets' names, so ``--out`` must be empty or new: a folder holding
anything is refused (it may be the real dataset) unless ``--overwrite``.

Layouts written (the same the readers in ``train/datasets.py`` expect):
  ade20k         DIR/ADEChallengeData2016/images/{training,validation}/*.jpg
                 DIR/ADEChallengeData2016/annotations/{training,validation}/*.png  (0 = other)
  ade20k_panoptic  DIR/ADEChallengeData2016/images/{training,validation}/*.jpg,
                 DIR/ADEChallengeData2016/ade20k_panoptic_{train,val}.json + ade20k_panoptic_{train,val}/*.png
                 (as the official prepare_ade20k_pan_seg.py writes them: categories 0..149)
  coco_panoptic  DIR/{train2017,val2017}/*.jpg, DIR/annotations/panoptic_{train,val}2017.json
                 DIR/annotations/panoptic_{train,val}2017/*.png  (id = R + 256 G + 256^2 B)
  coco_stuff     DIR/images_detectron2/{train,test}/*.jpg
                 DIR/annotations_detectron2/{train,test}/*.png  (0..170, 255 = unlabeled)
  cityscapes     DIR/leftImg8bit/{train,val}/CITY/*_leftImg8bit.png
                 DIR/gtFine/{train,val}/CITY/*_gtFine_labelTrainIds.png  (0..18, 255 = void)
"""
import argparse
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from maskformer_fast.cli_errors import run_cli
from maskformer_fast.config import thing_classes
from maskformer_fast.preprocessing import id_to_rgb  # the COCO panoptic PNG encoding, shared

FORMATS = ("ade20k", "ade20k_panoptic", "coco_panoptic", "coco_stuff", "cityscapes")


@dataclass(frozen=True)
class SyntheticClasses:
    """Label values a format's files use: stuff for the background, things for the shapes."""

    stuff: Tuple[int, ...]
    things: Tuple[int, ...]
    void: int


# ADE20K raw ids (1-based, 0 = other): wall, sky, floor, tree | person, car, chair.
# COCO-Stuff contiguous ids (0..170): person, car, dog | grass, sky-other, wall-other.
# Cityscapes trainIds: road, building, sky | person, car, bicycle.
# COCO panoptic category ids: person, car, dog | sky-other-merged, grass-merged, wall-other-merged.
CLASSES = {
    "ade20k": SyntheticClasses(stuff=(1, 3, 4, 5), things=(13, 21, 20), void=0),
    "coco_stuff": SyntheticClasses(stuff=(112, 145, 161), things=(0, 2, 16), void=255),
    "cityscapes": SyntheticClasses(stuff=(0, 2, 10), things=(11, 13, 18), void=255),
    "coco_panoptic": SyntheticClasses(stuff=(187, 193, 199), things=(1, 3, 18), void=0),
    # ADE20K panoptic category ids (0-based): wall, sky, floor, tree | person, car, chair
    "ade20k_panoptic": SyntheticClasses(stuff=(0, 2, 3, 4), things=(12, 20, 19), void=0),
}
PANOPTIC_NAMES = {1: "person", 3: "car", 18: "dog", 187: "sky-other-merged", 193: "grass-merged",
                  199: "wall-other-merged"}
SPLITS = {  # format -> (train split dir name, val split dir name)
    "ade20k": ("training", "validation"),
    "ade20k_panoptic": ("training", "validation"),
    "coco_panoptic": ("train2017", "val2017"),
    "coco_stuff": ("train", "test"),
    "cityscapes": ("train", "val"),
}


def class_texture(label: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """[H,W,3] float texture of one class: its colour plus oriented stripes plus noise."""
    # The colour and stripe orientation depend only on the label, so a class looks the same
    # in every image; the noise and stripe phase vary per image.
    look = np.random.default_rng(1000 + label)
    colour = look.uniform(30, 225, size=3)
    angle, period = look.uniform(0, np.pi), look.uniform(4, 12)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period + phase)
    texture = colour + 25.0 * stripes[..., None] + rng.normal(0, 6, size=(height, width, 3))
    return texture


def draw_shape(draw: ImageDraw.ImageDraw, value: int, height: int, width: int,
               rng: np.random.Generator) -> None:
    """Draw one random ellipse, rectangle or triangle of ``value`` on a label canvas."""
    size = min(height, width)
    h, w = (int(rng.uniform(0.2, 0.45) * size) for _ in range(2))
    y0, x0 = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
    box = [x0, y0, x0 + w, y0 + h]
    kind = int(rng.integers(3))
    if kind == 0:
        draw.ellipse(box, fill=value)
    elif kind == 1:
        draw.rectangle(box, fill=value)
    else:
        draw.polygon([(x0 + w // 2, y0), (x0, y0 + h), (x0 + w, y0 + h)], fill=value)


def make_scene(classes: SyntheticClasses, height: int, width: int, rng: np.random.Generator,
               with_void: bool) -> Tuple[np.ndarray, np.ndarray, List[int]]:
    """Draw one scene.

    Returns:
        image [H,W,3] uint8, segment map [H,W] int32 (0 = void, k >= 1 = segment k), and the
        class label of each segment (index k - 1).
    """
    segments = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(segments)
    labels: List[int] = []
    # Stuff: a background and a second region above a random horizon, sometimes a third block.
    stuff = rng.permutation(classes.stuff)
    labels.append(int(stuff[0]))
    draw.rectangle([0, 0, width, height], fill=1)
    horizon = int(rng.uniform(0.25, 0.6) * height)
    labels.append(int(stuff[1]))
    draw.rectangle([0, 0, width, horizon], fill=2)
    if len(stuff) > 2 and rng.random() < 0.5:
        labels.append(int(stuff[2]))
        x0 = int(rng.uniform(0, 0.5) * width)
        draw.rectangle([x0, horizon, x0 + width // 3, height], fill=len(labels))
    # Things: 2-4 instances, the same class may appear more than once.
    for _ in range(int(rng.integers(2, 5))):
        labels.append(int(rng.choice(classes.things)))
        draw_shape(draw, len(labels), height, width, rng)
    if with_void:
        vh, vw = max(2, height // 8), max(2, width // 8)
        y0, x0 = int(rng.integers(0, height - vh)), int(rng.integers(0, width - vw))
        draw.rectangle([x0, y0, x0 + vw, y0 + vh], fill=0)
    segment_map = np.asarray(segments, dtype=np.int32)

    image = rng.uniform(0, 255, size=(height, width, 3))  # void pixels: plain noise
    for k, label in enumerate(labels, start=1):
        inside = segment_map == k
        if inside.any():
            image[inside] = class_texture(label, height, width, rng)[inside]
    return np.clip(image, 0, 255).astype(np.uint8), segment_map, labels


def semantic_labels(segment_map: np.ndarray, labels: Sequence[int], void: int) -> np.ndarray:
    lut = np.array([void] + list(labels), dtype=np.uint8)
    return lut[segment_map]


def write_semantic(fmt: str, out: str, num_images: int, num_val: int, size: int, seed: int) -> None:
    classes = CLASSES[fmt]
    height, width = size, size * 4 // 3
    for split, count, split_seed in zip(SPLITS[fmt], (num_images, num_val), (seed, seed + 10**6)):
        for i in range(count):
            rng = np.random.default_rng([split_seed, i])
            image, segment_map, labels = make_scene(classes, height, width, rng, with_void=i % 2 == 0)
            label_map = semantic_labels(segment_map, labels, classes.void)
            if fmt == "ade20k":
                stem = f"ADE_{split}_{i + 1:08d}"
                root = os.path.join(out, "ADEChallengeData2016")
                image_path = os.path.join(root, "images", split, stem + ".jpg")
                label_path = os.path.join(root, "annotations", split, stem + ".png")
            elif fmt == "coco_stuff":
                stem = f"COCO_train2014_{i + 1:012d}" if split == "train" else f"COCO_val2014_{i + 1:012d}"
                image_path = os.path.join(out, "images_detectron2", split, stem + ".jpg")
                label_path = os.path.join(out, "annotations_detectron2", split, stem + ".png")
            else:  # cityscapes: two cities per split, PNG images
                city = ("aachen", "bremen")[i % 2] if split == "train" else ("frankfurt", "lindau")[i % 2]
                stem = f"{city}_{i:06d}_000019"
                image_path = os.path.join(out, "leftImg8bit", split, city, stem + "_leftImg8bit.png")
                label_path = os.path.join(out, "gtFine", split, city, stem + "_gtFine_labelTrainIds.png")
            os.makedirs(os.path.dirname(image_path), exist_ok=True)
            os.makedirs(os.path.dirname(label_path), exist_ok=True)
            if image_path.endswith(".jpg"):
                Image.fromarray(image).save(image_path, quality=95)
            else:
                Image.fromarray(image).save(image_path)
            Image.fromarray(label_map).save(label_path)


def panoptic_categories(fmt: str) -> List[Dict]:
    """The json's categories: COCO's six used here, or ADE20K's 150 (ids 0..149, the official things)."""
    if fmt == "ade20k_panoptic":
        things = set(thing_classes("ade20k_panoptic"))
        return [{"id": k, "name": f"ade20k class {k}", "isthing": int(k in things),
                 "color": [int(c) for c in np.random.default_rng(k).integers(0, 256, size=3)]} for k in range(150)]
    classes = CLASSES["coco_panoptic"]
    categories = []
    for cat_id in sorted(classes.things + classes.stuff):
        colour = [int(c) for c in np.random.default_rng(cat_id).integers(0, 256, size=3)]
        categories.append({"id": cat_id, "name": PANOPTIC_NAMES[cat_id], "supercategory": "synthetic",
                           "isthing": int(cat_id in classes.things), "color": colour})
    return categories


def _panoptic_paths(fmt: str, out: str, split: str, index: int):
    """(image id, image dir, image file name, PNG dir, json path) of image `index` of a split."""
    if fmt == "coco_panoptic":
        image_id = index + 1
        stem = f"{image_id:012d}"
        name = "panoptic_" + split
        return (image_id, os.path.join(out, split), stem, os.path.join(out, "annotations", name),
                os.path.join(out, "annotations", name + ".json"))
    root = os.path.join(out, "ADEChallengeData2016")
    short = "train" if split == "training" else "val"
    stem = f"ADE_{'train' if split == 'training' else 'val'}_{index + 1:08d}"
    return (stem, os.path.join(root, "images", split), stem, os.path.join(root, f"ade20k_panoptic_{short}"),
            os.path.join(root, f"ade20k_panoptic_{short}.json"))


def write_panoptic(fmt: str, out: str, num_images: int, num_val: int, size: int, seed: int) -> None:
    classes = CLASSES[fmt]
    height, width = size, size * 4 // 3
    for split, count, split_seed in zip(SPLITS[fmt], (num_images, num_val), (seed, seed + 10**6)):
        images, annotations = [], []
        for i in range(count):
            image_id, image_dir, stem, png_dir, json_path = _panoptic_paths(fmt, out, split, i)
            os.makedirs(png_dir, exist_ok=True)
            os.makedirs(image_dir, exist_ok=True)
            rng = np.random.default_rng([split_seed, i])
            image, segment_map, labels = make_scene(classes, height, width, rng, with_void=i % 2 == 0)
            # COCO: every third image marks its last thing instance as a crowd region (ADE20K has none).
            crowd_index = len(labels) if fmt == "coco_panoptic" and i % 3 == 0 else -1
            ids = np.zeros_like(segment_map)
            segments_info = []
            for k, label in enumerate(labels, start=1):
                inside = segment_map == k
                area = int(inside.sum())
                if area == 0:  # fully covered by later shapes
                    continue
                segment_id = label * 1000 + k
                ids[inside] = segment_id
                ys, xs = np.nonzero(inside)
                bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
                segments_info.append({"id": segment_id, "category_id": label, "area": area, "bbox": bbox,
                                      "iscrowd": int(k == crowd_index)})
            Image.fromarray(image).save(os.path.join(image_dir, stem + ".jpg"), quality=95)
            Image.fromarray(id_to_rgb(ids)).save(os.path.join(png_dir, stem + ".png"))
            images.append({"id": image_id, "file_name": stem + ".jpg", "height": height, "width": width})
            annotations.append({"image_id": image_id, "file_name": stem + ".png", "segments_info": segments_info})
        if count:
            with open(json_path, "w") as f:
                json.dump({"images": images, "annotations": annotations, "categories": panoptic_categories(fmt)}, f)


def make_synthetic(fmt: str, out: str, num_images: int, size: int, seed: int, num_val: int = -1,
                   overwrite: bool = False) -> None:
    """Write ``num_images`` training and ``num_val`` validation images (default N // 4, at least 1)
    into ``out``, which must be new or empty unless ``overwrite`` (FileExistsError)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise FileExistsError(f"--out {out} is not empty (it may hold a real dataset with these file names): "
                              f"choose an empty folder or pass --overwrite")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if size < 16:
        raise ValueError(f"--size must be at least 16 pixels, got {size}")
    if num_images < 1:
        raise ValueError(f"--num-images must be positive, got {num_images}")
    if num_val < 0:
        num_val = max(1, num_images // 4)
    if fmt in ("coco_panoptic", "ade20k_panoptic"):
        write_panoptic(fmt, out, num_images, num_val, size, seed)
    else:
        write_semantic(fmt, out, num_images, num_val, size, seed)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="dataset root to write")
    parser.add_argument("--num-images", type=int, default=16, help="training images")
    parser.add_argument("--num-val", type=int, default=-1, help="validation images (default N // 4)")
    parser.add_argument("--size", type=int, default=64, help="image height; width is 4/3 of it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    run_cli("make_synthetic.py", lambda: make_synthetic(args.format, args.out, args.num_images, args.size, args.seed,
                                                        args.num_val, args.overwrite), args.debug)
    print(f"wrote a synthetic {args.format} dataset to {args.out}")


if __name__ == "__main__":
    main()
