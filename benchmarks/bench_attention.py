"""Attention: the Triton kernel vs torch scaled_dot_product_attention and the eager reference.

    python benchmarks/bench_attention.py [--dtype bf16|fp16|fp32] [--small] [--json PATH]

Shapes of the MaskFormer decoder in R50 ADE20K 512x512 training at batch 16 (8 heads of
32): self-attention over the 100 queries, cross-attention from 100 queries to the 16x16
res5 map at 512 (Lk = 256, a quarter of the keys padded out) and to a larger map
(Lk = 1024, e.g. 32x32). Forward, and forward + backward; dropout 0.1 (the decoder's
training setting) in one extra row. TFLOP/s counts the matmul floor: 4*B*h*Lq*Lk*d forward,
2.5x that more for the backward; GB/s the floor bytes (read q, k, v, write o; backward adds
reading o, do and writing dq, dk, dv). Without CUDA (or with --small) it runs tiny shapes
through the Triton interpreter: that shows the script works, not speed.
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
from benchmarks.common import DTYPES, measure, new_file, report  # noqa: E402

IMPLS = ("sdpa", "eager", "triton")


def cases(small: bool):
    """(name, B, h, Lq, Lk, d, padded, dropout_p) to time."""
    if small:
        return [("self", 1, 2, 20, 20, 32, False, 0.0), ("cross", 1, 2, 20, 48, 32, True, 0.0),
                ("cross dropout", 1, 2, 20, 48, 32, True, 0.1)]
    return [("self", 16, 8, 100, 100, 32, False, 0.0),
            ("cross res5", 16, 8, 100, 256, 32, True, 0.0),
            ("cross 32x32", 16, 8, 100, 1024, 32, True, 0.0),
            ("cross res5 dropout", 16, 8, 100, 256, 32, True, 0.1)]


def sdpa(q, k, v, key_padding_mask=None, dropout_p=0.0):
    attn_mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


def make_case(case, impl: str, mode: str, dtype: torch.dtype, device: str):
    """(fn, floor bytes, floor flops) timing `impl` in `mode` ("fwd" | "fwd+bwd") on one case."""
    from maskformer_fast import reference
    from maskformer_fast.kernels.attention import attention

    _, B, H, Lq, Lk, d, padded, dropout_p = case
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(B, H, Lq, d, device=device, dtype=dtype, generator=g)
    k, v = (torch.randn(B, H, Lk, d, device=device, dtype=dtype, generator=g) for _ in range(2))
    ignore = None
    if padded:  # the last quarter of every image's keys is padding
        ignore = torch.zeros(B, Lk, dtype=torch.bool, device=device)
        ignore[:, Lk - Lk // 4:] = True
    op = {"sdpa": sdpa, "eager": reference.attention, "triton": attention}[impl]
    size = dtype.itemsize
    nbytes = (2 * Lq + 2 * Lk) * B * H * d * size
    flops = 4 * B * H * Lq * Lk * d
    if mode == "fwd":
        def fn():
            return op(q, k, v, key_padding_mask=ignore, dropout_p=dropout_p)
    else:
        for t in (q, k, v):
            t.requires_grad_()
        do = torch.randn(B, H, Lq, d, device=device, dtype=dtype, generator=g)
        nbytes += (2 * Lq + 2 * Lk + Lq) * B * H * d * size
        flops = flops * 7 // 2

        def fn():
            op(q, k, v, key_padding_mask=ignore, dropout_p=dropout_p).backward(do)
    return fn, nbytes, flops


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--small", action="store_true", help="tiny shapes (automatic without CUDA)")
    p.add_argument("--json", type=new_file, default=None, help="also write the rows to this new file")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if cuda else torch.float32)

    rows = []
    for case in cases(args.small or not cuda):
        name, B, H, Lq, Lk, d, padded, dropout_p = case
        label = f"{name} B={B} h={H} Lq={Lq} Lk={Lk} d={d}{' padded' if padded else ''} {str(dtype)[6:]}"
        modes = ("fwd+bwd",) if dropout_p else ("fwd", "fwd+bwd")
        for mode in modes:
            group = []
            for impl in IMPLS:
                fn, nbytes, flops = make_case(case, impl, mode, dtype, device)
                group.append(measure(f"attention {mode}", impl, label, fn, nbytes=nbytes, flops=flops))
            for row in group[1:]:
                row.extra["vs_sdpa"] = f"{group[0].ms / row.ms:.2f}x"
            rows += group
    report(rows, args.json)


if __name__ == "__main__":
    main()
