"""Exact batched linear sum assignment on the GPU: one Triton program per problem.

The algorithm is the C++ solver's (csrc/hungarian.cpp, scipy's shortest augmenting path):
square problems start with the Jonker-Volgenant column reduction, then for each row of the
short side still free, a Dijkstra search over reduced costs to the nearest free column, a
dual update and an augmentation. One program solves one problem; each search step
scans all columns at once across the program's lanes (a vector of BLOCK columns: reduced
costs, shortest-path labels and predecessors updated together, then one min-reduction over
(label, code) pairs picks the next column, preferring a free one among ties). All problems
of a training step run in one launch and costs are read where they live, in their own dtype,
with float64 arithmetic.

Per-program scratch in global memory (row duals, the matching, path predecessors) is
written by some lanes and read by others, so every hand-over is behind a ``debug_barrier``
(a CTA barrier on the GPU; a no-op in the interpreter, which runs lanes in lockstep). That
includes read-then-overwrite of one scalar: every thread loads a scalar but one thread stores
it, and with several warps a lagging warp would otherwise read the new value.

Problem ``b`` is ``cost[b, :, :num_cols[b]]``; when it has more rows than valid columns it is
solved transposed (strides swapped), as scipy does. Status per problem: 0 solved,
1 infeasible (+inf blocks every complete matching), 2 NaN or -inf entry.
"""
import os
from typing import List, Optional

import torch
import triton
import triton.language as tl

from ..reference import column_counts
from ._settings import CompileConfig, compile_config, next_power_of_2

__all__ = ["linear_sum_assignment", "unsupported", "linear_sum_assignment_gpu", "COMPILE_CONFIGS"]

STATUS_OK, STATUS_INFEASIBLE, STATUS_INVALID = 0, 1, 2
NO_COLUMN: tl.constexpr = tl.constexpr(2**30)  # "no column yet" in the column-reduction scratch
# Columns (long side) one program holds in registers.
MAX_BLOCK = 4096


@triton.jit
def _lowest_key_code(key_a, code_a, key_b, code_b):
    """Combine step of the (label, code) min-reduction: lower label, then lower code."""
    take_a = (key_a < key_b) | ((key_a == key_b) & (code_a < code_b))
    return tl.where(take_a, key_a, key_b), tl.where(take_a, code_a, code_b)


@triton.jit
def _lsa_kernel(
    cost_ptr, num_cols_ptr, out_ptr, status_ptr,
    u_ptr, col4row_ptr, row4col_ptr, path_ptr,
    N, M, stride_b, stride_n, stride_m,
    BLOCK: tl.constexpr,
):
    """Solves problem b = program_id(0); out[b] must hold -1 on entry (rows left unmatched)."""
    b = tl.program_id(0).to(tl.int64)
    num_cols = tl.load(num_cols_ptr + b).to(tl.int32)
    transpose = N > num_cols
    nr = tl.minimum(N, num_cols)  # rows of the short-side problem
    nc = tl.maximum(N, num_cols)
    row_stride = tl.where(transpose, stride_m, stride_n)
    col_stride = tl.where(transpose, stride_n, stride_m)
    cost_base = cost_ptr + b * stride_b
    scratch = b * BLOCK

    cols = tl.arange(0, BLOCK)
    col_valid = cols < nc
    col_offsets = cols.to(tl.int64) * col_stride
    inf = float("inf")

    tl.store(u_ptr + scratch + cols, tl.zeros([BLOCK], tl.float64))
    tl.store(col4row_ptr + scratch + cols, tl.full([BLOCK], -1, tl.int32))
    tl.store(row4col_ptr + scratch + cols, tl.full([BLOCK], -1, tl.int32))
    tl.store(path_ptr + scratch + cols, tl.full([BLOCK], NO_COLUMN, tl.int32))
    v = tl.zeros([BLOCK], tl.float64)  # column duals stay in registers

    # Every entry is read once up front: NaN and -inf are errors, not costs. The same pass
    # finds each column's cheapest row, for the column reduction of square problems.
    status = 0
    col_min = tl.full([BLOCK], inf, tl.float64)
    argmin_row = tl.zeros([BLOCK], tl.int32)
    for i in range(0, nr):
        c = tl.load(cost_base + i * row_stride + col_offsets, mask=col_valid, other=0.0).to(tl.float64)
        num_bad = tl.sum(((c != c) | (c == -inf)).to(tl.int32))
        status = tl.where(num_bad > 0, 2, status)
        lower = c < col_min
        col_min = tl.where(lower, c, col_min)
        argmin_row = tl.where(lower, i, argmin_row)

    if (nr == nc) & (nr > 0) & (status == 0):
        # Column reduction (Jonker-Volgenant), as the C++ solver: v = column minima, and each row
        # takes the lowest-index column whose minimum it holds. About 60% of the rows of a random
        # problem are matched before any search; the searches left are what the time goes to.
        status = tl.where(tl.max(tl.where(col_valid, col_min, 0.0), axis=0) == inf, 1, status)
        v = tl.where(col_valid, col_min, 0.0)
        tl.debug_barrier()  # path scratch initialised
        tl.atomic_min(path_ptr + scratch + argmin_row, cols, mask=col_valid)
        tl.debug_barrier()
        first_col = tl.load(path_ptr + scratch + argmin_row, mask=col_valid, other=NO_COLUMN)
        tl.store(row4col_ptr + scratch + cols, tl.where(first_col == cols, argmin_row, -1), mask=col_valid)
        taken_col = tl.load(path_ptr + scratch + cols, mask=col_valid, other=NO_COLUMN)  # rows as lanes
        tl.store(col4row_ptr + scratch + cols, tl.where(taken_col < NO_COLUMN, taken_col, -1), mask=col_valid)

    cur_row = 0
    while (cur_row < nr) & (status == 0):
        tl.debug_barrier()  # the previous augmentation's row4col / col4row / u writes
        if tl.load(col4row_ptr + scratch + cur_row) < 0:
            row4col = tl.load(row4col_ptr + scratch + cols)
            shortest = tl.full([BLOCK], inf, tl.float64)
            path = tl.full([BLOCK], -1, tl.int32)
            done = cols < 0  # columns reached by this search
            min_val = tl.zeros([BLOCK], tl.float64).max()  # float64 scalar 0
            i = cur_row
            sink = -1
            while sink < 0:
                u_i = tl.load(u_ptr + scratch + i)
                c = tl.load(cost_base + i * row_stride + col_offsets, mask=col_valid, other=inf).to(tl.float64)
                reduced = min_val + c - u_i - v
                better = (reduced < shortest) & ~done
                path = tl.where(better, i, path)
                shortest = tl.where(better, reduced, shortest)
                key = tl.where(done | ~col_valid, inf, shortest)
                # The lowest label; among columns at it a free one first (code < BLOCK), then by
                # index. One reduction tree over (label, code) pairs, not two in a row.
                lowest, code = tl.reduce((key, cols + tl.where(row4col < 0, 0, BLOCK)), 0, _lowest_key_code)
                j = code % BLOCK
                done = done | (cols == j)
                min_val = lowest
                found = (code < BLOCK) | (lowest == inf)
                status = tl.where(lowest == inf, 1, status)
                sink = tl.where(found, j, -1)
                i = tl.where(found, i, tl.load(row4col_ptr + scratch + j))

            if status == 0:
                # Duals: the new row gains min_val; every other row reached (the owner of a reached,
                # matched column) and every reached column move by min_val - shortest.
                delta = min_val - shortest
                reached_rows = done & (row4col >= 0)
                u_cur = tl.load(u_ptr + scratch + cur_row)
                u_old = tl.load(u_ptr + scratch + row4col, mask=reached_rows, other=0.0)
                # A scalar is loaded by every thread but stored by one: with several warps, one
                # could otherwise read u[cur_row] after another warp's thread has updated it.
                tl.debug_barrier()
                tl.store(u_ptr + scratch + cur_row, u_cur + min_val)
                tl.store(u_ptr + scratch + row4col, u_old + delta, mask=reached_rows)
                v = tl.where(done, v - delta, v)
                tl.store(path_ptr + scratch + cols, path)
                tl.debug_barrier()
                # Augment along the predecessors from the free column back to cur_row. The rows of
                # a path are distinct, so each col4row read sees the value from before this loop.
                j = sink
                row = -1
                while row != cur_row:
                    row = tl.load(path_ptr + scratch + j)
                    previous = tl.load(col4row_ptr + scratch + row)
                    tl.debug_barrier()  # the same read-before-overwrite hand-off as for u above
                    tl.store(row4col_ptr + scratch + j, row)
                    tl.store(col4row_ptr + scratch + row, j)
                    j = previous
        cur_row += 1

    tl.debug_barrier()
    rows = tl.arange(0, BLOCK)
    matched = tl.load(col4row_ptr + scratch + rows, mask=rows < nr, other=-1)
    if status == 0:
        if transpose:
            tl.store(out_ptr + b * N + matched, rows.to(tl.int64), mask=(rows < nr) & (matched >= 0))
        else:
            tl.store(out_ptr + b * N + rows, matched.to(tl.int64), mask=rows < nr)
    tl.store(status_ptr + b, status)


def _num_warps(block: int) -> int:
    # Latency-bound: each search step is a load and one reduction across the block, cheapest
    # within one warp (shuffles only). Untuned: no GPU was available when this was written.
    return 1 if block <= 256 else min(8, block // 128)


def linear_sum_assignment_gpu(cost: torch.Tensor, num_cols: torch.Tensor) -> torch.Tensor:
    """Solves every cost[b, :, :num_cols[b]]; one program per problem, one launch.

    cost: [B, N, M] float (CUDA, or CPU under TRITON_INTERPRET=1), any strides;
    num_cols: int [B] in [0, M]. Returns int64 [B, N] on cost's device: the column matched
    to each row, or -1. Raises ValueError naming the first infeasible or NaN/-inf problem
    (this reads the status back: one host sync).
    """
    B, N, M = cost.shape
    device = cost.device
    out = torch.full((B, N), -1, dtype=torch.int64, device=device)
    if B == 0 or N == 0 or M == 0:
        return out
    block = next_power_of_2(max(N, M))
    num_cols = num_cols.to(dtype=torch.int32)
    if device.type == "cuda" and num_cols.device.type == "cpu":
        # A copy from pageable memory would first wait for the stream (the costs' kernels);
        # from pinned memory it is queued behind them, and the status read below is the one sync.
        num_cols = num_cols.pin_memory().to(device, non_blocking=True)
    num_cols = num_cols.to(device)
    status = torch.empty(B, dtype=torch.int32, device=device)
    u = torch.empty(B, block, dtype=torch.float64, device=device)
    col4row, row4col, path = (torch.empty(B, block, dtype=torch.int32, device=device) for _ in range(3))
    _lsa_kernel[(B,)](
        cost, num_cols, out, status, u, col4row, row4col, path,
        N, M, cost.stride(0), cost.stride(1), cost.stride(2),
        BLOCK=block, num_warps=_num_warps(block),
    )
    failed = torch.nonzero(status).flatten()
    if failed.numel():
        b = int(failed[0])
        what = "is infeasible (no complete matching avoids the +inf entries)" \
            if int(status[b]) == STATUS_INFEASIBLE else "contains NaN or -inf"
        raise ValueError(f"cost matrix {b} {what}")
    return out


def unsupported(cost: torch.Tensor, num_cols: Optional[torch.Tensor] = None) -> Optional[str]:
    """Why the Triton solver cannot run this call (None: it can)."""
    if cost.dim() != 3:
        return f"the Triton matcher solves a batch [B, N, M], got shape {tuple(cost.shape)}"
    if cost.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"the Triton matcher needs a CUDA tensor (or TRITON_INTERPRET=1), got one on {cost.device}"
    N, M = cost.shape[1:]
    if next_power_of_2(max(N, M, 1)) > MAX_BLOCK:
        return f"the Triton matcher solves up to {MAX_BLOCK} rows or columns, got [{N}, {M}]"
    return None


def linear_sum_assignment(cost: torch.Tensor, num_cols: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The Triton kernel of ``maskformer_fast.reference.linear_sum_assignment`` (same arguments
    and result); ``linear_sum_assignment_gpu`` is its launcher."""
    reason = unsupported(cost, num_cols)
    if reason is not None:
        raise ValueError(reason)
    return linear_sum_assignment_gpu(cost.detach(), column_counts(cost, num_cols))


def _compile_configs() -> List[CompileConfig]:
    types = {"cost_ptr": "*fp32", "num_cols_ptr": "*i32", "out_ptr": "*i64", "status_ptr": "*i32",
             "u_ptr": "*fp64", "col4row_ptr": "*i32", "row4col_ptr": "*i32", "path_ptr": "*i32",
             "N": "i32", "M": "i32", "stride_b": "i32", "stride_n": "i32", "stride_m": "i32"}
    configs = []
    for cost_type, block in (("*fp32", 128), ("*fp64", 128), ("*bf16", 128), ("*fp32", 1024)):
        configs.append(compile_config(_lsa_kernel, {**types, "cost_ptr": cost_type}, {"BLOCK": block},
                                      num_warps=_num_warps(block)))
    # what a launch on contiguous costs compiles: Triton specialises an integer argument equal to 1
    configs.append(compile_config(_lsa_kernel, types, {"BLOCK": 128, "stride_m": 1}, num_warps=_num_warps(128)))
    return configs


COMPILE_CONFIGS = _compile_configs()
