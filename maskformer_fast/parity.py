"""Numerical parity of the fast engine with the eager reference, on your model and hardware.

    python -m maskformer_fast.parity                                   # R50 ADE20K, 2 x 512^2 on CUDA (64^2 on CPU)
    python -m maskformer_fast.parity --preset maskformer_swin_t_ade20k --amp bf16 [--json out.json]
    python -m maskformer_fast.parity --size 64 num_decoder_layers=2    # KEY=VALUE config overrides

One random-init model (dropout and stochastic depth off), one batch of random images and blocky targets, three
runs of forward + criterion + backward on the same weights and the same matching:

* truth: the eager reference in float64 (``ops.use("eager")``, model and inputs in fp64);
* eager: the eager reference at the working precision (fp32, or under ``--amp`` autocast);
* fast: the kernels (``ops.use("fast")``; ``--engine auto``: the default mode) at the same precision.

For the outputs, every loss term and every parameter gradient it reports the error of eager
and of fast against the truth, and their ratio: fast passes where its error is at most
``--factor`` (default 2, FlashAttention's rule) times eager's, with a floor for quantities
eager gets exactly. Gradients are compared per parameter, relative to the largest |gradient|
of that parameter, and the worst parameter is reported. Exit status 1 when anything fails.

The matching comes from the float64 run and is reused by the other two (``criterion(...,
matching=...)``): a near-tie decided differently at lower precision would otherwise compare
losses of different (query, target) pairs. Without CUDA the kernels run in the Triton
interpreter on CPU (slow: use a small ``--size`` and few layers). Bad arguments are one line on
stderr and exit status 2; ``--json`` never overwrites a file.
"""
import argparse
import copy
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import torch

from .cli_errors import new_file

__all__ = ["ParityRow", "random_batch", "compare", "main"]


@dataclass
class ParityRow:
    """One compared quantity: errors of eager and fast against the float64 truth."""

    name: str
    eager_error: float
    fast_error: float
    ok: bool

    @property
    def ratio(self) -> float:
        if self.eager_error > 0:
            return self.fast_error / self.eager_error
        return float("inf") if self.fast_error > 0 else 1.0


def random_batch(batch: int, size: int, num_classes: int, masks_per_image: int, generator: torch.Generator):
    """Images [batch, 3, size, size] and per image up to ``masks_per_image`` blocky target masks
    (16-pixel cells, each owned by one target) with distinct random labels."""
    images = torch.randn(batch, 3, size, size, generator=generator)
    cell = max(1, size // 16)
    targets = []
    for _ in range(batch):
        k = min(masks_per_image, num_classes)
        owner = torch.randint(0, k, (size // cell + 1, size // cell + 1), generator=generator)
        owner = owner.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[:size, :size]
        masks = owner[None] == torch.arange(k)[:, None, None]
        keep = masks.flatten(1).any(1)  # a target that owns no cell is no target
        targets.append({"labels": torch.randperm(num_classes, generator=generator)[:k][keep], "masks": masks[keep]})
    return images, targets


def _run(model, images, targets, mode: str, autocast, matching=None):
    """(outputs, losses, gradients, matching) of one forward + criterion + backward."""
    model.zero_grad(set_to_none=True)
    from . import ops

    with ops.use(mode), autocast():
        out = model(images)
        if matching is None:
            matching = model.criterion.match(out, targets)
        losses = model.criterion(out, targets, matching=matching)
    sum(losses.values()).backward()
    grads = {n: p.grad.detach().double() for n, p in model.named_parameters() if p.grad is not None}
    outputs = {k: out[k].detach().double() for k in ("pred_logits", "pred_masks")}
    return outputs, {k: v.detach().double() for k, v in losses.items()}, grads, matching


def compare(truth: Dict[str, torch.Tensor], eager: Dict[str, torch.Tensor], fast: Dict[str, torch.Tensor],
            factor: float, floor: float, relative_to_max: bool = False) -> List[ParityRow]:
    """One row per key: max |x - truth| of eager and of fast (divided by max |truth| when
    ``relative_to_max``), fast passing when its error <= factor * eager's + floor."""
    if truth.keys() != eager.keys() or truth.keys() != fast.keys():
        raise ValueError(f"the runs produced different quantities: {sorted(set(truth) ^ set(fast))}")
    rows = []
    for key, ref in truth.items():
        scale = ref.abs().max().clamp_min(1e-30).item() if relative_to_max else 1.0
        e = (eager[key].to(ref.device) - ref).abs().max().item() / scale
        f = (fast[key].to(ref.device) - ref).abs().max().item() / scale
        rows.append(ParityRow(key, e, f, f <= factor * e + floor))
    return rows


def _worst(rows: List[ParityRow], label: str, most: int = 5) -> List[ParityRow]:
    """The gradient row with the largest fast/eager ratio, or the `most` worst failing ones
    (the last naming how many more failed), renamed under `label`."""
    ranked = sorted(rows, key=lambda r: (r.ok, -r.ratio))
    failing = sum(not r.ok for r in rows)
    shown = ranked[:min(most, failing)] if failing else ranked[:1]
    named = [ParityRow(f"{label} {r.name}", r.eager_error, r.fast_error, r.ok) for r in shown]
    if failing > len(shown):
        named[-1].name += f" (+{failing - len(shown)} more failing)"
    return named


def _progress(message: str) -> None:
    print(f"[parity {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="maskformer_r50_ade20k")
    p.add_argument("--engine", choices=("fast", "auto"), default="fast",
                   help="the ops mode checked against eager: fast (every kernel, default) or auto (the kernels "
                        "where they support the call, the references elsewhere: what runs by default)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=None,
                   help="square image side (a multiple of 32 avoids padding); default 512 on CUDA, 64 on CPU")
    p.add_argument("--masks-per-image", type=int, default=10)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu (interpreter)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--factor", type=float, default=2.0, help="fast may err up to this many times eager's error")
    p.add_argument("--floor", type=float, default=None,
                   help="absolute slack for quantities eager gets (almost) exactly; default 1e-6 fp32, 1e-3 amp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=new_file, default=None,
                   help="also write the rows to this new file (an existing one is refused)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config field overrides")
    return p.parse_args(argv)


def _check_args(args: argparse.Namespace) -> torch.device:
    """The device to run on; ValueError naming the first bad argument (before any model is built)."""
    for name, least in (("batch", 1), ("masks_per_image", 1)):
        if getattr(args, name) < least:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(args, name)}")
    if args.size is not None and args.size < 64:
        # at 32 the stride-32 feature is 1x1: one key, identical decoder states for every query, so
        # the query embeddings' float64 gradient is 0 and its "error" would be rounding noise
        raise ValueError(f"--size must be >= 64 (below, the stride-32 feature is 1x1 and the query "
                         f"embeddings get no gradient to compare), got {args.size}")
    if not math.isfinite(args.factor) or args.factor <= 0:
        raise ValueError(f"--factor must be a finite number > 0, got {args.factor}")
    if args.floor is not None and (not math.isfinite(args.floor) or args.floor < 0):
        raise ValueError(f"--floor must be a finite number >= 0, got {args.floor}")
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise ValueError(f"--device {args.device!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: this machine has no CUDA device")
    for item in args.overrides:
        if "=" not in item:
            raise ValueError(f"config override {item!r} is not KEY=VALUE")
    return device


def _print_rows(rows: List[ParityRow], args: argparse.Namespace, device: torch.device, floor: float) -> None:
    print(f"parity: {args.preset} {args.batch}x3x{args.size}x{args.size} on {device}, amp={args.amp}, "
          f"engine {args.engine}; errors against float64, {args.engine} passes at <= {args.factor:g}x eager "
          f"(+{floor:g}; gradients {args.factor + 1:g}x, relative to each parameter's max)")
    print(f"{'quantity':58s} {'eager err':>10s} {args.engine + ' err':>10s} {'ratio':>7s}  ")
    for r in rows:
        print(f"{r.name:58s} {r.eager_error:10.2e} {r.fast_error:10.2e} {r.ratio:7.2f}  {'ok' if r.ok else 'FAIL'}")
    failed = [r.name for r in rows if not r.ok]
    print("parity: " + ("all ok" if not failed else f"{len(failed)} FAILED: {', '.join(failed)}"))


def run(args: argparse.Namespace) -> List[ParityRow]:
    """The three runs and their rows (printed, and written to ``--json``)."""
    device = _check_args(args)
    if device.type == "cpu":
        # the kernels' CPU path; read when a kernel module is first imported (by ops, below)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from .config import get_config
    from .model import build_model

    overrides = {"dropout": 0.0, "drop_path_rate": 0.0}  # the three runs must compute one function
    overrides.update(item.split("=", 1) for item in args.overrides)
    cfg = get_config(args.preset, **{k.strip(): v for k, v in overrides.items()})
    if args.size is None:  # the interpreter is slow: a 64^2 image still runs every kernel
        args.size = 512 if device.type == "cuda" else 64
    torch.manual_seed(args.seed)
    model = build_model(cfg).to(device).train()
    truth_model = copy.deepcopy(model).double()
    images, targets = random_batch(args.batch, args.size, cfg.num_classes, args.masks_per_image,
                                   torch.Generator().manual_seed(args.seed))
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    images = images.to(device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    floor = args.floor if args.floor is not None else (1e-3 if amp_dtype else 1e-6)

    _progress(f"{args.preset} {args.batch}x3x{args.size}x{args.size} on {device}: 1/3 float64 reference run")
    truth = _run(truth_model, images.double(), targets, "eager", nullcontext)
    matching = truth[3]
    _progress(f"2/3 eager run (amp={args.amp})")
    eager = _run(model, images, targets, "eager", autocast, matching)
    _progress(f"3/3 {args.engine} run (the kernels" + (", interpreted on the CPU: minutes" if device.type == "cpu"
                                                      else "") + ")")
    fast = _run(model, images, targets, args.engine, autocast, matching)

    rows = compare(truth[0], eager[0], fast[0], args.factor, floor)
    rows += compare(truth[1], eager[1], fast[1], args.factor, floor)
    grad_rows = compare(truth[2], eager[2], fast[2], args.factor + 1.0, floor, relative_to_max=True)
    rows += _worst(grad_rows, f"grad (worst of {len(grad_rows)}):")
    _print_rows(rows, args, device, floor)
    if args.json:
        with open(args.json, "x") as f:
            json.dump({"args": vars(args), "rows": [{**asdict(r), "ratio": r.ratio} for r in rows]}, f, indent=1)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> List[ParityRow]:
    """The rows; bad input is one stderr line and SystemExit(2) (``--debug``: the exception)."""
    from .cli_errors import run_cli
    args = parse_args(argv)
    return run_cli("parity", lambda: run(args), args.debug)


if __name__ == "__main__":
    sys.exit(0 if all(r.ok for r in main()) else 1)
