"""Exact assignment for the matcher: scipy in a Python loop vs our C++ and Triton solvers.

    python benchmarks/bench_matching.py [--images 16] [--layers 6] [--queries 100]
                                        [--targets 5 20 50 100] [--size SIZE] [--json PATH]

Two parts, at the shapes of one training step at batch 16 (6 decoder layers x 16 images =
96 problems of 100 queries x K targets):

assignment   the solver alone on a ready [96, 100, K] float32 cost tensor:
  scipy loop        scipy.optimize.linear_sum_assignment per problem (the official way)
  cpu C++ 1 thread  the C++ solver (ops.use("fast") on CPU costs) with torch.set_num_threads(1)
  cpu C++           the C++ solver on all intra-op threads
  gpu Triton        the Triton solver (ops.use("fast") on CUDA costs), costs already on the device
  torch-linear-assignment   its batch_linear_assignment, when that package is installed (CUDA)
matcher step the whole matcher: cost matrices + assignment, for every layer and image
  official          per (layer, image): focal/dice/class costs on the device, .cpu(), scipy
  ours              ops.mask_costs on all layers at once, one linear_sum_assignment ("auto")
  ours, cpu solver  the same costs, copied to the host (one copy) and solved by the C++ solver
Masks are --size square (default 128, the stride-4 map of a 512 crop; 32 without CUDA).
"""
import argparse
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when a kernel module is imported

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scipy.optimize import linear_sum_assignment as scipy_lsa  # noqa: E402

from benchmarks.bench_mask_costs import official_costs  # noqa: E402
from benchmarks.common import measure, new_file, positive_int, progress, report, synchronized  # noqa: E402
from maskformer_fast import matching, ops  # noqa: E402

MASK_WEIGHT, CLASS_WEIGHT, DICE_WEIGHT = 20.0, 1.0, 1.0
NUM_CLASSES = 150


def scipy_loop(cost):
    """The official solver call: one scipy problem at a time (costs already on the host)."""
    return [scipy_lsa(c.numpy()) for c in cost]


def single_threaded(fn):
    def run():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)
    return run


def torch_linear_assignment():
    """batch_linear_assignment of the torch-linear-assignment package, or None."""
    try:
        from torch_linear_assignment import batch_linear_assignment
    except ImportError:
        return None
    return batch_linear_assignment


def solve_fast(cost, num_cols=None):
    """The kernel for cost's device: the C++ solver for CPU costs, the Triton one for CUDA costs."""
    with ops.use("fast"):
        return matching.linear_sum_assignment(cost, num_cols)


def cpp_built() -> bool:
    return matching.cpp_unsupported(torch.empty(1, 1, 1)) is None


def solver_name(device) -> str:
    """The function "auto" runs the matcher with for costs on device."""
    fn = ops.resolve("linear_sum_assignment", torch.empty(1, 1, 1, device=device))
    return f"{fn.__module__}.{fn.__name__}"


def assignment_cases(problems, queries, K, cuda):
    """{impl: fn} solving one [problems, queries, K] float32 cost tensor."""
    cost = torch.rand(problems, queries, K, generator=torch.Generator().manual_seed(K))
    cases = {"scipy loop": lambda: scipy_loop(cost)}
    if cpp_built():
        solve_cpu = lambda: solve_fast(cost)  # noqa: E731
        cases["cpu C++ 1 thread"] = single_threaded(solve_cpu)
        cases[f"cpu C++ {torch.get_num_threads()} threads"] = solve_cpu
    if cuda:
        on_device = cost.cuda()
        cases["gpu Triton"] = lambda: solve_fast(on_device)
        tla = torch_linear_assignment()
        if tla is not None:
            cases["torch-linear-assignment"] = lambda: tla(on_device)
    return cases


def step_inputs(images, layers, queries, K, size, device):
    g = torch.Generator().manual_seed(K)
    logits = torch.randn(images, layers * queries, NUM_CLASSES + 1, generator=g).to(device)
    masks = (3 * torch.randn(images, layers * queries, size, size, generator=g)).to(device)
    labels = torch.randint(0, NUM_CLASSES, (images, K), generator=g).to(device)
    targets = (torch.rand(images, K, size, size, generator=g) > 0.7).to(device)
    return logits, masks, labels, targets


def official_step(logits, masks, labels, targets, layers):
    """The official HungarianMatcher: per layer and image, costs, a host copy and scipy."""
    images, queries = masks.shape[0], masks.shape[1] // layers
    out = []
    for layer in range(layers):
        for b in range(images):
            q = slice(layer * queries, (layer + 1) * queries)
            (focal, dice), = official_costs(masks[b:b + 1, q], targets[b:b + 1], [targets.shape[1]], 1)
            class_cost = -logits[b, q].softmax(-1)[:, labels[b]]
            cost = MASK_WEIGHT * focal + CLASS_WEIGHT * class_cost + DICE_WEIGHT * dice
            out.append(scipy_lsa(cost.cpu()))
    return out


def batched_step(logits, masks, labels, targets, layers, on_host=False):
    """Our matcher: all layers' costs in one ops.mask_costs call, one assignment call ("auto";
    on_host: the costs copied to the host first, for the C++ solver)."""
    images, LQ, K = masks.shape[0], masks.shape[1], targets.shape[1]
    num_targets = torch.full((images,), K, dtype=torch.int64)
    focal, dice = ops.mask_costs(masks, targets, num_targets.to(masks.device))
    class_cost = -logits.softmax(-1).gather(2, labels[:, None, :].expand(-1, LQ, -1))
    cost = MASK_WEIGHT * focal + CLASS_WEIGHT * class_cost + DICE_WEIGHT * dice
    cost = cost.view(images, layers, LQ // layers, K).transpose(0, 1).reshape(layers * images, LQ // layers, K)
    return matching.linear_sum_assignment(cost.cpu() if on_host else cost, num_targets.repeat(layers))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=positive_int, default=16)
    p.add_argument("--layers", type=positive_int, default=6)
    p.add_argument("--queries", type=positive_int, default=100)
    p.add_argument("--targets", type=positive_int, nargs="+", default=[5, 20, 50, 100])
    p.add_argument("--size", type=positive_int, default=None, help="mask side (default 128 on CUDA, 32 on CPU)")
    p.add_argument("--json", type=new_file, default=None, help="also write the rows to this new file")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    size = args.size or (128 if cuda else 32)
    problems = args.images * args.layers
    if cuda and torch_linear_assignment() is None:
        print("torch-linear-assignment is not installed: its row is left out")
    rows = []
    for K in args.targets:
        label = f"B={problems} N={args.queries} K={K} fp32"
        part = []
        for impl, fn in assignment_cases(problems, args.queries, K, cuda).items():
            progress("bench_matching", f"assignment {label}: {impl}")
            part.append(measure("assignment", impl, label, synchronized(fn)))
        for row in part[1:]:
            row.extra["vs scipy loop"] = f"{part[0].ms / row.ms:.1f}x"
        rows += part

    for K in args.targets:
        label = f"B={args.images} L={args.layers} Q={args.queries} K={K} {size}x{size} fp32"
        inputs = step_inputs(args.images, args.layers, args.queries, K, size, device)
        cases = {"official": lambda: official_step(*inputs, args.layers),
                 "ours": lambda: batched_step(*inputs, args.layers)}
        if cuda and cpp_built():
            cases["ours, cpu solver"] = lambda: batched_step(*inputs, args.layers, on_host=True)
        part = []
        for impl, fn in cases.items():
            progress("bench_matching", f"matcher step {label}: {impl}")
            part.append(measure("matcher step", impl, label, synchronized(fn)))
        for row in part[1:]:
            row.extra["vs official"] = f"{part[0].ms / row.ms:.1f}x"
        part[1].extra["solver"] = solver_name(device)
        rows += part
    report(rows, args.json)


if __name__ == "__main__":
    main()
