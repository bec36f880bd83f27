"""Dataset readers and mappers on generated data in every on-disk format."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from train.datasets import build_dataset, rgb_to_id
from train.make_synthetic import CLASSES, make_synthetic
from train.transforms import PanopticTrainMapper, SemanticTrainMapper, collate, resized_shape

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("synthetic")
    for fmt in ("ade20k", "ade20k_panoptic", "coco_panoptic", "coco_stuff", "cityscapes"):
        make_synthetic(fmt, str(base / fmt), num_images=6, size=40, seed=1)
    return base


def test_generator_cli_is_deterministic(tmp_path):
    for out in ("a", "b"):
        subprocess.run([sys.executable, os.path.join(REPO, "train", "make_synthetic.py"), "--format", "ade20k",
                        "--out", str(tmp_path / out), "--num-images", "2", "--size", "32", "--seed", "5"],
                       check=True, capture_output=True)
    files = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "a") for d, _, fs in os.walk(tmp_path / "a") for f in fs)
    assert len(files) == 6  # 2 train + 1 val images, each with its annotation
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_ade20k_reader_shifts_labels_and_ignores_zero(root):
    ds = build_dataset("ade20k", str(root / "ade20k"), "train")
    assert len(ds) == 6 and ds.info.num_classes == 150
    raw_file = ds.records[0]["sem_seg_file_name"]
    assert raw_file.endswith(os.path.join("annotations", "training", "ADE_training_00000001.png"))
    raw = np.asarray(Image.open(raw_file)).astype(np.int64)
    sample = ds[0]
    assert sample["image"].shape == raw.shape + (3,) and sample["image"].dtype == np.uint8
    expected = np.where(raw == 0, 255, raw - 1)
    np.testing.assert_array_equal(sample["sem_seg"], expected)
    assert (raw == 0).any(), "the generator draws a void patch in even images"
    present = set(np.unique(sample["sem_seg"]).tolist()) - {255}
    assert present <= {c - 1 for c in CLASSES["ade20k"].stuff + CLASSES["ade20k"].things}
    assert len(build_dataset("ade20k", str(root / "ade20k" / "ADEChallengeData2016"), "val")) == 1


@pytest.mark.parametrize("name,classes", [("coco_stuff", 171), ("cityscapes", 19)])
def test_semantic_readers_keep_train_ids(root, name, classes):
    ds = build_dataset(name, str(root / name), "train")
    assert ds.info.num_classes == classes and len(ds) == 6
    for i in range(2):
        sample = ds[i]
        raw = np.asarray(Image.open(ds.records[i]["sem_seg_file_name"])).astype(np.int64)
        np.testing.assert_array_equal(sample["sem_seg"], raw)
        values = set(np.unique(raw).tolist())
        assert values <= set(CLASSES[name].stuff + CLASSES[name].things) | {255}
    assert 255 in np.unique(ds[0]["sem_seg"])


def test_coco_panoptic_reader_segments_and_crowd(root):
    ds = build_dataset("coco_panoptic", str(root / "coco_panoptic"), "train")
    cats = ds.info.categories
    assert ds.info.num_classes == len(cats) == 6
    assert [cats[i]["id"] for i in ds.info.thing_classes] == [1, 3, 18]
    sample = ds[0]  # image 0 marks its last thing as crowd
    infos = sample["segments_info"]
    assert any(s["iscrowd"] for s in infos)
    for s in infos:
        assert (sample["pan_seg"] == s["id"]).sum() == s["area"]
        assert cats[s["label"]]["id"] == s["category_id"]
    # mapper: one mask per non-crowd segment, the crowd region in no mask
    mapper = PanopticTrainMapper([40], 1000, [40], (30, 40))
    out = mapper(sample, np.random.default_rng(0))
    kept = [s for s in infos if not s["iscrowd"]]
    assert out["labels"].tolist() == [s["label"] for s in kept]
    assert out["masks"].shape[1:] == out["image"].shape[1:]
    crowd = [s for s in infos if s["iscrowd"]][0]
    no_aug = PanopticTrainMapper([40], 1000, [40], (100, 100))
    # with no resize and a full-size crop, masks are the id map (up to the random flip)
    target = no_aug(sample, np.random.default_rng(3))
    ids = torch.from_numpy(sample["pan_seg"])
    flipped = ids.flip(-1)
    for mask, seg in zip(target["masks"], kept):
        assert torch.equal(mask, ids == seg["id"]) or torch.equal(mask, flipped == seg["id"])
    assert not target["masks"].any(0)[(ids == crowd["id"]) & (flipped == crowd["id"])].any()


def test_ade20k_panoptic_reader_and_semantic_style_mapper(root):
    # The official prepare_ade20k_pan_seg.py layout, read as COCO panoptic; trained with the
    # semantic mapper's geometry (MaskFormerPanopticDatasetMapper): void padding, one mask per segment.
    ds = build_dataset("ade20k_panoptic", str(root / "ade20k_panoptic"), "train")
    assert ds.info.num_classes == 150 and len(ds.info.thing_classes) == 100 and 12 in ds.info.thing_classes
    sample = ds[0]
    infos = sample["segments_info"]
    assert infos and all(s["label"] == s["category_id"] for s in infos)  # ids 0..149 are contiguous already
    for s in infos:
        assert (sample["pan_seg"] == s["id"]).sum() == s["area"]
    H, W = sample["pan_seg"].shape
    mapper = SemanticTrainMapper((H + 8, W + 8), short_sides=[H], max_size=10 * W, color_aug=False)
    out = mapper(sample, np.random.default_rng(2))
    assert out["image"].shape == (3, H + 8, W + 8)
    assert out["labels"].tolist() == [s["label"] for s in infos]
    ids = torch.from_numpy(sample["pan_seg"])
    for mask, seg in zip(out["masks"], infos):  # no resize, padding only (up to the random flip)
        assert not mask[H:].any() and not mask[:, W:].any()
        assert torch.equal(mask[:H, :W], ids == seg["id"]) or torch.equal(mask[:H, :W], ids.flip(-1) == seg["id"])
    # an area-constrained crop reads classes, not segment ids
    constrained = SemanticTrainMapper((H // 2, W // 2), short_sides=[H], max_size=10 * W,
                                      single_category_max_area=0.75, color_aug=False)
    out = constrained(sample, np.random.default_rng(0))
    assert out["masks"].shape[1:] == (H // 2, W // 2) and out["masks"].any((1, 2)).sum() >= 1


def test_semantic_mapper_masks_crop_and_padding(root):
    ds = build_dataset("ade20k", str(root / "ade20k"), "train")
    sample = ds[0]
    mapper = SemanticTrainMapper((48, 48), short_sides=[20, 30], max_size=1000)
    out = mapper(sample, np.random.default_rng(0))
    assert out["image"].shape == (3, 48, 48) and out["image"].dtype == torch.uint8
    assert out["masks"].shape == (len(out["labels"]), 48, 48)
    assert (out["image"][:, 30:, :] == 128).all() or (out["image"][:, :, 40:] == 128).all()
    assert not out["masks"][:, -1, -1].any()  # padding is ignore: in no mask
    assert 255 not in out["labels"].tolist()
    # same seed, same sample; other seed, other augmentation
    again = mapper(sample, np.random.default_rng(0))
    assert torch.equal(again["image"], out["image"]) and torch.equal(again["masks"], out["masks"])
    assert not torch.equal(mapper(sample, np.random.default_rng(1))["image"], out["image"])
    images, targets, sizes = collate([out, again], (120, 110, 100), (50, 50, 50))
    assert images.shape == (2, 3, 48, 48)
    torch.testing.assert_close(images[0], (out["image"].float() - torch.tensor([120., 110, 100])[:, None, None]) / 50)


def test_resize_shortest_edge():
    assert resized_shape(480, 640, 512, 2048) == (512, 683)
    assert resized_shape(100, 1000, 512, 2048) == (205, 2048)
    assert resized_shape(40, 60, 32, 1000) == (32, 48)


def test_layout_and_file_errors_name_the_path(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="images.training"):
        build_dataset("ade20k", str(tmp_path), "train")
    with pytest.raises(FileNotFoundError, match="panoptic_val2017.json"):
        build_dataset("coco_panoptic", str(root / "ade20k"), "val")
    make_synthetic("cityscapes", str(tmp_path / "cs"), num_images=2, size=32, seed=0)
    ds = build_dataset("cityscapes", str(tmp_path / "cs"), "train")
    bad = ds.records[1]["file_name"]
    with open(bad, "wb") as f:
        f.write(b"not a png")
    with pytest.raises(ValueError, match=os.path.basename(bad)):
        ds[1]
    os.remove(ds.records[0]["sem_seg_file_name"])
    with pytest.raises(FileNotFoundError, match="labelTrainIds"):
        build_dataset("cityscapes", str(tmp_path / "cs"), "train")
    label = np.asarray(Image.open(build_dataset("ade20k", str(root / "ade20k"), "val").records[0]["sem_seg_file_name"]))
    assert rgb_to_id(np.stack([label, label * 0, label * 0], -1)).max() == label.max()
