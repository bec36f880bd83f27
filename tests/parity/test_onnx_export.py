"""ONNX export (maskformer_fast/onnx_export.py) against the eager model, and predict --backend onnxruntime.

One dynamic export per model (module-scoped fixtures: an R50 export takes ~25 s on 2 cores) is
run in onnxruntime at several sizes, odd and multiples of 32, and compared with the eager
forward within 1e-4 of each output's max |value|.
"""
import os
import sys

import numpy as np
from PIL import Image
import pytest
import torch

import maskformer_fast as mf

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SMALL = dict(num_decoder_layers=2, dim_feedforward=256)
REL_TOL = 1e-4


def _eager(model, images):
    with torch.no_grad(), mf.ops.use("eager"):
        return model(images)


def _assert_outputs_match(runner_out, eager_out):
    for key in ("pred_logits", "pred_masks"):
        got, want = runner_out[key], eager_out[key]
        assert got.shape == want.shape, f"{key}: {tuple(got.shape)} != {tuple(want.shape)}"
        err = ((got - want).abs().max() / want.abs().max()).item()
        assert err < REL_TOL, f"{key} differs from eager by {err:.2e} of its max"
    assert runner_out["input_size"] == eager_out["input_size"]
    assert runner_out["padded_size"] == eager_out["padded_size"]
    assert "aux_outputs" not in runner_out


def _exported(tmp_path_factory, preset, **overrides):
    torch.manual_seed(0)
    cfg = mf.get_config(preset, **SMALL, **overrides)
    model = mf.build_model(cfg).eval()
    path = mf.export_onnx(model, str(tmp_path_factory.mktemp("onnx") / f"{preset}.onnx"))
    return cfg, model, mf.OnnxModel(path, cfg.size_divisibility)


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    return _exported(tmp_path_factory, "maskformer_r50_ade20k")


def _check_sizes(exported, sizes, batch=1):
    cfg, model, runner = exported
    g = torch.Generator().manual_seed(1)
    for h, w in sizes:
        images = torch.randn(batch, 3, h, w, generator=g)
        _assert_outputs_match(runner(images), _eager(model, images))


def test_r50_dynamic_export_matches_eager_at_every_size(r50):
    _check_sizes(r50, [(333, 487), (256, 320), (97, 131)])
    _check_sizes(r50, [(130, 200)], batch=2)  # the batch is dynamic too


def test_export_leaves_the_model_as_it_was(r50):
    _, model, _ = r50
    assert model.predictor.deep_supervision and model.predictor.eval_aux_outputs and not model.training
    assert "aux_outputs" in _eager(model, torch.randn(1, 3, 64, 64))


def test_coco_panoptic_6enc_without_padding(tmp_path_factory):
    """+6Enc pixel decoder, size_divisibility 0: the mask grid is ceil(ceil(H/2)/2), unpadded."""
    exported = _exported(tmp_path_factory, "maskformer_r50_coco_panoptic", num_classes=20)
    assert exported[0].size_divisibility == 0 and exported[0].pixel_decoder_encoder_layers == 6
    _check_sizes(exported, [(333, 487), (97, 131)])


@pytest.mark.slow
def test_swin_t_dynamic_export_matches_eager(tmp_path_factory):
    """Swin-T: ~60 s to export on 2 cores (the ONNX optimiser over 12 blocks), hence slow."""
    _check_sizes(_exported(tmp_path_factory, "maskformer_swin_t_ade20k"), [(333, 487), (256, 320), (64, 64)])


def test_fixed_size_export_and_overwrite_refusal(tmp_path):
    torch.manual_seed(0)
    cfg = mf.get_config("maskformer_swin_t_ade20k", **SMALL)
    model = mf.build_model(cfg).eval()
    path = str(tmp_path / "fixed.onnx")
    assert mf.export_onnx(model, path, height=96, width=128, batch=1) == path
    images = torch.randn(1, 3, 96, 128)
    _assert_outputs_match(mf.OnnxModel(path, cfg.size_divisibility)(images), _eager(model, images))
    before = os.path.getmtime(path), os.path.getsize(path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        mf.export_onnx(model, path, height=96, width=128, batch=1)
    assert (os.path.getmtime(path), os.path.getsize(path)) == before
    assert [p.name for p in tmp_path.iterdir()] == ["fixed.onnx"]  # no temporary file left


def test_not_an_onnx_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot load ONNX model"):
        mf.OnnxModel(str(bad), 32)


def test_export_without_onnx_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    model = mf.build_model(mf.get_config("maskformer_r50_ade20k", **SMALL))
    with pytest.raises(ImportError, match=r"maskformer-fast\[onnx\]") as info:
        mf.export_onnx(model, str(tmp_path / "m.onnx"))
    assert "\n" not in str(info.value)


def _margin_and_labels(model, images, cfg):
    """Eager semantic labels and their top-2 score margin, through Predictor's pipeline."""
    predictor = mf.Predictor(model, cfg, "semantic")
    with torch.no_grad(), mf.ops.use("eager"):
        x = mf.preprocessing.preprocess(images, cfg.pixel_mean, cfg.pixel_std, cfg.test_short_side,
                                        cfg.test_max_size)
        scores = mf.semantic_inference(model(x[None]), [tuple(x.shape[-2:])], [images.shape[:2]])[0]
    top2 = scores.topk(2, dim=0).values
    return predictor(images), top2[0] - top2[1]


def test_predict_cli_onnxruntime_equals_torch(r50, tmp_path):
    """Same weights, same images: the label maps of --backend onnxruntime (with the shared export
    given as --onnx) equal the torch backend's wherever the top-2 score margin exceeds 1e-3."""
    from maskformer_fast.predict import main
    cfg, model, runner = r50
    weights = tmp_path / "state.pth"
    torch.save(model.state_dict(), weights)
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for name, (h, w) in (("a", (70, 90)), ("b", (101, 64))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"{name}.png")
    common = ["--weights", str(weights), "--input", str(images), "--short-side", "128", "--device", "cpu",
              "--engine", "eager"] + [f"{k}={v}" for k, v in SMALL.items()] + ["test_short_side=128"]
    main(common + ["--output", str(tmp_path / "torch")])
    main(common + ["--output", str(tmp_path / "ort"), "--backend", "onnxruntime",
                   "--onnx", runner.path])
    cfg128 = mf.get_config("maskformer_r50_ade20k", **SMALL, test_short_side=128)
    for name in ("a", "b"):
        image = np.asarray(Image.open(images / f"{name}.png").convert("RGB"))
        labels, margin = _margin_and_labels(model, image, cfg128)
        torch_png = np.asarray(Image.open(tmp_path / "torch" / f"{name}.png"))
        ort_png = np.asarray(Image.open(tmp_path / "ort" / f"{name}.png"))
        assert (torch_png == labels.numpy()).all()
        clear = margin.numpy() > 1e-3
        assert clear.mean() > 0.9, "the test image is mostly near-ties: it would check nothing"
        assert (ort_png[clear] == torch_png[clear]).all()


def test_predict_cli_bad_onnx_file_is_one_line_exit_2(tmp_path, capsys):
    from maskformer_fast.predict import main
    bad = tmp_path / "bad.onnx"
    bad.write_text("not onnx")
    with pytest.raises(SystemExit) as info:
        main(["--backend", "onnxruntime", "--onnx", str(bad), "num_decoder_layers=1"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("predict: error: cannot load ONNX model") and "\n" not in err
    with pytest.raises(SystemExit) as info:
        main(["--backend", "onnxruntime", "--tta"])
    assert info.value.code == 2
