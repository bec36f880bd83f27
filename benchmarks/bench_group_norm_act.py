"""GroupNorm + ReLU: the Triton kernel vs eager F.group_norm + F.relu.

    python benchmarks/bench_group_norm_act.py [--dtype bf16|fp16|fp32] [--small] [--json PATH]

Shapes of R50 ADE20K 512x512 training at batch 16: the pixel decoder's 256-channel maps at
strides 4..32 (16x256x{128,64,32,16}^2, 32 groups). Forward, and forward + backward.
GB/s counts the floor traffic: forward reads x and writes y (2 passes), forward + backward
adds reading x and dy and writing dx (5 passes in all). Without CUDA (or with --small) it
runs tiny shapes through the Triton interpreter: that shows the script works, not speed.
"""
import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernel module is imported

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import DTYPES, device_name, measure, new_file, report  # noqa: E402

# Peak HBM bandwidth (GB/s) of cards we may run on, for the "% of peak" column.
PEAK_GBPS = {"H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H200": 4800, "A100-SXM4-80GB": 2039}


def shapes(small: bool):
    """(N, C, H, W, groups) to time."""
    if small:
        return [(2, 16, 8, 8, 4), (1, 16, 24, 24, 4)]
    return [(16, 256, s, s, 32) for s in (128, 64, 32, 16)]


def eager_group_norm_relu(x, num_groups, weight, bias):
    return F.relu(F.group_norm(x, num_groups, weight, bias, 1e-5))


def make_case(shape, impl: str, mode: str, dtype: torch.dtype, device: str):
    """(fn, floor bytes) timing `impl` ("triton" | "eager") in `mode` ("fwd" | "fwd+bwd")."""
    from maskformer_fast.kernels.group_norm_act import group_norm_act

    N, C, H, W, G = shape
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(N, C, H, W, device=device, dtype=dtype, generator=g)
    weight = torch.rand(C, device=device, generator=g) + 0.5
    bias = torch.randn(C, device=device, generator=g)
    op = group_norm_act if impl == "triton" else eager_group_norm_relu
    passes = 2
    if mode == "fwd":
        def fn():
            return op(x, G, weight, bias)
    else:
        x.requires_grad_()
        weight.requires_grad_()
        bias.requires_grad_()
        dy = torch.randn_like(x)
        passes = 5

        def fn():
            op(x, G, weight, bias).backward(dy)
    return fn, passes * x.numel() * x.element_size()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="default: bf16 and fp32 on CUDA, fp32 on CPU")
    p.add_argument("--small", action="store_true", help="tiny shapes (automatic without CUDA)")
    p.add_argument("--json", type=new_file, default=None, help="also write the rows to this new file")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    small = args.small or not cuda
    dtypes = [DTYPES[args.dtype]] if args.dtype else ([torch.bfloat16, torch.float32] if cuda else [torch.float32])
    peak = next((v for k, v in PEAK_GBPS.items() if k in device_name()), None)

    rows = []
    for dtype in dtypes:
        for shape in shapes(small):
            label = f"{'x'.join(map(str, shape[:4]))} G={shape[4]} {str(dtype).replace('torch.', '')}"
            for mode in ("fwd", "fwd+bwd"):
                pair = []
                for impl in ("eager", "triton"):
                    fn, nbytes = make_case(shape, impl, mode, dtype, device)
                    row = measure(f"group_norm_relu {mode}", impl, label, fn, nbytes=nbytes)
                    if peak:
                        row.extra["%peak"] = f"{100 * row.gbps / peak:.0f}"
                    pair.append(row)
                pair[1].extra["speedup"] = f"{pair[0].ms / pair[1].ms:.2f}x"
                rows += pair
    report(rows, args.json)


if __name__ == "__main__":
    main()
