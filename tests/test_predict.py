"""The predict CLI (maskformer_fast/predict.py) against direct calls of the model and inference."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import maskformer_fast as mf
from maskformer_fast.predict import main
from train.checkpoint import rng_state

TINY = dict(num_decoder_layers=1, dim_feedforward=64, hidden_dim=64, conv_dim=64, mask_dim=64, num_queries=8,
            nheads=4, num_classes=5, test_short_side=64, test_max_size=256)
TINY_ARGS = [f"{k}={v}" for k, v in TINY.items()]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model saved as a train.py checkpoint and as a bare state dict, plus two PNG images."""
    tmp = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    cfg = mf.get_config("maskformer_r50_ade20k", **TINY)
    model = mf.build_model(cfg).eval()
    with torch.no_grad():  # sharpen the random heads so that label maps vary across the image
        for name, param in model.named_parameters():
            if name.startswith(("predictor.class_embed", "predictor.mask_embed.layers.2")):
                param.mul_(30)
    optimizer = torch.optim.AdamW(model.parameters())
    train_ckpt, bare = str(tmp / "model_0000010.pth"), str(tmp / "state.pth")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iter": 10,
                "data_position": {"epoch": 0, "position": 40}, "rng": [rng_state()],
                "config": dataclasses.asdict(cfg), "engine": "fast"}, train_ckpt)
    torch.save(model.state_dict(), bare)
    images = tmp / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in (("a", (50, 70)), ("b", (81, 40))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"{name}.png")
    return dict(tmp=tmp, cfg=cfg, model=model, train_ckpt=train_ckpt, bare=bare, images=images)


def _direct_outputs(setup, name):
    """The model on the image resized and normalised by hand (PIL bilinear, short side 64)."""
    image = np.asarray(Image.open(setup["images"] / f"{name}.png").convert("RGB"))
    h, w = image.shape[:2]
    s = 64 / min(h, w)
    shape = (64, int(w * s + 0.5)) if h < w else (int(h * s + 0.5), 64)
    resized = np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.BILINEAR)).astype(np.float32)
    x = torch.from_numpy((resized - np.float32([123.675, 116.28, 103.53])) / np.float32([58.395, 57.12, 57.375]))
    with torch.no_grad():
        out = setup["model"](x.permute(2, 0, 1)[None])
    return out, shape, (h, w)


def test_semantic_png_equals_model_plus_semantic_inference(setup):
    out_dir = setup["tmp"] / "sem"
    main(["--weights", setup["train_ckpt"], "--input", str(setup["images"]), "--output", str(out_dir),
          "--device", "cpu", "--engine", "eager"])
    for name in ("a", "b"):
        out, shape, size = _direct_outputs(setup, name)
        expected = mf.semantic_inference(out, [shape], [size])[0].argmax(0).numpy()
        assert len(np.unique(expected)) > 1, "a constant map would not test the resize and normalisation"
        png = Image.open(out_dir / f"{name}.png")
        assert png.mode == "P" and png.size == (size[1], size[0])  # the ids, with the ADE20K palette
        np.testing.assert_array_equal(np.asarray(png), expected)
        assert png.getpalette()[:6] == [120, 120, 120, 180, 120, 120]  # wall, building
        overlay = Image.open(out_dir / f"{name}_overlay.png")
        assert overlay.mode == "RGB" and overlay.size == png.size


def test_train_checkpoint_and_bare_state_dict_agree(setup):
    image = str(setup["images"] / "a.png")
    main(["--weights", setup["train_ckpt"], "--input", image, "--output", str(setup["tmp"] / "ckpt")])
    main(TINY_ARGS + ["--weights", setup["bare"], "--input", image, "--output", str(setup["tmp"] / "bare")])
    main(TINY_ARGS + ["--input", image, "--output", str(setup["tmp"] / "random")])  # random init differs
    ckpt, bare, random_init = (np.asarray(Image.open(setup["tmp"] / d / "a.png")) for d in ("ckpt", "bare", "random"))
    np.testing.assert_array_equal(ckpt, bare)
    assert not np.array_equal(ckpt, random_init)


def test_panoptic_png_decodes_to_segments_info(setup):
    out_dir = setup["tmp"] / "pan"
    main(["--weights", setup["train_ckpt"], "--task", "panoptic", "--thing-classes", "0-1", "object_mask_threshold=0",
          "overlap_threshold=0", "--input", str(setup["images"] / "a.png"), "--output", str(out_dir), "--device", "cpu"])
    rgb = np.asarray(Image.open(out_dir / "a.png")).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 ** 2 * rgb[..., 2]
    info = json.load(open(out_dir / "a.json"))["segments_info"]
    assert info, "thresholds 0 keep every query: there must be segments"
    assert set(np.unique(ids)) - {0} == {s["id"] for s in info}
    for s in info:
        assert s["area"] == int((ids == s["id"]).sum())
        assert s["isthing"] == (s["category_id"] in (0, 1))
    # the same ids as panoptic_inference on the direct outputs
    out, shape, size = _direct_outputs(setup, "a")
    expected, segments = mf.panoptic_inference(out, [shape], [size], mf.PanopticMetadata({0, 1}), 0.0, 0.0)[0]
    np.testing.assert_array_equal(ids, expected.numpy())
    assert [s["category_id"] for s in segments] == [s["category_id"] for s in info]
    assert Image.open(out_dir / "a_overlay.png").size == (70, 50)


def test_instance_npz_and_json(setup):
    out_dir = setup["tmp"] / "inst"
    main(["--weights", setup["train_ckpt"], "--task", "instance", "--top-k", "7",
          "--input", str(setup["images"] / "b.png"), "--output", str(out_dir), "--device", "cpu"])
    saved = np.load(out_dir / "b_masks.npz")
    meta = json.load(open(out_dir / "b.json"))
    assert saved["masks"].shape == (7, 81, 40) and saved["masks"].dtype == np.bool_
    assert [i["label"] for i in meta["instances"]] == saved["labels"].tolist()
    assert np.all(np.diff(saved["scores"]) <= 0)
    out, shape, size = _direct_outputs(setup, "b")
    expected = mf.instance_inference(out, [shape], [size], top_k=7)[0]
    np.testing.assert_array_equal(saved["masks"], expected["masks"].numpy())
    assert Image.open(out_dir / "b_overlay.png").size == (40, 81)


def test_bad_inputs_name_the_file(setup, tmp_path):
    with pytest.raises(SystemExit, match="nope.png"):
        main(TINY_ARGS + ["--input", str(tmp_path / "nope.png")])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="broken.png"):
        main(TINY_ARGS + ["--input", str(tmp_path / "broken.png"), "--output", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="missing.pth"):
        main(["--weights", str(tmp_path / "missing.pth")])
    with pytest.raises(SystemExit) as e:
        main(["--task", "depth"])
    assert e.value.code == 2  # argparse


def test_default_run_without_arguments_subprocess():
    """The README's first command: the full R50 ADE20K preset, random init, one generated image."""
    r = subprocess.run([sys.executable, "-m", "maskformer_fast.predict"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "maskformer_r50_ade20k: 41,254,743 parameters" in r.stdout
    assert "synthetic: 512x384 -> labels (384, 512)" in r.stdout and "images/s" in r.stdout


def test_official_pth_and_pkl_weights(setup, tmp_path):
    """A Detectron2-named .pth goes to the official converter, like a .pkl: same label maps."""
    from maskformer_fast.predict import Predictor, read_image
    from tests.test_convert import d2_resnet_keys, head_keys, random_checkpoint, save_pkl, save_pth
    official = random_checkpoint({**d2_resnet_keys(50, deeplab_stem=False),
                                  **head_keys([256, 512, 1024, 2048], num_classes=5, dec_layers=1)})
    official = {k: v.abs() if k.endswith("running_var") else v for k, v in official.items()}
    pth, pkl = save_pth(tmp_path / "model_final.pth", official), save_pkl(tmp_path / "model_final.pkl", official)
    args = ["num_decoder_layers=1", "num_classes=5", "test_short_side=64", "--input", str(setup["images"] / "a.png")]
    main(args + ["--weights", str(pth), "--output", str(tmp_path / "pth")])
    main(args + ["--weights", str(pkl), "--output", str(tmp_path / "pkl")])
    cfg = mf.get_config("maskformer_r50_ade20k", num_decoder_layers=1, num_classes=5, test_short_side=64)
    model = mf.load_official_checkpoint(mf.build_model(cfg).eval(), pkl)
    expected = Predictor(model, cfg)(read_image(str(setup["images"] / "a.png"))).numpy()
    for d in ("pth", "pkl"):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / d / "a.png")), expected)


def test_batches_share_a_forward_per_shape_and_change_no_result(setup, tmp_path):
    # Three images, two of one shape: --batch-size 3 runs two forwards and writes what
    # --batch-size 1 writes (same-shape images are stacked without padding).
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, (h, w) in (("p", (50, 70)), ("q", (81, 40)), ("r", (50, 70))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    forwards = []
    model_forward = mf.MaskFormer.pad_images  # called once by every forward, eager or fast (optimize)

    def counting_forward(self, images):
        forwards.append(images.shape[0])
        return model_forward(self, images)

    for task in ("semantic", "panoptic"):
        outputs = {}
        for batch in (1, 3):
            forwards.clear()
            out_dir = tmp_path / f"{task}{batch}"
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(mf.MaskFormer, "pad_images", counting_forward)
                main(["--weights", setup["train_ckpt"], "--task", task, "--thing-classes", "0-1", "--device", "cpu",
                      "--batch-size", str(batch), "--input", str(folder), "--output", str(out_dir)])
            assert sorted(forwards) == ([1, 1, 1] if batch == 1 else [1, 2]), forwards
            outputs[batch] = {f: (out_dir / f).read_bytes() for f in sorted(os.listdir(out_dir))}
        assert len(outputs[1]) == (6 if task == "semantic" else 9) and outputs[1] == outputs[3], task  # with overlays
    with pytest.raises(SystemExit):
        main(TINY_ARGS + ["--batch-size", "0"])


def test_panoptic_presets_default_to_their_thing_classes(monkeypatch):
    # ADE20K panoptic: the 100 official thing classes without --thing-classes (COCO: 0..79)
    seen = {}
    real_init = mf.predict.Predictor.__init__

    def capture(self, model, cfg, task="semantic", device="cpu", short_side=None, tta=False, amp="none",
                thing_classes=(), top_k=100):
        seen[cfg.dataset] = tuple(thing_classes)
        real_init(self, model, cfg, task, device, short_side, tta, amp, thing_classes, top_k)

    monkeypatch.setattr(mf.predict.Predictor, "__init__", capture)
    dataset_classes = [a for a in TINY_ARGS if not a.startswith("num_classes=")] + ["pixel_decoder_encoder_layers=0"]
    for preset in ("maskformer_r50_ade20k_panoptic", "maskformer_r50_coco_panoptic"):
        main(["--preset", preset, "--task", "panoptic", *dataset_classes])
    assert seen["coco_panoptic"] == tuple(range(80))
    assert len(seen["ade20k_panoptic"]) == 100 and 12 in seen["ade20k_panoptic"] and 0 not in seen["ade20k_panoptic"]
    # fewer classes than the dataset's thing ids: a clear error, not a silent subset
    with pytest.raises(SystemExit, match="pass --thing-classes"):
        main(["--preset", "maskformer_r50_ade20k_panoptic", "--task", "panoptic", *TINY_ARGS])


def _exit_code(argv):
    try:
        main(argv)
    except SystemExit as e:
        return e.code
    return 0


def test_outputs_never_replace_inputs_or_existing_files(setup, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = photos / "photo.png"
    photo.write_bytes((setup["images"] / "a.png").read_bytes())
    before = photo.read_bytes()
    for extra in ([], ["--overwrite"]):  # replacing an input is refused even with --overwrite
        assert _exit_code(TINY_ARGS + ["--input", str(photos), "--output", str(photos), *extra]) == 2
        assert "would overwrite the input" in capsys.readouterr().err and photo.read_bytes() == before
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo.png").write_bytes(b"an earlier result")
    assert _exit_code(TINY_ARGS + ["--input", str(photo), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "photo.png").read_bytes() == b"an earlier result"
    assert _exit_code(TINY_ARGS + ["--input", str(photo), "--output", str(out), "--overwrite"]) == 0
    assert Image.open(out / "photo.png").size == (70, 50)


def test_nan_weights_are_refused(setup, tmp_path, capsys):
    state = {k: v.clone() for k, v in setup["model"].state_dict().items()}
    state["predictor.class_embed.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    assert _exit_code(TINY_ARGS + ["--weights", str(tmp_path / "nan.pth"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nan.pth" in err and "NaN" in err and not (tmp_path / "o").exists()


def test_max_pixels_refuses_large_images_in_one_line(setup, tmp_path, capsys):
    image = str(setup["images"] / "a.png")  # 70 x 50 = 3500 pixels
    for limit in ("2000", "1000"):  # PIL warns between 1x and 2x its limit and raises beyond
        assert _exit_code(TINY_ARGS + ["--input", image, "--output", str(tmp_path), "--max-pixels", limit]) == 2
        err = capsys.readouterr().err
        assert "a.png has 3500 pixels, above --max-pixels " + limit in err and len(err.strip().splitlines()) == 1
    assert _exit_code(TINY_ARGS + ["--input", image, "--output", str(tmp_path), "--max-pixels", "3500"]) == 0


def test_write_errors_and_hostile_weights_are_one_line(setup, tmp_path, capsys, monkeypatch):
    import errno

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))
    torch.save({"model": {"w": Evil()}}, tmp_path / "evil.pth")
    assert _exit_code(["--weights", str(tmp_path / "evil.pth")]) == 2
    err = capsys.readouterr().err
    assert "evil.pth" in err and "weights_only=False" not in err and not (tmp_path / "pwned").exists()
    (tmp_path / "empty.pth").write_bytes(b"")
    assert _exit_code(["--weights", str(tmp_path / "empty.pth")]) == 2
    assert "empty.pth: not a complete torch file" in capsys.readouterr().err

    def full_disk(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Image.Image, "save", full_disk)
    assert _exit_code(TINY_ARGS + ["--input", str(setup["images"] / "a.png"), "--output", str(tmp_path / "o")]) == 2
    assert "cannot write the prediction of a into" in capsys.readouterr().err


def test_cli_errors_have_no_traceback_subprocess(tmp_path):
    (tmp_path / "junk.pth").write_bytes(os.urandom(64))
    r = subprocess.run([sys.executable, "-m", "maskformer_fast.predict", "--weights", str(tmp_path / "junk.pth")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "junk.pth" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_missing_gpu_file_as_output_and_strip_images(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert _exit_code(TINY_ARGS + ["--device", "cuda"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err
    assert _exit_code(TINY_ARGS + ["--device", "gpu"]) == 2
    assert "'gpu' is not a torch device name" in capsys.readouterr().err
    (tmp_path / "taken").write_text("a user's file")
    assert _exit_code(TINY_ARGS + ["--input", str(setup["images"] / "a.png"), "--output", str(tmp_path / "taken")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "a user's file"
    # a 1 x 700 strip: short side 64 then the long-side cap 256 leave 256/700 = 0.37 rows, which
    # rounds to 0: resized to one row instead, predicted, written at the input size
    Image.fromarray(np.full((1, 700, 3), 128, np.uint8)).save(tmp_path / "strip.png")
    assert _exit_code(TINY_ARGS + ["--input", str(tmp_path / "strip.png"), "--output", str(tmp_path / "o")]) == 0
    assert Image.open(tmp_path / "o" / "strip.png").size == (700, 1)


def test_overlays_are_outputs_too(setup, tmp_path, capsys):
    image = str(setup["images"] / "a.png")
    assert _exit_code(TINY_ARGS + ["--input", image, "--output", str(tmp_path / "plain"), "--no-overlay"]) == 0
    assert sorted(os.listdir(tmp_path / "plain")) == ["a.png"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_overlay.png").write_bytes(b"an earlier drawing")
    assert _exit_code(TINY_ARGS + ["--input", image, "--output", str(out)]) == 2
    assert "a_overlay.png exists" in capsys.readouterr().err and not (out / "a.png").exists()
    assert _exit_code(TINY_ARGS + ["--input", image, "--output", str(out), "--no-overlay"]) == 0  # not written
    assert (out / "a_overlay.png").read_bytes() == b"an earlier drawing"
    # the class names file is an input: a panoptic a.json output must not replace it
    names = out / "a.json"
    names.write_text(json.dumps([f"thing {i}" for i in range(5)]))
    assert _exit_code(TINY_ARGS + ["--task", "panoptic", "--class-names", str(names), "--input", image,
                                   "--output", str(out), "--overwrite"]) == 2
    assert "would overwrite the input" in capsys.readouterr().err and names.read_text().startswith('["thing 0"')


def test_class_names_file(setup, tmp_path, capsys):
    image = str(setup["images"] / "a.png")
    (tmp_path / "three.txt").write_text("cat\ndog\nbird\n")
    assert _exit_code(TINY_ARGS + ["--class-names", str(tmp_path / "three.txt"), "--input", image,
                                   "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("three.txt lists 3 names but the model has 5 classes") and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
    assert _exit_code(TINY_ARGS + ["--class-names", str(tmp_path / "nope.txt"), "--input", image]) == 2
    assert "cannot read class names file" in capsys.readouterr().err
    assert _exit_code(TINY_ARGS + ["--overlay-score", "1.5"]) == 2
    # the names reach the overlay's legend: the drawing differs from the dataset-named one
    (tmp_path / "five.txt").write_text("".join(f"custom class {i}\n" for i in range(5)))
    for folder, extra in (("dataset", []), ("custom", ["--class-names", str(tmp_path / "five.txt")])):
        assert _exit_code(TINY_ARGS + extra + ["--weights", setup["bare"], "--input", image,
                                               "--output", str(tmp_path / folder)]) == 0
    dataset, custom = (np.asarray(Image.open(tmp_path / d / "a_overlay.png")) for d in ("dataset", "custom"))
    np.testing.assert_array_equal(*(np.asarray(Image.open(tmp_path / d / "a.png")) for d in ("dataset", "custom")))
    assert not np.array_equal(dataset, custom)
