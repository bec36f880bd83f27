"""``train.py --preset P`` for every preset of ``mf.list_presets()``: two iterations and the
evaluation on its dataset's synthetic data, at a tiny size (narrow heads, 32 px crops).

The presets keep their backbones at full size: Swin-B/L take 15-30 s each on a CPU core and are
marked slow; the other 35 take about 2-5 s each.
"""
import json
import math
import os
import shutil

import pytest
import torch

import maskformer_fast as mf
from maskformer_fast.weights import read_weights
from train.checkpoint import CheckpointManager
from train.make_synthetic import make_synthetic

TINY = ["num_decoder_layers=2", "hidden_dim=32", "conv_dim=32", "mask_dim=32", "dim_feedforward=64",
        "num_queries=10", "nheads=2", "test_short_side=32", "test_max_size=128", "min_scale=1.0", "max_scale=1.0"]
SLOW_BACKBONES = ("swin_base", "swin_large")
PRESETS = [pytest.param(name, marks=pytest.mark.slow) if mf.get_config(name).backbone in SLOW_BACKBONES else name
           for name in mf.list_presets()]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, as the subprocess runs of test_train.py use: at these sizes a second
    thread only adds synchronisation (and on a shared machine, waiting for a core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """dataset -> a folder of 2 + 1 synthetic images in its format, written on first use."""
    base, roots = tmp_path_factory.mktemp("presets"), {}

    def root(dataset: str) -> str:
        if dataset not in roots:
            roots[dataset] = str(base / dataset)
            make_synthetic(dataset, roots[dataset], num_images=2, size=32, seed=0, num_val=1)
        return roots[dataset]
    return root


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_and_evaluates(preset, synthetic_root, tmp_path):
    from train.train import main
    cfg = mf.get_config(preset)
    out = tmp_path / "run"
    try:
        _train_and_check(preset, cfg, synthetic_root(cfg.dataset), out, main)
    finally:  # a full-size backbone's checkpoint is ~350 MB: 35 presets would fill a CI disk
        shutil.rmtree(out, ignore_errors=True)


def _train_and_check(preset, cfg, data_root, out, main):
    main(["--preset", preset, "--data-root", data_root, "--output", str(out), "--max-iter", "2",
          "--batch-size", "2", "--crop", "32", "--no-progress", "--num-workers", "0", "--engine", "eager",
          "--device", "cpu", *TINY])
    with open(out / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    key = "mIoU" if mf.get_dataset_spec(cfg.dataset).task == "semantic" else "PQ"
    final = [r for r in rows if key in r][-1]
    assert 0.0 <= final[key] <= 100.0
    saved = read_weights(CheckpointManager(str(out)).latest())
    assert (saved.config["name"], saved.config["dataset"], saved.config["backbone"]) == (preset, cfg.dataset,
                                                                                         cfg.backbone)
    assert saved.state["predictor.class_embed.weight"].shape[0] == cfg.num_classes + 1
    assert os.path.isfile(out / "config.json")
