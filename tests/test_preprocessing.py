"""One pre-processing path: image reading as Detectron2 (EXIF, modes, 16 bits), shared by predict
and the dataset readers, and training-time evaluation that gives predict's label maps."""
import ast
import dataclasses
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import maskformer_fast as mf
from maskformer_fast.preprocessing import read_image
from train.datasets import build_dataset
from train.make_synthetic import make_synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIF_ORIENTATION = 0x0112


def _exif(orientation):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif


@pytest.fixture
def photo():
    return np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)


@pytest.mark.parametrize("orientation,expected", [
    (1, lambda a: a), (3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)),
    (2, lambda a: a[:, ::-1]),
])
def test_exif_orientation_is_applied(tmp_path, photo, orientation, expected):
    path = str(tmp_path / "photo.png")
    Image.fromarray(photo).save(path, exif=_exif(orientation))  # PNG keeps pixels exact
    np.testing.assert_array_equal(read_image(path), expected(photo))


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64 * 32).astype(np.uint16).reshape(32, 64)
    path = str(tmp_path / "depth.png")
    Image.fromarray(values).save(path)
    got = read_image(path)
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert got.shape == (32, 64, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.repeat(expected[..., None], 3, -1))
    assert (got == 255).mean() < 0.01  # PIL's own convert("RGB") makes ~99.6% of it white


def test_palette_cmyk_alpha_and_grey_become_rgb(tmp_path, photo):
    rgb = Image.fromarray(photo)
    cases = {"p.png": rgb.convert("P"), "cmyk.jpg": rgb.convert("CMYK"), "rgba.png": rgb.convert("RGBA"),
             "la.png": rgb.convert("LA"), "l.png": rgb.convert("L")}
    for name, image in cases.items():
        path = str(tmp_path / name)
        image.save(path)
        with Image.open(path) as stored:
            expected = np.asarray(stored.convert("RGB"))  # Detectron2's convert_PIL_to_numpy(.., "RGB")
        got = read_image(path)
        assert got.shape == (30, 50, 3) and got.dtype == np.uint8, name
        np.testing.assert_array_equal(got, expected, err_msg=name)
    alpha = rgb.convert("RGBA")
    alpha.putalpha(0)  # fully transparent: the colour stays, alpha is dropped
    alpha.save(tmp_path / "clear.png")
    np.testing.assert_array_equal(read_image(str(tmp_path / "clear.png")), photo)


def test_float_and_broken_images_are_refused_by_name(tmp_path):
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match=r"f\.tif holds floating-point pixels"):
        read_image(str(tmp_path / "f.tif"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8not a jpeg")
    with pytest.raises(ValueError, match=r"cannot decode image .*broken\.jpg"):
        read_image(str(tmp_path / "broken.jpg"))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(str(tmp_path / "missing.png"))


def test_dataset_and_predict_read_the_same_pixels(tmp_path, photo):
    """An EXIF-rotated training photo: the dataset reader gives predict's (rotated) pixels."""
    root = tmp_path / "ade"
    make_synthetic("ade20k", str(root), num_images=1, size=32, seed=0)
    image_file = sorted(glob.glob(str(root / "**" / "images" / "validation" / "*.jpg"), recursive=True))[0]
    label_file = image_file.replace("images", "annotations").replace(".jpg", ".png")
    label = np.asarray(Image.open(label_file))
    rotated = np.ascontiguousarray(np.rot90(photo, -1))  # what the camera saw, 50x30
    Image.fromarray(photo).save(image_file, format="PNG", exif=_exif(6))  # any format behind a .jpg name
    Image.fromarray(np.resize(label, rotated.shape[:2])).save(label_file)
    sample = build_dataset("ade20k", str(root), "val").load(0)
    np.testing.assert_array_equal(sample["image"], rotated)
    np.testing.assert_array_equal(mf.predict.read_image(image_file), rotated)


def test_one_reader_and_no_cli_imports_below_the_clis():
    """One read_image definition; train/ imports nothing from the predict CLI."""
    definitions, predict_imports = [], []
    for path in glob.glob(os.path.join(ROOT, "maskformer_fast", "*.py")) + glob.glob(os.path.join(ROOT, "train", "*.py")):
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in ("read_image", "id_to_rgb", "rgb_to_id",
                                                                   "resized_shape", "normalize"):
                definitions.append((os.path.basename(path), node.name))
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("predict") and "train" in path:
                predict_imports.append(path)
    assert sorted(name for _, name in definitions) == ["id_to_rgb", "normalize", "read_image", "resized_shape",
                                                       "rgb_to_id"]
    assert {f for f, _ in definitions} == {"preprocessing.py"}
    assert predict_imports == []


TINY = dict(num_decoder_layers=1, dim_feedforward=64, hidden_dim=64, conv_dim=64, mask_dim=64, num_queries=8,
            nheads=4, frozen_bn=False, test_short_side=40, test_max_size=256)


def test_eval_only_and_predict_write_the_same_label_maps(tmp_path):
    """A train.py checkpoint whose config differs from its preset: --eval-only builds the model
    from the saved config (as predict does) and writes exactly predict's label maps."""
    root = tmp_path / "ade"
    make_synthetic("ade20k", str(root), num_images=2, size=48, seed=1, num_val=2)
    torch.manual_seed(0)
    cfg = mf.get_config("maskformer_r50_ade20k", **TINY)
    model = mf.build_model(cfg)
    with torch.no_grad():  # sharpen the random heads so that label maps vary across the image
        model.predictor.class_embed.weight.mul_(30)
        model.predictor.mask_embed.layers[2].weight.mul_(30)
    ckpt = str(tmp_path / "model_0000300.pth")
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(cfg), "iter": 300}, ckpt)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    common = ["--weights", ckpt, "--device", "cpu", "--engine", "eager"]
    train = subprocess.run([sys.executable, os.path.join(ROOT, "train", "train.py"), "--eval-only", *common,
                            "--data-root", str(root), "--output", str(tmp_path / "eval"), "--no-progress"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    images = sorted(glob.glob(str(root / "**" / "images" / "validation" / "*.jpg"), recursive=True))
    predict = subprocess.run([sys.executable, "-m", "maskformer_fast.predict", *common, "--input", *images,
                              "--output", str(tmp_path / "pred")], env=env, capture_output=True, text=True,
                             timeout=300, cwd=ROOT)
    assert predict.returncode == 0, predict.stderr[-3000:]
    maps = 0
    for image in images:
        name = os.path.splitext(os.path.basename(image))[0] + ".png"
        from_eval = (tmp_path / "eval" / "eval" / "semantic_predictions" / name).read_bytes()
        from_predict = (tmp_path / "pred" / name).read_bytes()
        assert from_eval == from_predict, name
        maps += len(np.unique(np.asarray(Image.open(tmp_path / "pred" / name)))) > 1
    assert maps == len(images)  # real label maps, not constant ones
