"""pytest-benchmark entries for the mask cost and mask loss kernels (and their eager twins).

    .venv/bin/python -m pytest benchmarks/test_bench_mask_kernels.py --benchmark-only

One representative shape per op (costs: 16 images x 6 layers x 100 queries x 50 targets at
128x128; losses: 800 masks 128x128 -> 512x512, on CUDA; tiny interpreter shapes on CPU, which
only show the entries run). The cases are the plain scripts' (bench_mask_costs.py,
bench_mask_losses.py), so both time the same thing.
"""
import os

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported

import pytest  # noqa: E402

from benchmarks import bench_mask_costs, bench_mask_losses  # noqa: E402
from benchmarks.common import synchronized  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"


@pytest.mark.parametrize("impl", bench_mask_costs.IMPLS)
def test_mask_costs(benchmark, impl):
    shape = bench_mask_costs.shapes(small=not CUDA)[-1]
    fn, _, _ = bench_mask_costs.make_case(shape, impl, torch.float32, DEVICE)
    benchmark(synchronized(fn))


@pytest.mark.parametrize("mode", bench_mask_losses.MODES)
@pytest.mark.parametrize("impl", bench_mask_losses.IMPLS[:2])
def test_mask_losses(benchmark, impl, mode):
    fn, _, _ = bench_mask_losses.make_case(bench_mask_losses.shape(small=not CUDA), impl, mode, torch.float32, DEVICE)
    benchmark(synchronized(fn))
