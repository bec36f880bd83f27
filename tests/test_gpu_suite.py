"""The GPU suite's safeguards, rehearsed on CPU: nothing here needs a GPU.

A GPU run is short and rare (one call of a few minutes), so what would silently cost it is
checked here: the kernels failing to import on a CUDA machine must not pass for a fast engine
with no speedup, and the suite must return its summary whatever happens to its steps.
"""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import maskformer_fast as mf

REPO = Path(__file__).resolve().parent.parent
SUITE_STEPS = {"versions", "install", "peer_matcher", "ext", "import_check", "bench_model", "gpu_tests",
               "parity_fp32", "parity_bf16", "device_tests", *(spec.benchmark for spec in mf.ops.OPS.values())}


@pytest.fixture
def kernels_unimportable(monkeypatch):
    """`from .kernels import ...` raises ImportError (a None entry in sys.modules does that)."""
    monkeypatch.setitem(sys.modules, "maskformer_fast.kernels", None)
    monkeypatch.setattr(mf.ops, "_warned_no_kernels", False)


def test_ops_warns_once_when_cuda_is_present_but_kernels_do_not_import(kernels_unimportable, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert mf.ops._load(mf.ops.OPS["attention"].kernels[0]) is None
        assert mf.ops._load(mf.ops.OPS["mask_losses"].kernels[0]) is None
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "maskformer_fast.kernels does not import" in messages[0]


def test_ops_is_silent_without_cuda_when_kernels_do_not_import(kernels_unimportable, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert mf.ops._load(mf.ops.OPS["attention"].kernels[0]) is None
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


def _merge(tmp_path, steps, logs, inputs):
    from benchmarks import merge_results

    (tmp_path / "steps.tsv").write_text("".join("\t".join(s) + "\n" for s in steps))
    (tmp_path / "logs").mkdir()
    for step_id, text in logs.items():
        (tmp_path / "logs" / f"{step_id}.out").write_text(text)
    paths = []
    for name, content in inputs.items():
        paths.append(str(tmp_path / name))
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    # the argument order gpu_suite.sh's summarise() uses: options between the outputs and the inputs
    merge_results.main([str(tmp_path / "suite.json"), str(tmp_path / "suite.md"),
                        "--steps", str(tmp_path / "steps.tsv"), "--step-logs", str(tmp_path / "logs"), *paths])
    return json.loads((tmp_path / "suite.json").read_text()), (tmp_path / "suite.md").read_text()


def test_merge_keeps_every_step_benchmark_section_and_names_tests_that_timed_out(tmp_path):
    meta = {"device": "NVIDIA H200", "torch": "2.11", "triton": "3.6", "date": "2026-12-01"}
    row = {"op": "model_train_step", "impl": "fast", "shape": "s", "ms": 25.0, "ms_p20": 24.0, "ms_p80": 26.0,
           "extra": {"speedup": "2.40x"}}
    profile = [{"engine": "eager", "kernel": "gemm", "self_ms": 3.5}]
    steps = [("bench_model", "ok", "80", "bench_model"),
             ("gpu_tests", "ok", "60", "GPU correctness tests"),
             ("device_tests", "timed out after 40s", "40", "device-aware tests"),
             ("parity_bf16", "skipped: suite budget spent", "0", "parity bf16")]
    logs = {"gpu_tests": "tests/a.py::test_ok PASSED\nFAILED tests/a.py::test_hangs - Failed: Timeout (>60.0s) "
                         "from pytest-timeout.\n",
            "device_tests": "tests/b.py::test_done PASSED [ 50%]\ntests/b.py::test_stuck \n"}
    inputs = {"bench_model.json": {"meta": meta, "rows": [row], "profile": profile},
              "parity_fp32.json": {"args": {}, "rows": [{"name": "loss", "ok": True}]},
              "bench_attention.json": '{"meta": {"dev'}
    summary, md = _merge(tmp_path, steps, logs, inputs)
    assert [s["status"] for s in summary["steps"]] == [s[1] for s in steps]
    assert summary["timed_out_tests"] == ["tests/a.py::test_hangs", "tests/b.py::test_stuck"]
    assert summary["rows"] == [{**row, "gbps": None, "tflops": None, "peak_mib": None}]
    assert summary["sections"] == {"profile": profile, "parity_fp32": inputs["parity_fp32.json"]}
    assert len(summary["errors"]) == 1 and summary["errors"][0].startswith("bench_attention.json")
    for text in ("NVIDIA H200", "skipped: suite budget spent", "tests/b.py::test_stuck", "2.40x", "gemm",
                 "| loss | True |", "bench_attention.json"):
        assert text in md, text


def test_merge_writes_a_summary_when_nothing_ran(tmp_path):
    summary, md = _merge(tmp_path, [("versions", "skipped: suite budget spent", "0", "versions")], {}, {})
    assert summary["rows"] == [] and summary["steps"][0]["status"] == "skipped: suite budget spent"
    assert "skipped: suite budget spent" in md


def test_bench_model_records_which_implementation_each_op_ran():
    from benchmarks.bench_model import recording_dispatch

    x = torch.randn(1, 8, 4, 4)
    weight, bias = torch.ones(8), torch.zeros(8)
    counts = {}
    with recording_dispatch(counts):
        with mf.ops.use("eager"):
            mf.ops.group_norm_act(x, 2, weight, bias)
        with mf.ops.use("fast"):  # the interpreter on CPU (tests/conftest.py)
            mf.ops.group_norm_act(x, 2, weight, bias)
            mf.ops.group_norm_act(x, 2, weight, bias)
    assert counts == {"group_norm_act": {"kernel": 2, "reference": 1}}
    assert mf.ops.resolve.__module__ == "maskformer_fast.ops"  # put back


def test_bench_model_reports_no_speedup_when_an_op_never_ran_its_kernel():
    from benchmarks.bench_model import HOT_OPS, Row, add_speedups

    def rows():
        return [Row(op, impl, "s", ms, ms, ms) for impl, ms in (("eager", 10.0), ("fast", 4.0))
                for op in ("inference", "train_step")]

    out = {"pred_logits": torch.ones(1), "pred_masks": torch.ones(1)}
    all_kernels = {op: {"kernel": 1, "reference": 0} for op in HOT_OPS}
    ran_eager = {**all_kernels, "mask_losses": {"kernel": 0, "reference": 6}}
    for dispatch, want in ((all_kernels, "2.50x"), (ran_eager, None)):
        got = rows()
        add_speedups(got, {"eager": out, "fast": out}, {"fast": dispatch}, cuda=True)
        for row in got[2:]:
            if want:
                assert row.extra["vs eager"] == want
            else:
                assert "vs eager" not in row.extra
                assert row.extra["speedup"] == "n/a: never ran its kernel: mask_losses"


def test_suite_rehearsal_with_a_tiny_budget_returns_its_summary_and_names_the_hung_test(tmp_path):
    # The GPU tests step runs one test that hangs; the per-test timeout (8 s) must stop it and
    # the summary name it. Those 8 s alone leave under the 20 s a step needs of the 25 s budget,
    # so the parity steps after it are skipped for the budget whatever this machine's load.
    hang = tmp_path / "hang" / "test_hang.py"
    hang.parent.mkdir()
    hang.write_text("import time\n\n\ndef test_hangs():\n    time.sleep(600)\n")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, SUITE_BUDGET_S="25", SUITE_TEST_TIMEOUT="8",
               SUITE_STEPS="gpu_tests parity_fp32 parity_bf16", SUITE_GPU_TESTS=str(hang))
    result = subprocess.run(["bash", "benchmarks/gpu_suite.sh", str(out)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    files = [p.relative_to(out) for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and {Path("suite.json"), Path("suite.md"), Path("log.txt")} <= set(files), files
    summary = json.loads((out / "suite.json").read_text())
    steps = {s["id"]: s for s in summary["steps"]}
    assert set(steps) == SUITE_STEPS
    assert steps["gpu_tests"]["status"] != "ok"
    for step in ("parity_fp32", "parity_bf16"):
        assert steps[step]["status"].startswith("skipped: suite budget spent"), steps[step]
    assert steps["bench_model"]["status"] == "skipped: not in SUITE_STEPS"
    assert [t for t in summary["timed_out_tests"] if t.endswith("test_hang.py::test_hangs")], summary
    md = (out / "suite.md").read_text()
    assert "test_hang.py::test_hangs" in md and "skipped: suite budget spent" in md
    assert "Timeout" in (out / "log.txt").read_text()
