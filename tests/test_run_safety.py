"""train/train.py against careless and hostile use: nothing lost, nothing executed, one-line errors.

Runs are in-process (``train.main``) where the exit status and stderr are all a test needs, and a
subprocess where the absence of a traceback is the point.
"""
import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from train import checkpoint as ckpt
from train.checkpoint import CheckpointManager, atomic_save, remove_stale_temporaries
from train.make_synthetic import make_synthetic
from train.run_dir import OutputInUse, OutputLock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["num_decoder_layers=1", "hidden_dim=32", "conv_dim=32", "mask_dim=32", "dim_feedforward=32",
        "num_queries=4", "nheads=2", "frozen_bn=false", "test_short_side=32", "test_max_size=64",
        "min_scale=1.0", "max_scale=1.0"]


def args(data, out, *extra, overrides=()):
    return ["--dataset", "ade20k", "--data-root", str(data), "--output", str(out), "--no-progress",
            "--num-workers", "0", "--engine", "eager", "--device", "cpu", "--batch-size", "2", "--crop", "32",
            *extra, *TINY, *overrides]


def train(*argv):
    """train.py's exit status in-process (0 when it returns)."""
    from train.train import main
    try:
        main(list(argv))
    except SystemExit as e:
        return e.code
    return 0


def lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    make_synthetic("ade20k", str(root), num_images=2, size=32, seed=0)
    return root


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished 2-iteration run with checkpoints at 1 and 2."""
    out = tmp_path_factory.mktemp("runs") / "finished"
    assert train(*args(data, out, "--max-iter", "2", "--checkpoint-period", "1")) == 0
    return out


def copy_run(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_refuses_a_checkpoint_that_would_run_code(finished, data, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    marker = tmp_path / "pwned"
    with open(out / "model_0000002.pth", "wb") as f:
        pickle.dump({"model": _RunsCode(marker)}, f)
    assert train(*args(data, out, "--max-iter", "3", "--resume")) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert "model_0000002.pth" in err and "weights_only=False" not in err and len(err.strip().splitlines()) == 1


def test_fresh_run_into_a_run_folder_refuses_and_keeps_it(finished, data, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    before = {n: (out / n).read_bytes() for n in ("metrics.jsonl", "config.json", "model_0000002.pth")}
    assert train(*args(data, out, "--max-iter", "1")) == 2
    assert "use --resume" in capsys.readouterr().err
    assert {n: (out / n).read_bytes() for n in before} == before


def test_overwrite_never_prunes_another_runs_checkpoints(finished, data, tmp_path):
    out = copy_run(finished, tmp_path)
    for n in (8, 9):  # an older, longer run's checkpoints
        shutil.copy(out / "model_0000002.pth", out / f"model_{n:07d}.pth")
    assert train(*args(data, out, "--max-iter", "1", "--keep-checkpoints", "1", "--overwrite")) == 0
    assert CheckpointManager(str(out)).latest().endswith("model_0000001.pth")
    assert {"model_0000008.pth", "model_0000009.pth", "model_0000002.pth"} <= set(os.listdir(out))
    assert [r["iter"] for r in lines(out / "metrics.jsonl") if "loss" in r] == [1]


def test_pruning_continues_across_a_resume(tmp_path):
    first = CheckpointManager(str(tmp_path), keep=2)
    for it in (1, 2):
        first.save({"model": {"w": torch.zeros(1)}, "iter": it}, it)
    second = CheckpointManager(str(tmp_path), keep=2)
    second.adopt(second.load(second.latest()), second.latest())
    second.save({"model": {"w": torch.zeros(1)}, "iter": 3}, 3)
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".pth")) == ["model_0000002.pth", "model_0000003.pth"]


def test_resume_problems_are_one_line_each(finished, data, tmp_path, capsys):
    empty = tmp_path / "empty"
    assert train(*args(data, empty, "--max-iter", "1", "--resume")) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    out = copy_run(finished, tmp_path)
    config = (out / "config.json").read_bytes()
    assert train(*args(data, out, "--max-iter", "3", "--resume", overrides=["hidden_dim=64"])) == 2
    err = capsys.readouterr().err
    assert "hidden_dim 32 -> 64" in err and len(err.strip().splitlines()) == 1
    assert (out / "config.json").read_bytes() == config  # the refused resume changed nothing
    assert train(*args(data, out, "--max-iter", "1", "--resume")) == 2
    assert "--max-iter 1 is below the checkpoint's iteration 2" in capsys.readouterr().err
    assert train(*args(data, out, "--max-iter", "2", "--resume")) == 0
    assert "the run is finished" in capsys.readouterr().out


def test_resume_names_a_changed_batch_size(finished, data, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    argv = args(data, out, "--max-iter", "3", "--resume")
    argv[argv.index("--batch-size") + 1] = "4"
    assert train(*argv) == 0
    assert "batch_size 2 -> 4" in capsys.readouterr().out
    assert [r["iter"] for r in lines(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3]


def test_torn_metrics_line_is_dropped_on_resume(finished, data, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iter": 3, "loss": 1.2')  # a full disk cut the last write
    assert train(*args(data, out, "--max-iter", "3", "--resume")) == 0
    assert "line" in capsys.readouterr().err
    assert [r["iter"] for r in lines(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3]


def test_a_second_run_on_the_folder_is_refused_and_stale_locks_are_taken_over(finished, data, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(f"{os.uname().nodename} {sleeper.pid}\n")
        assert train(*args(data, out, "--max-iter", "3", "--resume")) == 2
        assert "in use by another run" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
    (out / ".tmp_abcd1234.pth").write_bytes(b"half a checkpoint")
    assert train(*args(data, out, "--max-iter", "3", "--resume")) == 0  # the sleeper is gone: stale lock
    assert not (out / ".lock").exists() and not (out / ".tmp_abcd1234.pth").exists()


def test_lock_refuses_its_live_holder_twice(tmp_path):
    with OutputLock(str(tmp_path)):
        with pytest.raises(OutputInUse, match="in use"):
            OutputLock(str(tmp_path)).acquire()
    assert not (tmp_path / ".lock").exists()


def test_failed_writes_leave_no_temporary_files(tmp_path, monkeypatch):
    def full_disk(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="model.pth: the disk is full"):
        atomic_save({"w": torch.zeros(1)}, str(tmp_path / "model.pth"))
    monkeypatch.setattr(ckpt.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        ckpt.atomic_write_text("x\n", str(tmp_path / "last_checkpoint"))
    assert os.listdir(tmp_path) == []
    (tmp_path / ".tmp_k2j4h5g6").write_text("x")
    (tmp_path / ".tmp_notmine.txt").write_text("user file")
    assert remove_stale_temporaries(str(tmp_path)) == [".tmp_k2j4h5g6"]
    assert os.listdir(tmp_path) == [".tmp_notmine.txt"]


@pytest.mark.parametrize("flag", ["--checkpoint-period", "--max-iter", "--batch-size", "--keep-checkpoints"])
def test_zero_periods_and_sizes_are_refused(flag, data, tmp_path, capsys):
    assert train(*args(data, tmp_path / "o", flag, "0")) == 2
    assert flag in capsys.readouterr().err


def test_bad_data_is_one_line_and_check_data_lists_every_bad_file(data, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(REPO, "train", "train.py")]
    wrong = subprocess.run(cmd + args(tmp_path / "nowhere", tmp_path / "o1"), env=env, capture_output=True, text=True,
                           timeout=300)
    assert wrong.returncode == 2 and "nowhere" in wrong.stderr and "Traceback" not in wrong.stderr
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    images = broken / "ADEChallengeData2016" / "images" / "training"
    labels = broken / "ADEChallengeData2016" / "annotations" / "validation"
    bad_image = sorted(images.iterdir())[0]
    bad_label = sorted(labels.iterdir())[0]
    bad_image.write_bytes(b"not a jpeg")
    bad_label.write_bytes(b"")
    check = subprocess.run(cmd + args(broken, tmp_path / "o2", "--check-data"), env=env, capture_output=True,
                           text=True, timeout=300)
    assert check.returncode == 2 and "Traceback" not in check.stderr, check.stderr
    assert bad_image.name in check.stdout and bad_label.name in check.stdout
    started = subprocess.run(cmd + args(broken, tmp_path / "o3", "--max-iter", "1"), env=env, capture_output=True,
                             text=True, timeout=300)
    assert started.returncode == 2 and bad_image.name in started.stdout
    assert not os.path.exists(tmp_path / "o3" / "metrics.jsonl")


def test_make_synthetic_refuses_a_non_empty_out(tmp_path, capsys):
    from train.make_synthetic import main
    real = tmp_path / "cityscapes" / "leftImg8bit" / "train" / "aachen"
    real.mkdir(parents=True)
    photo = real / "aachen_000000_000019_leftImg8bit.png"
    photo.write_bytes(b"a real photo")
    argv = ["--format", "cityscapes", "--out", str(tmp_path / "cityscapes"), "--num-images", "1", "--size", "16"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "not empty" in capsys.readouterr().err
    assert photo.read_bytes() == b"a real photo"
    main(argv + ["--overwrite"])  # asked for: written
    assert any(n.endswith("_leftImg8bit.png") for n in os.listdir(real))


def test_the_default_output_moves_to_a_free_folder_instead_of_replacing_a_run(tmp_path, monkeypatch, capsys):
    from train.train import DEFAULT_OUTPUT, parse_args
    monkeypatch.chdir(tmp_path)
    assert parse_args([]).output == DEFAULT_OUTPUT  # nothing there yet
    os.makedirs(DEFAULT_OUTPUT)
    open(os.path.join(DEFAULT_OUTPUT, "metrics.jsonl"), "w").close()
    assert parse_args([]).output == DEFAULT_OUTPUT + "_2"  # the main job run twice keeps the first run
    assert "holds an earlier run" in capsys.readouterr().out
    assert parse_args(["--resume"]).output == DEFAULT_OUTPUT  # --resume continues it
