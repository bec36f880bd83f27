"""Write a small synthetic segmentation dataset in a real on-disk format.

Shapes (ellipses, rectangles, triangles) of several classes and instances on textured
backgrounds, every class with its own colour and stripe texture so a model can learn them.
Everything is drawn from ``--seed``, so the same arguments give the same files.

    python train/make_synthetic.py --format ade20k --out DIR --num-images 8 --size 64 --seed 0

The files carry the real datasets' names, so ``--out`` must be empty or new: a folder holding
anything is refused (it may be the real dataset) unless ``--overwrite``.

Layouts written: those the readers in ``train/datasets.py`` expect, as each dataset's entry in
``maskformer_fast.dataset_specs`` describes it (folders, stems, label values and file format):
  ade20k           DIR/ADEChallengeData2016/images/{training,validation}/*.jpg + annotations/.../*.png (0 = other)
  ade20k_full      DIR/ADE20K_2021_17_01/images_detectron2/{training,validation}/*.jpg +
                   annotations_detectron2/.../*.tif (16-bit trainIds 0..846, 65535 = unlabelled)
  ade20k_panoptic  DIR/ADEChallengeData2016/images/{training,validation}/*.jpg,
                   ade20k_panoptic_{train,val}.json + ade20k_panoptic_{train,val}/*.png (categories 0..149)
  coco_panoptic    DIR/{train2017,val2017}/*.jpg, DIR/annotations/panoptic_{train,val}2017.json +
                   panoptic_{train,val}2017/*.png (id = R + 256 G + 256^2 B)
  coco_stuff       DIR/images_detectron2/{train,test}/*.jpg + annotations_detectron2/.../*.png (0..170, 255)
  cityscapes       DIR/leftImg8bit/{train,val}/CITY/*_leftImg8bit.png + gtFine/.../*_gtFine_labelTrainIds.png
  mapillary        DIR/mapillary_vistas/{training,validation}/images/*.jpg + v1.2/labels/*.png
                   (palette PNGs with the Vistas colours, 65 = unlabeled)
  semantic_folder  DIR/images/{train,val}/*.jpg, DIR/annotations/{train,val}/*.png (255 = ignore),
                   DIR/classes.json (names and colours)
  coco_panoptic_custom  DIR/images/{train,val}/*.jpg, DIR/annotations/panoptic_{train,val}.json +
                   panoptic_{train,val}/*.png (four categories with ids 7, 8, 42, 99)
"""
import argparse
import json
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from maskformer_fast.cli_errors import run_cli
from maskformer_fast.config import thing_classes
from maskformer_fast.dataset_specs import DATASETS as SPECS, DatasetSpec, SyntheticClasses
from maskformer_fast.preprocessing import id_to_rgb  # the COCO panoptic PNG encoding, shared
from maskformer_fast.visualize import dataset_metadata

FORMATS = tuple(name for name, spec in SPECS.items() if spec.synthetic is not None)
CLASSES: Dict[str, SyntheticClasses] = {name: SPECS[name].synthetic for name in FORMATS}
PANOPTIC_NAMES = {1: "person", 3: "car", 18: "dog", 187: "sky-other-merged", 193: "grass-merged",
                  199: "wall-other-merged"}
# the custom formats' own classes: (name, colour) by stored value / category id
CUSTOM_CLASSES = {
    "semantic_folder": {0: ("sky", (70, 130, 180)), 1: ("grass", (107, 142, 35)), 2: ("road", (128, 64, 128)),
                        3: ("robot", (220, 20, 60)), 4: ("kite", (250, 170, 30))},
    "coco_panoptic_custom": {7: ("meadow", (107, 142, 35)), 8: ("cloud", (180, 180, 200)),
                             42: ("robot", (220, 20, 60)), 99: ("kite", (250, 170, 30))},
}
CITIES = {"train": ("aachen", "bremen"), "val": ("frankfurt", "lindau")}  # Cityscapes stems name a city


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
    lut = np.array([void] + list(labels), dtype=np.int64)
    return lut[segment_map]


def _split_files(spec: DatasetSpec, out: str, split: str, i: int) -> Tuple[str, str, str, Dict[str, str]]:
    """(stem, image folder, label folder, template values) of synthetic image ``i`` of a split."""
    values = {"dir": spec.splits[split], "split": split}
    stem = spec.synthetic_stem.format(n=i + 1, i=i, city=CITIES[split][i % 2], **values)
    root = os.path.join(out, spec.root_folder)
    return (stem, os.path.join(root, spec.image_dir.format(**values)),
            os.path.join(root, spec.label_dirs[0].format(**values)), values)


def save_image(image: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path, **({"quality": 95} if path.endswith(".jpg") else {}))


def save_label(label_map: np.ndarray, path: str, spec: DatasetSpec) -> None:
    """A label map in the dataset's file format: 8-bit PNG, palette PNG or 16-bit TIFF."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if spec.label_mode == "I;16":
        Image.fromarray(label_map.astype(np.uint16)).save(path)
        return
    image = Image.fromarray(label_map.astype(np.uint8), mode="L")
    if spec.label_mode == "P":  # the class colours, black for the values past them (unlabeled)
        colors = dataset_metadata(spec.name).colors
        image.putpalette([v for color in colors for v in color] + [0, 0, 0] * (256 - len(colors)))
    image.save(path)


def write_semantic(fmt: str, out: str, num_images: int, num_val: int, size: int, seed: int) -> None:
    spec = SPECS[fmt]
    height, width = size, size * 4 // 3
    for split, count, split_seed in zip(("train", "val"), (num_images, num_val), (seed, seed + 10**6)):
        for i in range(count):
            rng = np.random.default_rng([split_seed, i])
            image, segment_map, labels = make_scene(spec.synthetic, height, width, rng, with_void=i % 2 == 0)
            stem, image_dir, label_dir, _ = _split_files(spec, out, split, i)
            save_image(image, os.path.join(image_dir, stem + spec.image_suffixes[0]))
            save_label(semantic_labels(segment_map, labels, spec.synthetic.void),
                       os.path.join(label_dir, stem + spec.label_suffix), spec)
    if spec.classes_file:
        with open(os.path.join(out, spec.classes_file), "w") as f:
            json.dump([{"name": name, "color": list(color)} for _, (name, color)
                       in sorted(CUSTOM_CLASSES[fmt].items())], f, indent=1)


def panoptic_categories(fmt: str) -> List[Dict]:
    """The json's categories: COCO's six used here, ADE20K's 150 (ids 0..149, the official things),
    or the custom format's four."""
    if fmt == "ade20k_panoptic":
        things = set(thing_classes("ade20k_panoptic"))
        return [{"id": k, "name": f"ade20k class {k}", "isthing": int(k in things),
                 "color": [int(c) for c in np.random.default_rng(k).integers(0, 256, size=3)]} for k in range(150)]
    classes = CLASSES[fmt]
    categories = []
    for cat_id in sorted(classes.things + classes.stuff):
        if fmt in CUSTOM_CLASSES:
            name, colour = CUSTOM_CLASSES[fmt][cat_id][0], list(CUSTOM_CLASSES[fmt][cat_id][1])
        else:
            name = PANOPTIC_NAMES[cat_id]
            colour = [int(c) for c in np.random.default_rng(cat_id).integers(0, 256, size=3)]
        categories.append({"id": cat_id, "name": name, "supercategory": "synthetic",
                           "isthing": int(cat_id in classes.things), "color": colour})
    return categories


def _panoptic_segments(segment_map: np.ndarray, labels: Sequence[int], crowd_index: int):
    """(segment id map, segments_info) of a drawn scene; segment k of class c gets id 1000 c + k."""
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
    return ids, segments_info


def write_panoptic(fmt: str, out: str, num_images: int, num_val: int, size: int, seed: int) -> None:
    spec = SPECS[fmt]
    height, width = size, size * 4 // 3
    for split, count, split_seed in zip(("train", "val"), (num_images, num_val), (seed, seed + 10**6)):
        images, annotations = [], []
        for i in range(count):
            stem, image_dir, png_dir, values = _split_files(spec, out, split, i)
            image_id = int(stem) if stem.isdigit() else stem  # COCO's ids are numbers, ADE20K's the stems
            rng = np.random.default_rng([split_seed, i])
            image, segment_map, labels = make_scene(spec.synthetic, height, width, rng, with_void=i % 2 == 0)
            # COCO: every third image marks its last thing instance as a crowd region (ADE20K has none).
            crowd_index = len(labels) if fmt == "coco_panoptic" and i % 3 == 0 else -1
            ids, segments_info = _panoptic_segments(segment_map, labels, crowd_index)
            save_image(image, os.path.join(image_dir, stem + ".jpg"))
            save_image(id_to_rgb(ids), os.path.join(png_dir, stem + ".png"))
            images.append({"id": image_id, "file_name": stem + ".jpg", "height": height, "width": width})
            annotations.append({"image_id": image_id, "file_name": stem + ".png", "segments_info": segments_info})
        if count:
            json_path = os.path.join(out, spec.root_folder, spec.panoptic_json.format(**values))
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
    if SPECS[fmt].task == "panoptic":
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
