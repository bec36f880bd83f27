"""Sweep each Triton kernel's launch configuration at the benchmark shapes, checked and timed.

    python benchmarks/tune_kernels.py [--kernel NAME ...] [--json PATH]

The shipped configuration of every kernel is a set of module constants (block sizes, warps,
chunking) or, for attention and the matcher, a small function of the shape. Each candidate
here patches those for one run, is checked against the shipped configuration's results
(outputs and gradients to a tolerance for the dtype; the matcher: the same optimal total
cost), then timed on the pass it affects. Per kernel the table lists the candidates fastest
first, with the time relative to the shipped one. Adopting a winner stays a reviewed edit of
the kernel file (then rerun tests/test_kernels_compile.py, which checks registers and shared
memory for sm_90 and sm_80). A candidate that fails to compile or launch is reported, not fatal.

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
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List
from unittest import mock

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernel modules are imported

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import Row, measure, report  # noqa: E402
from maskformer_fast.kernels import attention, group_norm_act, hungarian, mask_costs, mask_losses  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
# outputs and gradients stored in DTYPE: a different summation order moves them by its rounding
TOLERANCE = (2e-2, 2e-2) if DTYPE == torch.bfloat16 else (1e-4, 1e-5)


@dataclass
class Sweep:
    """Candidates for one kernel: each a {module attribute: value} patch of ``module``.

    ``make()`` builds the inputs once and returns ``run``, a function of no arguments that runs
    the pass being tuned and returns the tensors to check (outputs, gradients)."""

    kernel: str
    shape: str
    module: object
    candidates: List[Dict[str, object]]
    make: Callable[[], Callable[[], List[torch.Tensor]]]
    check: Callable[[List[torch.Tensor], List[torch.Tensor]], None]


def _grid(**axes) -> List[Dict[str, object]]:
    """Every combination of the given values, as patches; on CPU the first two only."""
    names = list(axes)
    combos = [dict(zip(names, values)) for values in itertools.product(*axes.values())]
    return combos if CUDA else combos[:2]


def _close(rtol: float, atol: float):
    """Results agree to (rtol, atol); only summation order differs between configurations."""
    def check(got, want):
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g.float(), w.float(), rtol=rtol, atol=atol)
    return check


def _randn(*shape, dtype=DTYPE, scale=1.0):
    return (scale * torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape)))).to(DEVICE, dtype)


def _fwd_bwd(fn, leaves: List[torch.Tensor]) -> Callable[[], List[torch.Tensor]]:
    """run(): fn's output(s) and the gradients of a fixed weighting of them wrt leaves."""
    def run():
        out = fn(*leaves)
        outs = list(out) if isinstance(out, tuple) else [out]
        loss = sum((o.float() * (i + 1)).sum() for i, o in enumerate(outs))
        return [o.detach() for o in outs] + list(torch.autograd.grad(loss, leaves))
    return run


def _group_norm_sweep() -> Sweep:
    N, C, H, W, G = (16, 256, 128, 128, 32) if CUDA else (2, 16, 12, 12, 4)

    def make():
        x = _randn(N, C, H, W).requires_grad_()
        weight, bias = _randn(C, dtype=torch.float32), _randn(C, dtype=torch.float32)
        return _fwd_bwd(lambda x: group_norm_act.group_norm_act(x, G, weight, bias), [x])

    chunks = (1024, 2048, 4096, 8192, 16384) if CUDA else (64, 128)
    return Sweep("group_norm_act fwd+bwd", f"{N}x{C}x{H}x{W} G={G}", group_norm_act,
                 _grid(CHUNK=chunks, ONE_PASS_MAX=(8192, 16384) if CUDA else (32,)), make, _close(*TOLERANCE))


def _attention_sweeps() -> List[Sweep]:
    B, h, Lq, Lk, d = (16, 8, 100, 256, 32) if CUDA else (1, 2, 9, 20, 16)
    shipped = attention._launch_config
    sweeps = []
    for backward in (False, True):
        def make(backward=backward):
            q, k, v = (_randn(B, h, n, d).requires_grad_(backward) for n in (Lq, Lk, Lk))
            ignore = torch.zeros(B, Lk, dtype=torch.bool, device=DEVICE)
            ignore[:, Lk - Lk // 4:] = True  # padded pixels of a padded batch
            fn = lambda q, k, v: attention.attention(q, k, v, key_padding_mask=ignore)  # noqa: E731
            if backward:
                return _fwd_bwd(fn, [q, k, v])
            return lambda: [fn(q, k, v)]

        configs = _grid(BLOCK_M=(32, 64, 128), BLOCK_N=(16, 32, 64, 128) if DTYPE == torch.float32 else (32, 64, 128),
                        num_warps=(4, 8), num_stages=(2, 3))
        candidates = []
        for config in configs:
            def launch_config(head_dim, dtype, is_backward, config=config, backward=backward):
                return dict(config) if is_backward == backward else shipped(head_dim, dtype, is_backward)
            candidates.append({"_launch_config": launch_config, "label": config})
        sweeps.append(Sweep(f"attention {'fwd+bwd (bwd config)' if backward else 'fwd'}",
                            f"B={B} h={h} {Lq}x{Lk} d={d} padded", attention, candidates, make,
                            _close(*TOLERANCE)))
    return sweeps


def _mask_costs_sweep() -> Sweep:
    # the criterion's layout: the 6 decoder layers stacked along the queries, [16, 6*100, h, w]
    B, Q, K, size = (16, 600, 50, 128) if CUDA else (2, 8, 3, 8)

    def make():
        pred = _randn(B, Q, size, size, scale=3.0)
        target = (_randn(B, K, size, size, dtype=torch.float32) > 0.5)
        num_targets = torch.full((B,), K, device=DEVICE)
        return lambda: list(mask_costs.mask_costs(pred, target, num_targets))

    return Sweep("mask_costs", f"B={B} Q={Q} K={K} {size}x{size}", mask_costs,
                 _grid(_BLOCK_Q=(16, 32, 64), _BLOCK_P=(32, 64, 128), _NUM_WARPS=(4, 8)), make, _close(1e-5, 1e-6))


def _mask_losses_sweeps() -> List[Sweep]:
    M, size, scale = (800, 128, 4) if CUDA else (2, 8, 4)

    def make(backward):
        pred = _randn(M, size, size, scale=3.0).requires_grad_(backward)
        target = _randn(M, size * scale, size * scale, dtype=torch.float32) > 0.5
        fn = lambda pred: mask_losses.mask_losses(pred, target, float(M))  # noqa: E731
        return _fwd_bwd(fn, [pred]) if backward else (lambda: list(fn(pred)))

    shape = f"M={M} {size}^2 -> {size * scale}^2"
    fwd = _grid(_FWD_BLOCK_Y=(8, 16, 32), _FWD_BLOCK_X=(64, 128, 256), _FWD_WARPS=(4, 8))
    bwd = _grid(_BWD_BLOCK_I=(16, 32, 64), _BWD_CHUNK=(32, 64), _BWD_WARPS=(4, 8), _BWD_STAGES=(1, 2))
    for patch in bwd:
        patch["_BWD_BLOCK_J"] = patch["_BWD_BLOCK_I"]
    return [Sweep("mask_losses fwd", shape, mask_losses, fwd, lambda: make(False), _close(1e-4, 1e-5)),
            Sweep("mask_losses fwd+bwd (bwd config)", shape, mask_losses, bwd, lambda: make(True), _close(*TOLERANCE))]


def _matching_sweep() -> Sweep:
    B, N, K = (96, 100, 50) if CUDA else (3, 6, 4)

    def make():
        cost = torch.rand(B, N, K, generator=torch.Generator().manual_seed(K)).to(DEVICE)

        def run():
            assignment = hungarian.linear_sum_assignment(cost)
            matched = assignment >= 0
            return [torch.where(matched, cost.gather(2, assignment.clamp(min=0)[..., None])[..., 0], 0).sum(1)]
        return run

    candidates = [{"_num_warps": (lambda block, w=w: w), "label": {"num_warps": w}} for w in (1, 2, 4, 8)]
    return Sweep("hungarian (gpu matcher)", f"B={B} N={N} K={K}", hungarian, candidates if CUDA else candidates[:2],
                 make, _close(1e-6, 1e-6))


def sweeps() -> List[Sweep]:
    return [_group_norm_sweep(), *_attention_sweeps(), _mask_costs_sweep(), *_mask_losses_sweeps(), _matching_sweep()]


def _patched(module, patch: Dict[str, object]) -> ExitStack:
    stack = ExitStack()
    for name, value in patch.items():
        if name != "label":
            assert hasattr(module, name), f"{module.__name__} has no {name}"
            stack.enter_context(mock.patch.object(module, name, value))
    return stack


def _label(patch: Dict[str, object]) -> str:
    shown = patch.get("label", {k: v for k, v in patch.items() if k != "label"})
    return " ".join(f"{k.strip('_')}={v}" for k, v in shown.items())


def tune(sweep: Sweep) -> List[Row]:
    """One row per candidate (and the shipped configuration), fastest first."""
    run = sweep.make()
    want = run()
    rows = [measure(sweep.kernel, "shipped", sweep.shape, run)]
    for patch in sweep.candidates:
        label = _label(patch)
        try:
            with _patched(sweep.module, patch):
                sweep.check(run(), want)
                rows.append(measure(sweep.kernel, label, sweep.shape, run))
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
    p.add_argument("--json", default=None)
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
