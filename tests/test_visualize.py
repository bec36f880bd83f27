"""maskformer_fast.visualize: shipped class names/palettes, overlays, palette label PNGs."""
import importlib.resources
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import maskformer_fast as mf
from maskformer_fast import visualize as vis
from maskformer_fast.config import DATASETS, thing_classes
from maskformer_fast.predict import write_result
from maskformer_fast.preprocessing import save_label_map

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTS = {"ade20k": 150, "ade20k_panoptic": 150, "ade20k_full": 847, "coco_panoptic": 133, "coco_stuff": 171,
          "cityscapes": 19, "mapillary": 65}
# contiguous id -> (name, official colour), copied by hand from the official lists
OFFICIAL = {
    "ade20k": {0: ("wall", (120, 120, 120)), 2: ("sky", (6, 230, 230)), 12: ("person", (150, 5, 61))},
    "coco_panoptic": {0: ("person", (220, 20, 60)), 2: ("car", (0, 0, 142)), 132: ("rug-merged", (250, 141, 255))},
    "coco_stuff": {0: ("person", (220, 20, 60)), 80: ("banner", (255, 255, 128)), 83: ("bridge", (150, 100, 100))},
    "cityscapes": {0: ("road", (128, 64, 128)), 10: ("sky", (70, 130, 180)), 18: ("bicycle", (119, 11, 32))},
    "mapillary": {0: ("Bird", (165, 42, 42)), 2: ("Curb", (196, 196, 196))},
}


def blend(image_rgb, color):
    """The documented overlay blend: alpha 1/2 as the integer weight 128/256, rounded half up."""
    return tuple((int(i) + int(c) + 1) // 2 for i, c in zip(image_rgb, color))


# --------------------------------------------------------------------------- shipped metadata


def test_every_dataset_key_has_shipped_names_found_by_importlib_resources():
    assert set(vis.DATA_FILES) == set(DATASETS)
    for dataset, filename in vis.DATA_FILES.items():
        resource = importlib.resources.files("maskformer_fast").joinpath("data", filename)
        assert resource.is_file(), filename
        doc = json.loads(resource.read_text(encoding="utf-8"))
        assert len(doc["categories"]) == doc["num_classes"] == COUNTS[dataset] and doc["palette_source"]
        meta = vis.dataset_metadata(dataset)
        assert meta.num_classes == len(meta.colors) == len(meta.isthing) == COUNTS[dataset]
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in meta.colors)
        assert all(n and n == n.strip() for n in meta.names)


def test_setup_packages_the_data_files(tmp_path):
    """egg_info lists what build_py copies into the wheel: the JSON files must be among them."""
    env = dict(os.environ, MASKFORMER_FAST_NO_EXT="1")
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=300)
    sources = (tmp_path / "maskformer_fast.egg-info" / "SOURCES.txt").read_text().split()
    assert {f"maskformer_fast/data/{f}" for f in vis.DATA_FILES.values()} <= set(sources)


@pytest.mark.parametrize("dataset", sorted(OFFICIAL))
def test_official_names_and_colours(dataset):
    meta = vis.dataset_metadata(dataset)
    for index, (name, color) in OFFICIAL[dataset].items():
        assert (meta.names[index], meta.colors[index]) == (name, color)


def test_thing_flags_match_the_config_and_ade20k_full_is_generated():
    for dataset in ("coco_panoptic", "ade20k_panoptic"):
        meta = vis.dataset_metadata(dataset)
        assert tuple(i for i, t in enumerate(meta.isthing) if t) == thing_classes(dataset)
    assert vis.dataset_metadata("ade20k_panoptic") == vis.dataset_metadata("ade20k")
    full = vis.dataset_metadata("ade20k_full")
    assert full.names[0] == "wall" and full.names[846] == "adding machine, totalizer, totaliser"
    assert list(full.colors) == vis.generated_palette(847) and full.palette_source.startswith("generated")
    assert len(set(full.colors)) == 847


def test_unknown_dataset_truncation_padding_and_custom_names():
    unknown = vis.dataset_metadata(None, 20)
    assert unknown.names[17] == "class 17" and list(unknown.colors) == vis.generated_palette(20)
    assert vis.dataset_metadata("not_a_dataset", 3).names == ("class 0", "class 1", "class 2")
    assert vis.dataset_metadata("cityscapes", 2).names == ("road", "sidewalk")
    padded = vis.dataset_metadata("cityscapes", 21)
    assert padded.names[18:] == ("bicycle", "class 19", "class 20") and padded.colors[20] == vis.generated_palette(21)[20]
    custom = vis.dataset_metadata("cityscapes", 2, ["cat", "dog"])
    assert custom.names == ("cat", "dog") and custom.colors[0] == (128, 64, 128)
    with pytest.raises(ValueError, match="3 class names given for 2 classes"):
        vis.dataset_metadata("cityscapes", 2, ["a", "b", "c"])
    with pytest.raises(ValueError, match="no classes"):
        vis.dataset_metadata(None)
    assert mf.dataset_metadata is vis.dataset_metadata and "visualize" in dir(mf)


def test_read_class_names(tmp_path):
    (tmp_path / "a.txt").write_text("cat\n\n  dog \n")
    (tmp_path / "b.json").write_text(' ["cat", "dog, puppy"]')
    assert vis.read_class_names(str(tmp_path / "a.txt")) == ["cat", "dog"]
    assert vis.read_class_names(str(tmp_path / "b.json")) == ["cat", "dog, puppy"]
    for text, message in (("[1, 2]", "strings only"), ("[cat", "not a valid JSON list"), ("\n \n", "no names")):
        (tmp_path / "bad").write_text(text)
        with pytest.raises(ValueError, match=message):
            vis.read_class_names(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="cannot read class names file .*nope"):
        vis.read_class_names(str(tmp_path / "nope"))


def test_instance_shades_are_distinct_and_near_the_colour():
    for color in ((220, 20, 60), (255, 255, 255), (0, 0, 0), (120, 120, 120)):
        shades = vis.instance_shades(color, 20)
        assert shades[0] == color and len(set(shades)) == 20
        assert all(max(abs(a - b) for a, b in zip(s, color)) <= 2 * vis.SHADE_STEP for s in shades)
    assert vis.instance_shades((1, 2, 3), 200)[:5] == vis.instance_shades((1, 2, 3), 5)  # deterministic prefix


# --------------------------------------------------------------------------- overlays


def _two_tone_image(h, w, split):
    """Left of column ``split`` one colour, right of it another (so blends are known per region)."""
    image = np.empty((h, w, 3), np.uint8)
    image[:, :split] = (10, 200, 77)
    image[:, split:] = (250, 3, 140)
    return image


def _legend_rows(overlay, color):
    """Top row and height of the legend swatch of ``color``, searched in the legend box (the rows
    whose first pixel is the legend background)."""
    box_height = int(np.argmin((overlay[:, 0] == vis.LEGEND_BACKGROUND).all(-1)))
    assert box_height > 0, "no legend box at the top-left corner"
    ys = np.flatnonzero((overlay[:box_height, vis.LEGEND_PAD + 1] == color).all(-1))
    assert len(ys), f"no legend swatch of colour {color}"
    assert np.array_equal(ys, np.arange(ys[0], ys[0] + len(ys))), "the swatch is one block"
    return int(ys[0]), len(ys)


def _assert_legend_text(overlay, color, text, font):
    """The row of ``color`` shows ``text``: the crop equals the same text drawn by ImageDraw."""
    y, line = _legend_rows(overlay, color)
    x = 2 * vis.LEGEND_PAD + line
    expected = Image.new("RGB", (overlay.shape[1], overlay.shape[0]), vis.LEGEND_BACKGROUND)
    ImageDraw.Draw(expected).text((x, y), text, fill=vis.LEGEND_TEXT, font=font)
    right = x + font.getbbox(text)[2]
    crop = overlay[y:y + line, x:right]
    np.testing.assert_array_equal(crop, np.asarray(expected)[y:y + line, x:right])
    assert (crop != vis.LEGEND_BACKGROUND).any(-1).sum() > 15, "text pixels, not the plain box"


def test_semantic_overlay_blends_outlines_and_legend():
    h, w, split = 120, 200, 130
    image = _two_tone_image(h, w, split)
    labels = np.zeros((h, w), np.int64)
    labels[:, split:] = 2  # wall (130 columns) | sky (70 columns)
    meta = vis.dataset_metadata("ade20k")
    out = vis.draw_semantic_overlay(image, labels, meta)
    assert out.mode == "RGB" and out.size == (w, h)
    o = np.asarray(out)
    wall, sky = (120, 120, 120), (6, 230, 230)
    # interiors (below the legend, away from the boundary): the blend of image and class colour
    assert (o[60:, 5:split - 2] == blend((10, 200, 77), wall)).all()
    assert (o[60:, split + 2:] == blend((250, 3, 140), sky)).all()
    # outline: each side of the boundary in its class's own colour
    assert (o[60:, split - 1] == wall).all() and (o[60:, split] == sky).all()
    # legend: larger class first, swatches in class colours, names as text
    (y_wall, line), (y_sky, _) = _legend_rows(o, wall), _legend_rows(o, sky)
    assert y_wall == vis.LEGEND_PAD and y_sky == y_wall + line + vis.LEGEND_PAD
    font = vis.overlay_font(h, w)
    _assert_legend_text(o, wall, "wall", font)
    _assert_legend_text(o, sky, "sky", font)
    with pytest.raises(AssertionError):  # the check tells texts apart
        _assert_legend_text(o, sky, "skz", font)


def test_semantic_overlay_shows_first_synonym_and_rejects_bad_input():
    labels = np.full((80, 120), 6)  # "road, route"
    out = np.asarray(vis.draw_semantic_overlay(np.zeros((80, 120, 3), np.uint8), labels, vis.dataset_metadata("ade20k")))
    _assert_legend_text(out, (140, 140, 140), "road", vis.overlay_font(80, 120))
    with pytest.raises(ValueError, match="outside 0..149"):
        vis.draw_semantic_overlay(np.zeros((80, 120, 3), np.uint8), labels + 150, vis.dataset_metadata("ade20k"))
    with pytest.raises(ValueError, match="prediction's size"):
        vis.draw_semantic_overlay(np.zeros((81, 120, 3), np.uint8), labels, vis.dataset_metadata("ade20k"))


def _panoptic_scene():
    """void top rows, sky-other-merged stuff (the largest class), three touching persons and a car."""
    h, w = 120, 200
    ids = np.full((h, w), 1)
    ids[:30] = 0
    ids[60:110, 20:60], ids[60:110, 60:100], ids[60:110, 100:140] = 2, 3, 4
    ids[60:110, 150:190] = 5
    info = [{"id": 1, "category_id": 119, "isthing": False}, {"id": 2, "category_id": 0, "isthing": True},
            {"id": 3, "category_id": 0, "isthing": True}, {"id": 4, "category_id": 0, "isthing": True},
            {"id": 5, "category_id": 2, "isthing": True}]
    return np.full((h, w, 3), 90, np.uint8), ids, info


def test_panoptic_overlay_shades_instances_of_one_class():
    image, ids, info = _panoptic_scene()
    meta = vis.dataset_metadata("coco_panoptic")
    o = np.asarray(vis.draw_panoptic_overlay(image, ids, info, meta))
    assert o.shape == image.shape
    assert (o[:30, 150:] == 90).all(), "void: the image itself (the legend is at the left)"
    assert meta.names[119] == "sky-other-merged"
    assert (o[32:58, 150:195] == blend((90,) * 3, meta.colors[119])).all()
    person = (220, 20, 60)
    interiors = [tuple(o[85, x]) for x in (40, 80, 120)]
    assert interiors[0] == blend((90,) * 3, person), "the first instance has the class colour itself"
    assert len(set(interiors)) == 3, "each person its own shade"
    shades = vis.instance_shades(person, 3)
    assert interiors == [blend((90,) * 3, s) for s in shades]
    assert tuple(o[85, 170]) == blend((90,) * 3, (0, 0, 142)), "the car: the first of its class"
    # outlines between touching persons, each side in its own shade
    assert tuple(o[85, 59]) == shades[0] and tuple(o[85, 60]) == shades[1]
    # legend: classes by area (stuff, then person, then car), one swatch per class
    font = vis.overlay_font(*ids.shape)
    _assert_legend_text(o, meta.colors[119], "sky-other-merged", font)
    _assert_legend_text(o, person, "person", font)
    _assert_legend_text(o, (0, 0, 142), "car", font)
    assert _legend_rows(o, meta.colors[119])[0] < _legend_rows(o, person)[0] < _legend_rows(o, (0, 0, 142))[0]


def _instance_scene():
    h, w = 120, 200
    masks = np.zeros((3, h, w), bool)
    masks[0, 60:110, 80:140] = True   # person 0.93
    masks[1, 90:115, 130:190] = True  # car 0.71, under the person where they overlap
    masks[2, 5:40, 150:195] = True    # dog 0.30: below the threshold
    return np.full((h, w, 3), 90, np.uint8), masks, np.float32([0.93, 0.71, 0.30]), np.array([0, 2, 16])


def _label_crop(o, xy, text, color, font, text_fill):
    """The label box as ImageDraw draws it, and the overlay's crop at the same place."""
    x, y = xy
    right, bottom = font.getbbox(text)[2:]
    expected = Image.new("RGB", (o.shape[1], o.shape[0]), color)
    ImageDraw.Draw(expected).text((x, y), text, fill=text_fill, font=font)
    return o[y:y + bottom, x:x + right], np.asarray(expected)[y:y + bottom, x:x + right]


def test_instance_overlay_labels_scores_and_threshold():
    image, masks, scores, labels = _instance_scene()
    meta = vis.dataset_metadata("coco_panoptic")
    o = np.asarray(vis.draw_instance_overlay(image, masks, scores, labels, meta, score_threshold=0.5))
    assert o.shape == image.shape
    person, car = (220, 20, 60), (0, 0, 142)
    assert tuple(o[100, 100]) == blend((90,) * 3, person)
    assert tuple(o[108, 135]) == blend((90,) * 3, person), "the better mask on top"
    assert tuple(o[110, 170]) == blend((90,) * 3, car)
    assert (o[5:40, 150:195] == 90).all(), "the dog (0.30 < 0.5) is not drawn"
    font = vis.overlay_font(120, 200)
    crop, expected = _label_crop(o, (80, 60), "person 0.93", person, font, (255, 255, 255))
    np.testing.assert_array_equal(crop, expected)
    assert (crop != person).any(-1).sum() > 15, "text pixels, not the plain box"
    wrong_crop, wrong = _label_crop(o, (80, 60), "person 0.92", person, font, (255, 255, 255))
    assert not np.array_equal(wrong_crop, wrong), "the comparison sees the score digits"
    crop, expected = _label_crop(o, (130, 90), "car 0.71", car, font, (255, 255, 255))
    np.testing.assert_array_equal(crop, expected)
    _assert_legend_text(o, person, "person", font)
    _assert_legend_text(o, car, "car", font)
    # top-k: only the best mask; threshold 0: the dog too
    top1 = np.asarray(vis.draw_instance_overlay(image, masks, scores, labels, meta, 0.5, top_k=1))
    assert tuple(top1[110, 170]) == (90, 90, 90)
    everything = np.asarray(vis.draw_instance_overlay(image, masks, scores, labels, meta, 0.0))
    assert tuple(everything[20, 185]) == blend((90,) * 3, meta.colors[16])


def test_instance_shades_for_two_masks_of_one_class():
    image, masks, scores, _ = _instance_scene()
    meta = vis.dataset_metadata("coco_panoptic")
    o = np.asarray(vis.draw_instance_overlay(image, masks, scores, np.array([0, 0, 0]), meta, 0.5))
    shades = vis.instance_shades((220, 20, 60), 2)
    assert tuple(o[100, 100]) == blend((90,) * 3, shades[0]) and tuple(o[110, 170]) == blend((90,) * 3, shades[1])


# --------------------------------------------------------------------------- palette label PNGs


def test_semantic_png_is_a_palette_image_of_the_class_ids(tmp_path):
    labels = np.array([[0, 2, 12], [149, 2, 0]])
    meta = vis.dataset_metadata("ade20k")
    write_result("semantic", torch.from_numpy(labels), str(tmp_path), "x", 150, meta)
    png = Image.open(tmp_path / "x.png")
    assert png.mode == "P"
    np.testing.assert_array_equal(np.array(png), labels)
    palette = png.getpalette()
    for index, (_, color) in OFFICIAL["ade20k"].items():
        assert tuple(palette[3 * index:3 * index + 3]) == color
    cityscapes = vis.dataset_metadata("cityscapes")
    save_label_map(np.array([[0, 18]]), 19, str(tmp_path / "c.png"), vis.label_palette(cityscapes))
    palette = Image.open(tmp_path / "c.png").getpalette()
    assert tuple(palette[0:3]) == (128, 64, 128) and tuple(palette[54:57]) == (119, 11, 32)


def test_more_than_255_classes_keep_the_uint16_png(tmp_path):
    labels = np.array([[0, 300, 846]])
    save_label_map(labels, 847, str(tmp_path / "f.png"), vis.label_palette(vis.dataset_metadata("ade20k_full")))
    png = Image.open(tmp_path / "f.png")
    assert png.mode.startswith("I") and png.getpalette() is None
    np.testing.assert_array_equal(np.array(png), labels)
