"""train/train.py end to end on synthetic data: overfitting, kill-and-resume, torchrun, eval-only.

Every run is a subprocess, as users run it. The model is MaskFormer-R50 made CPU-sized by
config overrides (narrow heads, 2 decoder layers, 32-64 px crops).
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from maskformer_fast import config as mf_config
from train.checkpoint import CheckpointManager, load_model_weights
from train.make_synthetic import make_synthetic
from train.solver import lr_factor, param_groups
from tests.helpers import spy_kernels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "train", "train.py")
TINY = ["num_decoder_layers=2", "hidden_dim=32", "conv_dim=32", "mask_dim=32", "dim_feedforward=64",
        "num_queries=10", "nheads=2", "frozen_bn=false", "test_short_side=32", "test_max_size=128",
        "min_scale=1.0", "max_scale=1.0"]


def train_cmd(data, out, *extra, launcher=(sys.executable,)):
    # on the CPU on any machine: bit-exact comparisons, and the interpreted kernels need CPU tensors
    return [*launcher, TRAIN, "--dataset", "ade20k", "--data-root", str(data), "--output", str(out),
            "--no-progress", "--num-workers", "0", "--seed", "3", "--engine", "eager", "--device", "cpu", *extra]


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    e.pop("TRITON_INTERPRET", None)
    return e


def records(out, key="loss"):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if key in r]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ade")
    make_synthetic("ade20k", str(root), num_images=4, size=32, seed=0)
    return root


def test_solver_groups_and_schedule():
    import maskformer_fast as mf
    model = mf.build_model(mf.get_config("maskformer_r50_ade20k", num_decoder_layers=1, hidden_dim=32,
                                         conv_dim=32, mask_dim=32, dim_feedforward=32, nheads=2))
    groups = {g["name"]: g for g in param_groups(model, 1e-4, 1e-4, 0.1)}
    assert groups["backbone"]["lr"] == pytest.approx(1e-5) and groups["head"]["lr"] == pytest.approx(1e-4)
    no_decay = {id(p) for g in groups.values() if g["weight_decay"] == 0 for p in g["params"]}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Embedding, torch.nn.LayerNorm, torch.nn.GroupNorm)):
            assert all(id(p) in no_decay for p in module.parameters(recurse=False)), name
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == len([p for p in model.parameters() if p.requires_grad])
    assert lr_factor(0, 100, "poly") == 1.0
    assert lr_factor(50, 100, "poly", poly_power=0.9) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(5, 100, "poly", warmup_iters=10) == pytest.approx(0.95 ** 0.9 * (1e-6 * 0.5 + 0.5))
    assert lr_factor(70, 100, "multistep", lr_steps=(60, 80)) == pytest.approx(0.1)


def test_data_stream_resumes_and_ignores_workers(data):
    from train.datasets import build_dataset
    from train.train import Dist, TrainStream, build_train_loader
    import maskformer_fast as mf
    ds = build_dataset("ade20k", str(data), "train")
    stream = TrainStream(ds, seed=1, d=Dist())
    keys = [k for _, k in zip(range(10), stream)]
    assert sorted(k[0] for k in keys[:4]) == [0, 1, 2, 3] and keys[4][1:] == (1, 0)  # epoch 1 starts
    assert [k for _, k in zip(range(4), TrainStream(ds, seed=1, d=Dist(), epoch=1, position=1))] == keys[5:9]
    ranks = [[k[0] for _, k in zip(range(2), TrainStream(ds, 1, Dist(rank=r, world=2)))] for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == [0, 1, 2, 3]  # DistributedSampler shards each epoch
    cfg = mf.get_config("maskformer_r50_ade20k", crop_size=(32, 32))
    start = {"epoch": 0, "index": 2}
    plain = build_train_loader(ds, cfg, 1, Dist(), 2, 0, start)
    workers = build_train_loader(ds, cfg, 1, Dist(), 2, 2, start)
    for _ in range(3):
        (a, ta, pa), (b, tb, pb) = next(plain), next(workers)
        assert torch.equal(a, b) and pa == pb
        assert all(torch.equal(x["masks"], y["masks"]) for x, y in zip(ta, tb))


def test_checkpoint_manager_keeps_last_n(tmp_path):
    mgr = CheckpointManager(str(tmp_path), keep=2)
    for it in (1, 2, 3):
        mgr.save({"model": {"w": torch.full((2,), float(it))}, "iter": it}, it)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000002.pth", "model_0000003.pth"]
    assert mgr.load(mgr.latest())["iter"] == 3
    assert load_model_weights(mgr.latest())["w"].tolist() == [3.0, 3.0]
    (tmp_path / "broken.pth").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="broken.pth"):
        load_model_weights(str(tmp_path / "broken.pth"))


def _unbroken_losses(data, out, common):
    """The per-iteration losses of an uninterrupted run (the reference for interrupted ones)."""
    subprocess.run(train_cmd(data, out, *common), check=True, env=env(), capture_output=True, timeout=300)
    return [r["loss"] for r in records(out)]


def _start_and_wait(cmd, out, iterations):
    """Popen(cmd) once its metrics log holds `iterations` training records (stderr piped)."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (os.path.exists(out / "metrics.jsonl") and len(records(out)) >= iterations):
        assert proc.poll() is None and time.time() < deadline, "training ended before the signal"
        time.sleep(0.05)
    return proc


def test_kill_and_resume_reproduces_losses(data, tmp_path):
    common = ["--max-iter", "8", "--batch-size", "2", "--crop", "32", "--checkpoint-period", "3",
              "--eval-period", "0", "--deterministic", *TINY]
    full = tmp_path / "full"
    expected = _unbroken_losses(data, full, common)
    assert [r["iter"] for r in records(full)] == list(range(1, 9))

    killed = tmp_path / "killed"
    # killed after iteration 5 (checkpoint at 3, two iterations past it)
    proc = _start_and_wait(train_cmd(data, killed, *common), killed, 5)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert len(records(killed)) < 8
    assert CheckpointManager(str(killed)).latest().endswith(("model_0000003.pth", "model_0000006.pth"))
    subprocess.run(train_cmd(data, killed, *common, "--resume"), check=True, env=env(), capture_output=True,
                   timeout=300)
    resumed = records(killed)
    assert [r["iter"] for r in resumed] == list(range(1, 9))
    assert [r["loss"] for r in resumed] == expected  # bit-exact on CPU
    assert records(killed, "mIoU")[-1]["mIoU"] == records(full, "mIoU")[-1]["mIoU"]


def test_sigterm_checkpoints_at_the_iteration_end_and_resume_continues(data, tmp_path):
    # A preempted job (SIGTERM, as SLURM sends) keeps its last iterations: the checkpoint is the
    # iteration it was in, not the last periodic one, and the resumed run equals an unbroken one.
    common = ["--max-iter", "6", "--batch-size", "2", "--crop", "32", "--checkpoint-period", "100",
              "--eval-period", "0", "--deterministic", *TINY]
    expected = _unbroken_losses(data, tmp_path / "full", common)

    stopped = tmp_path / "stopped"
    proc = _start_and_wait(train_cmd(data, stopped, *common), stopped, 2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    done = records(stopped, "stopped_by")[-1]
    assert done["stopped_by"] == "SIGTERM" and 2 <= done["iter"] < 6
    assert [r["iter"] for r in records(stopped)] == list(range(1, done["iter"] + 1))
    assert CheckpointManager(str(stopped)).latest().endswith(f"model_{done['iter']:07d}.pth")

    subprocess.run(train_cmd(data, stopped, *common, "--resume"), check=True, env=env(), capture_output=True,
                   timeout=300)
    assert [r["loss"] for r in records(stopped)] == expected  # bit-exact on CPU


def _train_step(cfg, images, targets, mode, matching=None):
    """(loss, {name: gradient}, matching) of one training step of a seeded model under ops.use(mode)."""
    import maskformer_fast as mf
    from maskformer_fast import ops
    torch.manual_seed(0)
    model = mf.build_model(cfg).train()
    with ops.use(mode):
        out = model(images)
        matching = model.criterion.match(out, targets) if matching is None else matching
        loss = sum(model.criterion(out, targets, matching=matching).values())
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads, matching


def test_fast_engine_trains_like_eager(data, monkeypatch):
    # The training step through every kernel (interpreted here): the same loss and the same
    # gradients (which drive the optimiser) as the eager engine, on a batch of the training
    # loader. Both use the eager run's matching, as the parity CLI does, and only one step is
    # compared: a random-init model's matching costs are near ties that float32 rounding (and the
    # machine's load, through the thread count) can flip, and Adam's first update is about
    # lr * sign(g), which flips with the sign of gradients near 0. Comparing iteration 2 of two
    # train.py runs failed that way on a loaded machine (17.446 vs 16.832).
    import maskformer_fast as mf
    from train.datasets import build_dataset
    from train.train import Dist, build_train_loader
    overrides = dict(item.split("=") for item in TINY)
    # 64 x 64 crops (the 32 x 42 images padded): res5 is 2 x 2, so no GroupNorm group of the
    # 32-channel heads is a single value (whose ReLU input is exactly the bias, 0: a tie)
    cfg = mf.get_config("maskformer_r50_ade20k", crop_size=(64, 64), dropout=0.0, **overrides)
    loader = build_train_loader(build_dataset("ade20k", str(data), "train"), cfg, 3, Dist(), 2, 0,
                                {"epoch": 0, "index": 0})
    images, targets, _ = next(loader)
    eager, eager_grads, matching = _train_step(cfg, images, targets, "eager")
    calls = spy_kernels(monkeypatch)
    fast, fast_grads, _ = _train_step(cfg, images, targets, "fast", matching)
    assert set(calls) == {"group_norm_act", "attention", "mask_losses"}, calls  # the kernels ran
    assert fast == pytest.approx(eager, rel=1e-5)
    assert fast_grads.keys() == eager_grads.keys() and len(eager_grads) > 100
    # each tensor's error relative to its largest gradient (floored at 1e-6 of the model's largest:
    # the query embeddings' gradients are ~1e-9 here, i.e. noise)
    floor = 1e-6 * max(g.abs().max().item() for g in eager_grads.values())
    ratios = {n: ((fast_grads[n] - g).abs().max() / g.abs().max().clamp_min(floor)).item()
              for n, g in eager_grads.items()}
    bad = {n: r for n, r in ratios.items() if r > 1e-4}
    assert not bad, bad


def test_eval_only_and_errors(data, tmp_path):
    out = tmp_path / "run"
    subprocess.run(train_cmd(data, out, "--max-iter", "1", "--batch-size", "2", "--crop", "32", *TINY),
                   check=True, env=env(), capture_output=True, timeout=300)
    trained = records(out, "mIoU")[-1]
    ckpt = CheckpointManager(str(out)).latest()
    # the eager run's checkpoint loads into the fast engine (same state-dict keys), whose
    # kernels run here through the interpreter and give the same predictions
    fast_env = dict(env(), MASKFORMER_FAST_OPS="fast", TRITON_INTERPRET="1")
    result = subprocess.run(train_cmd(data, tmp_path / "eval", "--eval-only", "--weights", ckpt, "--engine", "fast",
                                      *TINY),
                            env=fast_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert records(tmp_path / "eval", "mIoU")[-1]["mIoU"] == trained["mIoU"]
    wrong = subprocess.run(train_cmd(tmp_path / "nowhere_else", tmp_path / "x", *TINY), env=env(),
                           capture_output=True, text=True, timeout=300)
    assert wrong.returncode != 0 and "nowhere_else" in wrong.stderr


def _panoptic_predictions(out):
    """{file name: (segments_info, PNG bytes)} of an evaluation's panoptic predictions."""
    with open(out / "eval" / "panoptic_predictions.json") as f:
        annotations = json.load(f)["annotations"]
    return {a["file_name"]: (a["segments_info"], (out / "eval" / "panoptic_predictions" / a["file_name"]).read_bytes())
            for a in annotations}


def test_coco_panoptic_training_and_pq_evaluation(tmp_path):
    make_synthetic("coco_panoptic", str(tmp_path / "coco"), num_images=4, size=32, seed=0, num_val=3)
    out = tmp_path / "pan"
    cmd = train_cmd(tmp_path / "coco", out, "--max-iter", "2", "--batch-size", "2", *TINY)
    cmd[cmd.index("ade20k")] = "coco_panoptic"
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    final = records(out, "PQ")[-1]
    assert set(final) >= {"PQ", "SQ", "RQ", "PQ_th", "PQ_st"} and 0.0 <= final["PQ"] <= 100.0
    single = _panoptic_predictions(out)
    assert len(single) == 3 and all(s["category_id"] in (1, 3, 18, 187, 193, 199)
                                    for segments, _ in single.values() for s in segments)

    # Two ranks split the 3 images 2 + 1, rank 0 gathers and scores: the same predictions
    # (segments and PNGs) and metrics as the single process.
    ddp = tmp_path / "pan_ddp"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534")
    cmd = train_cmd(tmp_path / "coco", ddp, "--eval-only", "--weights", CheckpointManager(str(out)).latest(), *TINY,
                    launcher=launcher)
    cmd[cmd.index("ade20k")] = "coco_panoptic"
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _panoptic_predictions(ddp) == single
    gathered = records(ddp, "PQ")[-1]
    assert {k: gathered[k] for k in final if k.startswith(("PQ", "SQ", "RQ"))} == \
        {k: v for k, v in final.items() if k.startswith(("PQ", "SQ", "RQ"))}


def test_ade20k_panoptic_training_and_pq_evaluation(tmp_path):
    make_synthetic("ade20k_panoptic", str(tmp_path / "ade"), num_images=2, size=32, seed=0, num_val=2)
    out = tmp_path / "adepan"
    cmd = train_cmd(tmp_path / "ade", out, "--max-iter", "2", "--batch-size", "2", "--crop", "32", *TINY,
                    "object_mask_threshold=0", "overlap_threshold=0")
    cmd[cmd.index("ade20k")] = "ade20k_panoptic"
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0.0 <= records(out, "PQ")[-1]["PQ"] <= 100.0
    predictions = _panoptic_predictions(out)
    assert len(predictions) == 2
    things = set(mf_config.thing_classes("ade20k_panoptic"))
    segments = [s for segs, _ in predictions.values() for s in segs]
    assert segments, "thresholds 0 keep every query's segment"
    assert all(0 <= s["category_id"] < 150 and s["isthing"] == (s["category_id"] in things) for s in segments)


def test_torchrun_two_ranks_stay_identical(data, tmp_path):
    out = tmp_path / "ddp"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533")
    result = subprocess.run(train_cmd(data, out, "--max-iter", "3", "--batch-size", "4", "--crop", "32",
                                      *TINY, launcher=launcher),
                            env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sync = records(out, "ranks_in_sync")[-1]
    assert sync["ranks_in_sync"] and len(sync["weights_sha256"]) == 2
    assert [r["iter"] for r in records(out)] == [1, 2, 3]


def _overfit(data_root, out, iters):
    """A narrow R50 memorises 4 images: no dropout, a crop that holds the whole 64x85 image
    (so only flip and colour jitter vary), trainable BatchNorm (random init, no pretrained
    weights offline)."""
    subprocess.run(train_cmd(data_root, out, "--max-iter", str(iters), "--batch-size", "4",
                             "--eval-split", "train", "--checkpoint-period", "100000",
                             "num_decoder_layers=2", "hidden_dim=64", "conv_dim=64", "mask_dim=64",
                             "dim_feedforward=128", "num_queries=16", "nheads=4", "frozen_bn=false", "dropout=0.0",
                             "base_lr=5e-4", "backbone_lr_multiplier=1.0", "crop_size=64,86", "min_scale=1.0",
                             "max_scale=1.0", "test_short_side=64", "test_max_size=256", "num_classes=24"),
                   check=True, env=env(), capture_output=True, timeout=1800)
    losses = [r["loss"] for r in records(out)]
    return losses, records(out, "mIoU")[-1]["mIoU"]


def test_overfit_tiny_dataset(tmp_path):
    make_synthetic("ade20k", str(tmp_path / "d"), num_images=4, size=64, seed=0)
    losses, miou = _overfit(tmp_path / "d", tmp_path / "o", 150)  # ~70 s on 2 idle cores
    assert sum(losses[-10:]) / 10 < 0.2 * sum(losses[:10]) / 10
    assert miou > 90.0


@pytest.mark.slow
def test_overfit_longer_schedule_fits_almost_perfectly(tmp_path):
    make_synthetic("ade20k", str(tmp_path / "d"), num_images=4, size=64, seed=0)
    losses, miou = _overfit(tmp_path / "d", tmp_path / "o", 400)
    assert sum(losses[-10:]) / 10 < 0.1 * sum(losses[:10]) / 10
    assert miou > 96.0


def test_stop_request_records_the_first_signal_and_restores_handlers():
    import threading

    from train.preemption import StopRequest

    before = signal.getsignal(signal.SIGUSR1)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested and stop.name == "SIGUSR1"
        assert signal.getsignal(signal.SIGUSR1) == before  # a second one would act at once
    assert signal.getsignal(signal.SIGUSR1) == before
    seen = []  # off the main thread nothing can be installed: a no-op, not an error
    thread = threading.Thread(target=lambda: seen.append(StopRequest().__enter__().requested))
    thread.start()
    thread.join()
    assert seen == [False]
