"""Sweep each Triton kernel's launch configuration at the benchmark shapes, checked and timed.

    python benchmarks/tune_kernels.py [--kernel NAME ...] [--json PATH]

Every kernel module has a ``CONFIGS`` table, a ``pick(shape, dtype)`` that chooses the shipped
entry for a shape, and launchers that take ``config=``. Each candidate here is a variant of the
picked config (``dataclasses.replace`` of the fields being swept), passed to the launcher of the
pass it affects, checked against the shipped configuration's results (outputs and gradients to
a tolerance for the dtype; the matcher: the same optimal total cost), then timed on that pass
alone. Per kernel the table lists the candidates fastest first, with the time relative to the
shipped one. Adopting a winner stays a reviewed edit of the kernel's CONFIGS (then rerun
tests/test_kernels_compile.py, which checks registers and shared memory for sm_90 and sm_80).
A candidate that fails to compile or launch is reported, not fatal.

Shapes are those of R50 ADE20K 512x512 training at batch 16, in bf16 (as with ``--amp bf16``):
GroupNorm on the stride-4 map, the res5 cross-attention (100 queries x 256 keys, padded), the
matcher's costs in the criterion's layout (16 images x 6 layers x 100 queries, 50 targets,
128x128), 800 matched masks 128^2 -> 512^2, 96 assignment problems 100 x 50. Without CUDA a
tiny shape and two candidates per kernel run through the interpreter, only to show the script
works.
"""
import argparse
import itertools
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernel modules are imported

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import Row, measure, new_file, report  # noqa: E402
from maskformer_fast.kernels import attention, group_norm_act, hungarian, mask_costs, mask_losses  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
# outputs and gradients stored in DTYPE: a different summation order moves them by its rounding
TOLERANCE = (2e-2, 2e-2) if DTYPE == torch.bfloat16 else (1e-4, 1e-5)


@dataclass
class Sweep:
    """Candidates for one kernel pass: launch configs of its module's CONFIGS type.

    ``make()`` builds the inputs once and returns ``run``, a function of a config that runs the
    pass being tuned with it and returns the tensors to check (outputs, gradients)."""

    kernel: str
    shape: str
    shipped: Any
    candidates: List[Dict[str, Any]]  # {"label": swept values, "config": the launch config}
    make: Callable[[], Callable[[Any], List[torch.Tensor]]]
    check: Callable[[List[torch.Tensor], List[torch.Tensor]], None]


def _grid(to_config: Callable[..., Any], **axes) -> List[Dict[str, Any]]:
    """Every combination of the given values as {label, config}; on CPU the first two only."""
    names = list(axes)
    combos = [dict(zip(names, values)) for values in itertools.product(*axes.values())]
    return [{"label": combo, "config": to_config(**combo)} for combo in (combos if CUDA else combos[:2])]


def _close(rtol: float, atol: float):
    """Results agree to (rtol, atol); only summation order differs between configurations."""
    def check(got, want):
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g.float(), w.float(), rtol=rtol, atol=atol)
    return check


def _randn(*shape, dtype=DTYPE, scale=1.0):
    return (scale * torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape)))).to(DEVICE, dtype)


def _group_norm_sweep() -> Sweep:
    N, C, H, W, G = (16, 256, 128, 128, 32) if CUDA else (2, 16, 12, 12, 4)

    def make():
        x, dy = _randn(N, C, H, W), _randn(N, C, H, W, scale=0.5)
        weight, bias = _randn(C, dtype=torch.float32), _randn(C, dtype=torch.float32)

        def run(config):
            y, mean, rstd = group_norm_act._forward(x, weight, bias, G, 1e-5, True, config=config)
            return [y, *group_norm_act._backward(dy, x, weight, bias, mean, rstd, G, True, config=config)]
        return run

    chunks = (1024, 2048, 4096, 8192, 16384) if CUDA else (64, 128)
    return Sweep("group_norm_act fwd+bwd", f"{N}x{C}x{H}x{W} G={G}", group_norm_act.pick((N, C, H, W), DTYPE),
                 _grid(lambda chunk, one_pass_max: group_norm_act.GroupNormConfig(one_pass_max, chunk),
                       chunk=chunks, one_pass_max=(8192, 16384) if CUDA else (32,)), make, _close(*TOLERANCE))


def _attention_sweeps() -> List[Sweep]:
    B, h, Lq, Lk, d = (16, 8, 100, 256, 32) if CUDA else (1, 2, 9, 20, 16)
    shipped = attention.pick((B, h, Lq, d), DTYPE)
    scale = d ** -0.5

    def make(backward):
        q, k, v = (_randn(B, h, n, d) for n in (Lq, Lk, Lk))
        ignore = torch.zeros(B, Lk, dtype=torch.uint8, device=DEVICE)
        ignore[:, Lk - Lk // 4:] = 1  # padded pixels of a padded batch
        if not backward:
            return lambda config: list(attention._forward(q, k, v, ignore, scale, 0.0, None, config=config))
        o, lse = attention._forward(q, k, v, ignore, scale, 0.0, None)
        do = _randn(B, h, Lq, d, scale=0.5)
        return lambda config: list(attention._backward(do, q, k, v, o, lse, ignore, scale, 0.0, None, config=config))

    axes = dict(BLOCK_M=(32, 64, 128), BLOCK_N=(16, 32, 64, 128) if DTYPE == torch.float32 else (32, 64, 128),
                num_warps=(4, 8), num_stages=(2, 3))
    shape = f"B={B} h={h} {Lq}x{Lk} d={d} padded"
    return [Sweep("attention fwd", shape, shipped,
                  _grid(lambda **blocks: replace(shipped, forward=attention.AttentionBlocks(**blocks)), **axes),
                  lambda: make(False), _close(*TOLERANCE)),
            Sweep("attention bwd", shape, shipped,
                  _grid(lambda **blocks: replace(shipped, backward=attention.AttentionBlocks(**blocks)), **axes),
                  lambda: make(True), _close(*TOLERANCE))]


def _mask_costs_sweep() -> Sweep:
    # the criterion's layout: the 6 decoder layers stacked along the queries, [16, 6*100, h, w]
    B, Q, K, size = (16, 600, 50, 128) if CUDA else (2, 8, 3, 8)
    shipped = mask_costs.pick((B, K, size, size), torch.bool)

    def make():
        pred = _randn(B, Q, size, size, scale=3.0)
        target = (_randn(B, K, size, size, dtype=torch.float32) > 0.5)
        num_targets = torch.full((B,), K, device=DEVICE)
        return lambda config: list(mask_costs._mask_costs(pred, target, num_targets, config=config))

    return Sweep("mask_costs", f"B={B} Q={Q} K={K} {size}x{size}", shipped,
                 _grid(lambda **fields: replace(shipped, **fields), BLOCK_Q=(16, 32, 64), BLOCK_P=(32, 64, 128),
                       num_warps=(4, 8)), make, _close(1e-5, 1e-6))


def _mask_losses_sweeps() -> List[Sweep]:
    M, size, scale = (800, 128, 4) if CUDA else (2, 8, 4)
    shipped = mask_losses.pick((M, size, size), DTYPE)

    def make(backward):
        pred = _randn(M, size, size, scale=3.0)
        target = _randn(M, size * scale, size * scale, dtype=torch.float32) > 0.5
        if not backward:
            return lambda config: [mask_losses.mask_losses_forward(pred, target, config=config)]
        coef = _randn(M, 3, dtype=torch.float32, scale=1e-3)
        return lambda config: [mask_losses.mask_losses_backward(pred, target, coef, config=config)]

    def backward_blocks(BLOCK_I, CHUNK, num_warps, num_stages):
        return replace(shipped, backward=mask_losses.BackwardBlocks(BLOCK_I, BLOCK_I, CHUNK, num_warps, num_stages))

    shape = f"M={M} {size}^2 -> {size * scale}^2"
    forward = _grid(lambda **blocks: replace(shipped, forward=replace(shipped.forward, **blocks)),
                    BLOCK_Y=(8, 16, 32), BLOCK_X=(64, 128, 256), num_warps=(4, 8))
    backward = _grid(backward_blocks, BLOCK_I=(16, 32, 64), CHUNK=(32, 64), num_warps=(4, 8), num_stages=(1, 2))
    return [Sweep("mask_losses fwd", shape, shipped, forward, lambda: make(False), _close(1e-4, 1e-5)),
            Sweep("mask_losses bwd", shape, shipped, backward, lambda: make(True), _close(*TOLERANCE))]


def _matching_sweep() -> Sweep:
    B, N, K = (96, 100, 50) if CUDA else (3, 6, 4)

    def make():
        cost = torch.rand(B, N, K, generator=torch.Generator().manual_seed(K)).to(DEVICE)
        num_cols = torch.full((B,), K)

        def run(config):
            assignment = hungarian.linear_sum_assignment_gpu(cost, num_cols, config=config)
            matched = assignment >= 0
            return [torch.where(matched, cost.gather(2, assignment.clamp(min=0)[..., None])[..., 0], 0).sum(1)]
        return run

    candidates = [{"label": {"num_warps": w}, "config": hungarian.HungarianConfig(num_warps=w)} for w in (1, 2, 4, 8)]
    return Sweep("hungarian (gpu matcher)", f"B={B} N={N} K={K}", hungarian.pick((B, N, K), torch.float32),
                 candidates if CUDA else candidates[:2], make, _close(1e-6, 1e-6))


def sweeps() -> List[Sweep]:
    return [_group_norm_sweep(), *_attention_sweeps(), _mask_costs_sweep(), *_mask_losses_sweeps(), _matching_sweep()]


def tune(sweep: Sweep) -> List[Row]:
    """One row per candidate (and the shipped configuration), fastest first."""
    run = sweep.make()
    want = run(sweep.shipped)
    rows = [measure(sweep.kernel, "shipped", sweep.shape, lambda: run(sweep.shipped))]
    for candidate in sweep.candidates:
        label = " ".join(f"{k}={v}" for k, v in candidate["label"].items())
        try:
            sweep.check(run(candidate["config"]), want)
            rows.append(measure(sweep.kernel, label, sweep.shape, lambda: run(candidate["config"])))
        except Exception as e:  # a config that does not compile, launch or agree is a result
            reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            rows.append(Row(sweep.kernel, label, sweep.shape, float("nan"), float("nan"), float("nan"),
                            extra={"failed": reason}))
    shipped = rows[0].ms
    for row in rows:
        if row.ms == row.ms:  # not NaN
            row.extra["vs shipped"] = f"{shipped / row.ms:.2f}x"
    return sorted(rows, key=lambda r: (r.ms != r.ms, r.ms))


def main(argv=None):
    all_sweeps = sweeps()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", nargs="+", default=None,
                   help=f"substrings of the sweeps to run (default all): {[s.kernel for s in all_sweeps]}")
    p.add_argument("--json", type=new_file, default=None, help="also write the rows to this new file")
    args = p.parse_args(argv)
    chosen = [s for s in all_sweeps if args.kernel is None or any(k in s.kernel for k in args.kernel)]
    if not chosen:
        p.error(f"no sweep matches {args.kernel}")
    rows = []
    for sweep in chosen:
        rows += tune(sweep)
    report(rows, args.json)


if __name__ == "__main__":
    main()
