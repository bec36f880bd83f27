"""Inference benchmark: the eager torch model vs its ONNX export in onnxruntime on the CPU.

    python benchmarks/bench_onnx.py [--preset maskformer_r50_ade20k] [--batch 1] [--size 512]
                                    [--threads 2] [--repeats 5] [--json PATH]

Both rows time one forward of the full-size preset (random init, float32, CPU) with the same
number of threads; the onnxruntime row also records the export time and the largest output
difference from eager, relative to the output's max |value|.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import maskformer_fast as mf  # noqa: E402
from benchmarks.common import Row, new_file, positive_int, preset_name, report  # noqa: E402


def median_ms(fn, repeats):
    """(median, min, max) milliseconds of fn() after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times), max(times)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", type=preset_name, default="maskformer_r50_ade20k")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--size", type=positive_int, default=512)
    p.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--json", type=new_file, default=None, help="also write the rows to this new file")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = mf.get_config(args.preset)
    model = mf.build_model(cfg).eval()
    images = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    shape = f"{args.preset} {args.batch}x3x{args.size}x{args.size} fp32 threads={args.threads}"

    def eager():
        with torch.no_grad(), mf.ops.use("eager"):
            return model(images)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = mf.export_onnx(model, os.path.join(tmp, "model.onnx"))
        export_s = time.perf_counter() - start
        runner = mf.OnnxModel(path, cfg.size_divisibility, threads=args.threads)
        rows = [Row("model_forward", "eager", shape, *median_ms(eager, args.repeats)),
                Row("model_forward", "onnxruntime-cpu", shape, *median_ms(lambda: runner(images), args.repeats))]
        want, got = eager(), runner(images)
    rows[1].extra["export_s"] = f"{export_s:.1f}"
    for key in ("pred_logits", "pred_masks"):
        rel = ((got[key] - want[key]).abs().max() / want[key].abs().max()).item()
        rows[1].extra[f"max rel diff {key}"] = f"{rel:.1e}"
    rows[1].extra["speedup"] = f"{rows[0].ms / rows[1].ms:.2f}x"
    report(rows, args.json)


if __name__ == "__main__":
    main()
