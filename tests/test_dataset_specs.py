"""The table of dataset facts and the readers it drives: ADE20K-Full's 16-bit TIFFs and Mapillary
Vistas' palette PNGs read back exactly (ignore values mapped), the presets' numbers from the table,
the synthetic writers in the real file formats."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import maskformer_fast as mf
from maskformer_fast.dataset_specs import DATASETS, PRESET_DATASETS, get_dataset_spec
from train.datasets import build_dataset, read_classes_json
from train.make_synthetic import make_synthetic
from train.transforms import SemanticTrainMapper


def _official(path):
    with open(os.path.join(os.path.dirname(mf.__file__), "data", path)) as f:
        return json.load(f)


def test_every_preset_dataset_has_a_reader_classes_and_a_synthetic_writer():
    assert set(PRESET_DATASETS) == {"ade20k", "ade20k_full", "ade20k_panoptic", "coco_panoptic", "coco_stuff",
                                    "cityscapes", "mapillary"}
    for name in PRESET_DATASETS:
        spec = DATASETS[name]
        assert spec.synthetic is not None and spec.class_file and spec.recipe
        assert len(_official(spec.class_file)["categories"]) == spec.num_classes
        cfg = mf.get_config(f"maskformer_r50_{name}")
        assert (cfg.num_classes, cfg.ignore_value) == (spec.num_classes, spec.ignore_label)
    assert mf.get_config("maskformer_r50_ade20k_full").ignore_value == 65535  # IGNORE_VALUE: 65535
    assert mf.get_config("maskformer_swin_l_ade20k").crop_size == (640, 640)
    assert mf.get_config("maskformer_swin_l_ade20k_full").crop_size == (512, 512)
    with pytest.raises(ValueError, match="unknown dataset 'pascal'"):
        get_dataset_spec("pascal")


def _ade20k_full_root(tmp_path, labels):
    """One training and one validation image in the official prepare_ade20k_full_sem_seg.py layout."""
    root = tmp_path / "ADE20K_2021_17_01"
    for split in ("training", "validation"):
        os.makedirs(root / "images_detectron2" / split)
        os.makedirs(root / "annotations_detectron2" / split)
        Image.fromarray(np.zeros(labels.shape + (3,), np.uint8)).save(
            root / "images_detectron2" / split / f"ADE_{split}_1.jpg")
        Image.fromarray(labels).save(root / "annotations_detectron2" / split / f"ADE_{split}_1.tif")
    return tmp_path


def test_ade20k_full_reads_16_bit_tiff_train_ids_exactly(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 1, 254, 255, 256, 300, 846, 65535], np.uint16), size=(23, 31))
    root = _ade20k_full_root(tmp_path, labels)
    ds = build_dataset("ade20k_full", str(root), "val")
    assert (ds.info.num_classes, ds.info.ignore_label) == (847, 65535)
    sem = ds[0]["sem_seg"]
    np.testing.assert_array_equal(sem, labels.astype(np.int64))  # trainIds as stored; 65535 stays "ignore"

    mapper = SemanticTrainMapper.from_config(mf.get_config("maskformer_r50_ade20k_full", crop_size=(32, 40),
                                                           test_short_side=23, min_scale=1.0, max_scale=1.0))
    sample = mapper(ds[0], np.random.default_rng(1))
    # every class present becomes a mask, 255 and 846 included, 65535 (and the padding) none
    assert sample["labels"].tolist() == [0, 1, 254, 255, 256, 300, 846]
    assert int(sample["masks"].sum()) == int((labels != 65535).sum())

    labels[0, 0] = 847
    Image.fromarray(labels).save(root / "ADE20K_2021_17_01" / "annotations_detectron2" / "validation" / "ADE_validation_1.tif")
    with pytest.raises(ValueError, match=r"ADE_validation_1.tif has label 847, out of range for 847 classes"):
        build_dataset("ade20k_full", str(root), "val")[0]


@pytest.mark.parametrize("labels_dir", ["v1.2/labels", "labels"])
def test_mapillary_reads_palette_pngs_and_ignores_65(tmp_path, labels_dir):
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 66, size=(19, 27)).astype(np.uint8)
    raw[0, :3] = (0, 64, 65)
    for split in ("training", "validation"):
        os.makedirs(tmp_path / split / "images")
        os.makedirs(tmp_path / split / labels_dir)
        Image.fromarray(np.zeros(raw.shape + (3,), np.uint8)).save(tmp_path / split / "images" / "a.jpg")
        png = Image.fromarray(raw, mode="L")
        png.putpalette([v for c in range(256) for v in (c, 255 - c, 0)])
        png.save(tmp_path / split / labels_dir / "a.png")
        assert Image.open(tmp_path / split / labels_dir / "a.png").mode == "P"
    ds = build_dataset("mapillary", str(tmp_path), "train")
    assert ds.info.num_classes == 65
    np.testing.assert_array_equal(ds[0]["sem_seg"], np.where(raw == 65, 255, raw))


def test_synthetic_ade20k_full_and_mapillary_files_are_in_the_real_formats(tmp_path):
    make_synthetic("ade20k_full", str(tmp_path / "full"), num_images=2, size=32, seed=0)
    make_synthetic("mapillary", str(tmp_path / "mv"), num_images=2, size=32, seed=0)
    full = build_dataset("ade20k_full", str(tmp_path / "full"), "train")
    tif = Image.open(full.records[0]["sem_seg_file_name"])
    assert tif.format == "TIFF" and tif.mode == "I;16"
    stored = np.asarray(tif)
    assert set(np.unique(stored)) <= {0, 2, 5, 3, 11, 14, 18, 300, 846, 65535} and stored.max() == 65535
    assert (stored > 255).any() and (stored < 65535).any()
    np.testing.assert_array_equal(full[0]["sem_seg"], stored)
    mv = build_dataset("mapillary", str(tmp_path / "mv"), "val")
    png = Image.open(mv.records[0]["sem_seg_file_name"])
    assert png.mode == "P" and mv.records[0]["sem_seg_file_name"].endswith(os.path.join("v1.2", "labels", "000001.png"))
    assert png.getpalette()[3 * 13:3 * 14] == _official("mapillary.json")["categories"][13]["color"]  # Road
    raw = np.asarray(png)
    assert 65 in raw  # the unlabeled patch
    np.testing.assert_array_equal(mv[0]["sem_seg"], np.where(raw == 65, 255, raw))


def test_classes_json_names_colours_and_errors(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(["sky", {"name": "tree", "color": [1, 2, 3]}]))
    assert read_classes_json(str(path)) == (["sky", "tree"], [])  # not every class has a colour: none
    path.write_text(json.dumps([{"name": "sky", "color": [9, 8, 7]}, {"name": "tree", "color": [1, 2, 3]}]))
    assert read_classes_json(str(path)) == (["sky", "tree"], [(9, 8, 7), (1, 2, 3)])
    for bad, match in ((b"{", "cannot read"), (b"[]", "non-empty JSON list"), (b"[3]", "entry 0"),
                       (b'[{"name": "a", "color": [300, 0, 0]}]', "color of 'a'")):
        path.write_bytes(bad)
        with pytest.raises(ValueError, match=match):
            read_classes_json(str(path))
