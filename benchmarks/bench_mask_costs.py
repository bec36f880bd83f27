"""Matcher mask costs: the Triton kernel vs the official per-image loop and the batched eager op.

    python benchmarks/bench_mask_costs.py [--images 16] [--layers 6] [--queries 100]
                                          [--targets 5 20 50] [--size 128] [--dtype fp32] [--json PATH]

Shapes of R50 ADE20K 512x512 training (batch 16, 6 decoder layers, 100 queries, 128x128
masks at stride 4). Three implementations of the same focal + dice costs of every layer:
  official  one (layer, image) at a time, float einsums as the official HungarianMatcher
  eager     maskformer_fast.reference.mask_costs on all layers and images at once ([B, L*Q, K],
            the criterion's layout)
  triton    maskformer_fast.kernels.mask_costs, one launch
TFLOP/s counts the three pairwise products (2 * 3 * B*L * Q * K * h*w useful FLOPs).
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
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import DTYPES, measure, new_file, positive_int, report  # noqa: E402
from maskformer_fast import reference  # noqa: E402
from maskformer_fast.kernels.mask_costs import mask_costs  # noqa: E402


def official_costs(pred_masks, target_masks, num_targets, num_layers):
    """The official matcher's mask costs: a Python loop over layers and images, [Q, K] einsums.

    pred_masks: [B, L*Q, h, w], the layers stacked along the queries as the criterion does.
    """
    out = []
    images, queries = pred_masks.shape[0], pred_masks.shape[1] // num_layers
    for layer in range(num_layers):
        for b in range(images):
            x = pred_masks[b, layer * queries:(layer + 1) * queries].flatten(1)  # [Q, hw]
            t = target_masks[b, : num_targets[b]].flatten(1).to(x)  # [K, hw]
            prob = x.sigmoid()
            pos = 0.25 * (1 - prob) ** 2 * F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none")
            neg = 0.75 * prob ** 2 * F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")
            focal = (torch.einsum("nc,mc->nm", pos, t) + torch.einsum("nc,mc->nm", neg, 1 - t)) / x.shape[1]
            dice = 1 - (2 * torch.einsum("nc,mc->nm", prob, t) + 1) / (prob.sum(-1)[:, None] + t.sum(-1)[None, :] + 1)
            out.append((focal, dice))
    return out


IMPLS = ("official loop", "eager batched", "triton")


def shapes(small, targets=(5, 20, 50), images=16, layers=6, queries=100, size=128):
    """(images, layers, queries, K, size) per target count; a tiny one for the interpreter."""
    if small:
        return [(2, 2, 8, 3, 16)]
    return [(images, layers, queries, K, size) for K in targets]


def make_case(shape, impl, dtype, device, seed=0):
    """(fn, useful FLOPs, bytes) for one implementation at one shape (inputs built here)."""
    images, layers, queries, K, size = shape
    g = torch.Generator().manual_seed(seed)
    # the criterion's layout: layers stacked along the queries, [B, L*Q, h, w]
    pred = (3 * torch.randn(images, layers * queries, size, size, generator=g)).to(device, dtype)
    target = (torch.rand(images, K, size, size, generator=g) > 0.7).to(device)
    num_targets = torch.full((images,), K, dtype=torch.int64, device=device)
    flops = 2 * 3 * images * layers * queries * K * size * size
    nbytes = pred.numel() * pred.element_size() + target.numel() + 2 * 4 * images * layers * queries * K
    fn = {
        "official loop": lambda: official_costs(pred, target, [K] * images, layers),
        "eager batched": lambda: reference.mask_costs(pred, target, num_targets),
        "triton": lambda: mask_costs(pred, target, num_targets),
    }[impl]
    return fn, flops, nbytes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=positive_int, default=16)
    p.add_argument("--layers", type=positive_int, default=6)
    p.add_argument("--queries", type=positive_int, default=100)
    p.add_argument("--targets", type=positive_int, nargs="+", default=[5, 20, 50])
    p.add_argument("--size", type=positive_int, default=128)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--json", type=new_file, default=None, help="also write the rows to this new file")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = DTYPES[args.dtype]
    rows = []
    for shape in shapes(not cuda, args.targets, args.images, args.layers, args.queries, args.size):
        images, layers, queries, K, size = shape
        label = f"B={images} L*Q={layers}x{queries} K={K} {size}x{size} {args.dtype}"
        outputs = {}
        for impl in IMPLS:
            fn, flops, nbytes = make_case(shape, impl, dtype, device)
            rows.append(measure("mask_costs", impl, label, fn, nbytes, flops))
            if impl != "official loop":
                outputs[impl] = fn()
        err = max((a - b).abs().max().item() for a, b in zip(outputs["triton"], outputs["eager batched"]))
        official, eager, fast = rows[-3:]
        fast.extra["max|triton-eager|"] = f"{err:.1e}"
        fast.extra["vs official"] = f"{official.ms / fast.ms:.1f}x"
        fast.extra["vs eager"] = f"{eager.ms / fast.ms:.1f}x"
    report(rows, args.json)


if __name__ == "__main__":
    main()
