"""python -m maskformer_fast.parity: fast vs eager against a float64 truth, on CPU here.

The kernels run in the Triton interpreter (tiny model); the check must pass as shipped and
fail when a kernel is slightly wrong.
"""
import json
import subprocess
import sys

import pytest
import torch

from maskformer_fast import parity
from maskformer_fast.kernels import group_norm_act as gn

pytestmark = [pytest.mark.interpreter,
              pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")]
TINY = ["--size", "64", "num_decoder_layers=2", "dim_feedforward=64", "num_queries=10", "num_classes=5",
        "hidden_dim=64", "nheads=2"]


def test_parity_passes_and_reports_every_quantity(tmp_path):
    rows = parity.main([*TINY, "--json", str(tmp_path / "parity.json")])
    names = [r.name for r in rows]
    assert names[:2] == ["pred_logits", "pred_masks"]
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"} <= set(names)
    assert names[-1].startswith("grad (worst of ")
    assert all(r.ok for r in rows), [r for r in rows if not r.ok]
    # the comparison is not vacuous: both runs err against float64, by fp32 rounding
    assert all(0 < r.eager_error < 1e-3 and 0 < r.fast_error < 1e-3 for r in rows if r.name.startswith("pred_"))
    saved = json.loads((tmp_path / "parity.json").read_text())
    assert [r["name"] for r in saved["rows"]] == names


def test_parity_fails_on_a_slightly_wrong_kernel(monkeypatch):
    exact = gn.group_norm_act
    monkeypatch.setattr(gn, "group_norm_act", lambda *a, **k: exact(*a, **k) * (1 + 1e-4))
    rows = parity.main([*TINY, "--batch", "1"])
    failed = {r.name for r in rows if not r.ok}
    # GroupNorm runs in the pixel decoder: the masks and their losses move, the class logits
    # (from the transformer decoder on res5) do not
    assert {"pred_masks", "loss_mask", "loss_mask_0"} <= failed and "pred_logits" not in failed
    assert any(name.startswith("grad (worst of") for name in failed)


def test_random_batch_targets_are_non_empty_and_disjoint():
    images, targets = parity.random_batch(3, 64, 5, 4, torch.Generator().manual_seed(0))
    assert images.shape == (3, 3, 64, 64)
    for t in targets:
        assert t["masks"].dtype == torch.bool and t["masks"].shape[1:] == (64, 64)
        assert len(t["labels"]) == len(t["masks"]) == len(set(t["labels"].tolist()))
        assert t["masks"].flatten(1).any(1).all() and (t["masks"].sum(0) == 1).all()


def test_parity_auto_engine_runs_what_the_default_mode_runs(monkeypatch):
    """--engine auto on CPU tensors: references where no CPU kernel exists, the C++ matcher."""
    from maskformer_fast import ops
    modes = []
    real_use = ops.use
    monkeypatch.setattr(ops, "use", lambda mode: modes.append(mode) or real_use(mode))
    rows = parity.main([*TINY, "--batch", "1", "--engine", "auto", "--device", "cpu"])
    assert modes == ["eager", "eager", "auto"] and all(r.ok for r in rows), rows


@pytest.mark.parametrize("args, needle", [
    (["--preset", "maskformer_r18_ade20k"], "unknown MaskFormer preset 'maskformer_r18_ade20k'"),
    (["--size", "32"], "--size must be >= 64 (below, the stride-32 feature is 1x1"),
    (["--batch", "-1"], "--batch must be >= 1, got -1"),
    (["--factor", "nan"], "--factor must be a finite number > 0, got nan"),
    (["--floor", "-1"], "--floor must be a finite number >= 0, got -1.0"),
    (["--device", "tpu9"], "--device 'tpu9' is not a device"),
    (["--engine", "triton"], "argument --engine: invalid choice: 'triton'"),
    (["num_decoder_layers"], "config override 'num_decoder_layers' is not KEY=VALUE"),
    (["hidden_dim=-3"], "hidden_dim must be an integer >= 1, got -3"),
])
def test_bad_arguments_are_one_line_and_exit_2(args, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parity.main(args)
    stderr = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and needle in stderr[-1], stderr


def test_the_command_exits_2_without_a_traceback():
    result = subprocess.run([sys.executable, "-m", "maskformer_fast.parity", "--preset", "nope"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip().splitlines()[0]]
    assert result.stderr.startswith("parity: error: unknown MaskFormer preset 'nope'")


def test_json_never_overwrites(tmp_path):
    existing = tmp_path / "mine.json"
    existing.write_text("my notes")
    with pytest.raises(SystemExit) as exit_info:
        parity.main([*TINY, "--json", str(existing)])
    assert exit_info.value.code == 2 and existing.read_text() == "my notes"


@pytest.mark.parametrize("size, vanishes", [(32, True), (64, False)])
def test_why_the_size_is_at_least_64(size, vanishes):
    """At 32 the stride-32 feature is 1x1: every query reads the same single key, so the decoder's
    output does not depend on the query embeddings and their float64 gradient is 0 (rounding)."""
    import maskformer_fast as mf
    from maskformer_fast import ops
    torch.manual_seed(0)
    cfg = mf.get_config("maskformer_r50_ade20k", dropout=0.0, drop_path_rate=0.0, num_decoder_layers=2,
                        hidden_dim=64, nheads=2, dim_feedforward=64, num_queries=10, num_classes=5)
    model = mf.build_model(cfg).double().train()
    images, targets = parity.random_batch(2, size, 5, 10, torch.Generator().manual_seed(0))
    with ops.use("eager"):
        sum(model.criterion(model(images.double()), targets).values()).backward()
    query_grad = model.predictor.query_embed.weight.grad.abs().max().item()
    class_grad = model.predictor.class_embed.weight.grad.abs().max().item()
    assert class_grad > 0.1 and (query_grad < 1e-12 * class_grad) == vanishes, (query_grad, class_grad)
