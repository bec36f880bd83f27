"""Shared timing and reporting for the benchmark scripts (nothing runs at import).

On CUDA, times with triton.testing.do_bench (device events, median and p20/p80); on CPU
with perf_counter over a few repeats (CPU numbers only show the scripts run: the
interpreter is no speed reference). Peak memory is the CUDA allocator's peak.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from typing import Callable, List, Optional

import torch

from benchmarks.table import Row, markdown_table  # noqa: F401 (re-exported for the scripts)
from maskformer_fast.cli_errors import new_file  # noqa: F401 (re-exported for the scripts)


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# argparse types: a bad value is one line and exit status 2 before any timing, never a traceback
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def preset_name(text: str) -> str:
    from maskformer_fast.config import list_presets
    if text not in list_presets():
        raise argparse.ArgumentTypeError(f"unknown preset {text!r} (maskformer_fast.list_presets() names them)")
    return text


def progress(script: str, message: str) -> None:
    """One timestamped progress line on stderr (the results go to stdout and the JSON)."""
    print(f"[{script} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def synchronized(fn: Callable[[], object]) -> Callable[[], None]:
    """fn followed by a device sync, for timers that read a host clock (pytest-benchmark)."""
    def run():
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return run


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def time_fn(fn: Callable[[], object], cpu_repeats: int = 3) -> tuple:
    """(median, p20, p80) milliseconds of fn()."""
    if torch.cuda.is_available():
        import triton.testing

        q = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], return_mode="median")
        return tuple(q)
    fn()  # warm-up (compilation, allocation)
    times = []
    for _ in range(cpu_repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return statistics.median(times), times[0], times[-1]


def peak_memory_mib(fn: Callable[[], object]) -> Optional[float]:
    """Peak CUDA memory allocated during one call of fn, above what was live before."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def measure(op: str, impl: str, shape: str, fn: Callable[[], object], nbytes: Optional[float] = None,
            flops: Optional[float] = None, **extra) -> Row:
    ms, p20, p80 = time_fn(fn)
    return Row(op, impl, shape, ms, p20, p80,
               gbps=None if nbytes is None else nbytes / ms / 1e6,
               tflops=None if flops is None else flops / ms / 1e9,
               peak_mib=peak_memory_mib(fn), extra=extra)


def report(rows: List[Row], json_path: Optional[str] = None, sections: Optional[dict] = None) -> None:
    """Print the table; with json_path, also write rows with the device and versions, and
    sections (name -> JSON-able value, e.g. a profile table) beside them."""
    print(f"device: {device_name()}  torch {torch.__version__}")
    print(markdown_table(rows))
    if json_path:
        import triton

        meta = {"device": device_name(), "torch": torch.__version__, "triton": triton.__version__,
                "date": time.strftime("%Y-%m-%d")}
        with open(json_path, "x") as f:  # checked new by `new_file` at parse time
            json.dump({"meta": meta, "rows": [asdict(r) for r in rows], **(sections or {})}, f, indent=1)
