"""Mask losses: the fused upsample+focal+dice kernel vs eager interpolate -> focal -> dice.

    python benchmarks/bench_mask_losses.py [--masks 800] [--size 128] [--scale 4] [--dtype fp32] [--json PATH]

Shapes of R50 ADE20K 512x512 training: M = 16 images x 50 matched masks, predictions
128x128 (stride 4), targets 512x512. Forward, and forward + backward, each for
  eager           maskformer_fast.reference.mask_losses with float targets (what the official
                  criterion feeds it)
  triton          maskformer_fast.kernels.mask_losses with bool targets
  triton f-tgt    the kernel with the same float targets as eager
Peak MiB is the CUDA allocator's peak above the live inputs. GB/s counts the bytes the op
must move: logits and targets once per pass (and the logits' gradient written in backward).
Without CUDA it runs a tiny shape through the interpreter (only to show the script works).
"""
import argparse
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernel module is imported

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import DTYPES, measure, new_file, positive_int, report  # noqa: E402
from maskformer_fast import reference  # noqa: E402
from maskformer_fast.kernels.mask_losses import mask_losses  # noqa: E402


IMPLS = ("eager", "triton", "triton f-tgt")
MODES = ("fwd", "fwd+bwd")


def shape(small, masks=800, size=128, scale=4):
    """(M, h, H); a tiny one for the interpreter."""
    return (2, 8, 32) if small else (masks, size, size * scale)


def make_case(shape, impl, mode, dtype, device, seed=0):
    """(fn, bytes moved, (pred, target)) for one implementation and mode (inputs built here)."""
    M, h, H = shape
    g = torch.Generator().manual_seed(seed)
    pred = (3 * torch.randn(M, h, h, generator=g)).to(device, dtype).requires_grad_()
    target = (torch.rand(M, H, H, generator=g) > 0.7).to(device)
    if impl != "triton":
        target = target.to(dtype)  # eager gets float targets, as the official criterion passes them
    fn = reference.mask_losses if impl == "eager" else mask_losses
    num_masks = float(M)
    passes = 1 if mode == "fwd" else 2
    logits_bytes = pred.numel() * pred.element_size()
    nbytes = passes * (logits_bytes + target.numel() * target.element_size()) + (passes - 1) * logits_bytes

    def forward():
        with torch.no_grad():
            return fn(pred, target, num_masks)

    def forward_backward():
        focal, dice = fn(pred, target, num_masks)
        (20.0 * focal + dice).backward()
        pred.grad = None

    return (forward if mode == "fwd" else forward_backward), nbytes, (pred, target)


def _losses_and_grad(fn, pred, target):
    focal, dice = fn(pred, target, float(pred.shape[0]))
    (20.0 * focal + dice).backward()
    grad, pred.grad = pred.grad, None
    return focal.detach(), dice.detach(), grad


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--masks", type=positive_int, default=800)
    p.add_argument("--size", type=positive_int, default=128)
    p.add_argument("--scale", type=positive_int, default=4)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--json", type=new_file, default=None, help="also write the rows to this new file")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = DTYPES[args.dtype]
    case_shape = shape(not cuda, args.masks, args.size, args.scale)
    M, h, H = case_shape
    label = f"M={M} {h}x{h}->{H}x{H} {args.dtype}"
    rows = []
    for mode in MODES:
        for impl in IMPLS:
            fn, nbytes, _ = make_case(case_shape, impl, mode, dtype, device)
            rows.append(measure(f"mask_losses {mode}", impl, label, fn, nbytes))
        eager, fast = rows[-3], rows[-2]
        fast.extra["speedup"] = f"{eager.ms / fast.ms:.1f}x"
        if eager.peak_mib and fast.peak_mib is not None:
            fast.extra["memory"] = f"{fast.peak_mib / eager.peak_mib:.3f}x"

    _, _, (pred, target) = make_case(case_shape, "triton", "fwd+bwd", dtype, device)
    fast = _losses_and_grad(mask_losses, pred, target)
    ref = _losses_and_grad(reference.mask_losses, pred, target.to(dtype))
    rel = [((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()
           for a, b in zip(fast, ref)]
    rows[-2].extra["rel err focal/dice/grad"] = "/".join(f"{r:.1e}" for r in rel)
    report(rows, args.json)


if __name__ == "__main__":
    main()
