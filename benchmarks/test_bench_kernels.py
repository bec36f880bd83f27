"""pytest-benchmark entries for the GroupNorm+ReLU and attention kernels (and their eager twins).

    .venv/bin/python -m pytest benchmarks/test_bench_kernels.py --benchmark-only

One representative shape per op (the stride-4 GN map and the res5 cross-attention at batch
16 on CUDA; tiny interpreter shapes on CPU, which only show the entries run). The cases are
the plain scripts' (bench_group_norm_act.py, bench_attention.py), so both time the same thing.
"""
import os

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported

import pytest  # noqa: E402

from benchmarks import bench_attention, bench_group_norm_act  # noqa: E402
from benchmarks.common import synchronized  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
MODES = ("fwd", "fwd+bwd")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", ["eager", "triton"])
def test_group_norm_relu(benchmark, impl, mode):
    shape = bench_group_norm_act.shapes(small=not CUDA)[0]
    fn, _ = bench_group_norm_act.make_case(shape, impl, mode, DTYPE, DEVICE)
    benchmark(synchronized(fn))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", bench_attention.IMPLS)
def test_attention_cross(benchmark, impl, mode):
    case = bench_attention.cases(small=not CUDA)[1]
    fn, _, _ = bench_attention.make_case(case, impl, mode, DTYPE, DEVICE)
    benchmark(synchronized(fn))
