"""Every benchmark script runs and writes its JSON (as benchmarks/gpu_suite.sh calls it).

On this CPU machine they run tiny shapes, kernels through the interpreter: no speed is
compared here (timings are benchmarks' business), but each script must produce a row per
implementation, and the numbers the scripts check side by side must agree.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

# where CUDA is present the scripts time the real shapes (minutes): benchmarks/gpu_suite.sh runs them
pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="on a GPU these are the full benchmarks: benchmarks/gpu_suite.sh runs them")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# script -> the (op, impl) rows it must write on a CPU machine
EXPECTED = {
    "bench_group_norm_act": {(op, impl) for op in ("group_norm_relu fwd", "group_norm_relu fwd+bwd")
                             for impl in ("eager", "triton")},
    "bench_attention": {(op, impl) for op in ("attention fwd", "attention fwd+bwd") for impl in ("sdpa", "eager", "triton")},
    "bench_mask_costs": {("mask_costs", impl) for impl in ("official loop", "eager batched", "triton")},
    "bench_mask_losses": {(op, impl) for op in ("mask_losses fwd", "mask_losses fwd+bwd")
                          for impl in ("eager", "triton", "triton f-tgt")},
    "bench_matching": {("assignment", "scipy loop"), ("matcher step", "official"), ("matcher step", "ours")},
    "bench_model": {(op, impl) for op in ("inference", "train_step") for impl in ("eager", "fast", "hf")},
}
# the compiled engine is left out here (inductor needs minutes on 2 cores): tests/parity/test_fast_model.py
ARGS = {"bench_model": ("--tiny", "--no-compile", "--repeats", "1")}


def _run(script, tmp_path, *args):
    out = tmp_path / f"{script}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)  # each script sets it itself when there is no GPU
    result = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", f"{script}.py"), "--json", str(out),
                             *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        data = json.load(f)
    assert {"device", "torch", "triton", "date"} <= set(data["meta"])
    for row in data["rows"]:
        assert {"failed", "skipped"} & set(row["extra"]) or row["ms"] > 0 and math.isfinite(row["ms"]), row
    return data


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_benchmark_script_writes_every_implementation(script, tmp_path):
    data = _run(script, tmp_path, *ARGS.get(script, ()))
    rows = data["rows"]
    assert EXPECTED[script] <= {(r["op"], r["impl"]) for r in rows}
    if script == "bench_mask_costs":
        assert all(float(r["extra"]["max|triton-eager|"]) < 1e-5 for r in rows if r["impl"] == "triton")
    if script == "bench_matching":
        solvers = [r for r in rows if r["op"] == "assignment" and r["impl"].startswith("cpu C++")]
        assert solvers, "the C++ backend is built by setup.sh: it must be benchmarked"
    if script == "bench_model":
        _check_bench_model(data)


def _check_bench_model(data):
    """On a CPU the fast engine is a real CPU path (folded norms, final-layer masks,
    channels_last) through the references; HF runs the same weights; every engine's final outputs
    agree with eager's, and each row says what ran and how it compares."""
    rows = {(r["op"], r["impl"]): r for r in data["rows"]}
    for op in ("inference", "train_step"):
        for impl in ("fast", "hf"):
            assert rows[op, impl]["ms"] > 0 and "vs eager" in rows[op, impl]["extra"], rows[op, impl]
    for impl in ("fast", "hf"):
        for key in ("pred_logits", "pred_masks"):
            assert float(rows["inference", impl]["extra"][f"rel diff {key}"]) < 1e-4, (impl, key)
    onnx = rows["inference", "onnxruntime"]
    assert onnx["ms"] is None and onnx["extra"]["skipped"] or float(onnx["extra"]["rel diff pred_masks"]) < 1e-4
    # what each engine ran: every model op, through its reference (no Triton kernel on a CPU); the
    # matcher: scipy for eager, the C++ solver for fast ("auto" on CPU tensors)
    for engine in ("eager", "fast"):
        ran = {d["op"]: d for d in data["dispatch"] if d["engine"] == engine}
        assert set(ran) == {"group_norm_act", "attention", "mask_costs", "mask_losses", "linear_sum_assignment"}, \
            (engine, ran)
        matcher = ran.pop("linear_sum_assignment")
        assert all(d["kernel"] == 0 and d["reference"] > 0 for d in ran.values()), ran
        assert (matcher["kernel"] > 0) == (engine == "fast") and (matcher["reference"] > 0) == (engine == "eager")
    assert {p["engine"] for p in data["profile"]} == {"eager", "fast"} and all(p["self_ms"] >= 0 for p in data["profile"])


def test_tune_kernels_checks_every_candidate(tmp_path):
    rows = _run("tune_kernels", tmp_path)["rows"]
    kernels = {r["op"] for r in rows}
    assert {"group_norm_act fwd+bwd", "attention fwd", "attention bwd", "mask_costs",
            "mask_losses fwd", "mask_losses bwd", "hungarian (gpu matcher)"} == kernels
    for kernel in kernels:
        mine = [r for r in rows if r["op"] == kernel]
        assert sum(r["impl"] == "shipped" for r in mine) == 1 and len(mine) == 3, kernel
    # every candidate agreed with the shipped configuration (a failure would be reported in the row)
    assert not [r for r in rows if "failed" in r["extra"]]


SCRIPTS = sorted(EXPECTED) + ["bench_onnx", "tune_kernels"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_arguments_are_checked_before_any_timing(script, tmp_path, capsys):
    """An existing --json file is refused and left as it was; a missing folder or a bad number is one
    argparse line; exit status 2 each time."""
    import importlib
    main = importlib.import_module(f"benchmarks.{script}").main
    mine = tmp_path / "mine.json"
    mine.write_text("my results")
    cases = [(["--json", str(mine)], "mine.json exists; give a new file"),
             (["--json", str(tmp_path / "no" / "r.json")], "does not exist")]
    if script in ("bench_model", "bench_onnx"):
        cases += [(["--preset", "maskformer_r18_ade20k"], "unknown preset 'maskformer_r18_ade20k'"),
                  (["--size", "0"], "must be >= 1, got 0")]
    for argv, needle in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and needle in capsys.readouterr().err.strip().splitlines()[-1], argv
    assert mine.read_text() == "my results"
