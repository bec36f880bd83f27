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
from dataclasses import dataclass
from functools import partial
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..reference import column_counts
from ._settings import LaunchConfig, compile_configs, config_name, next_power_of_2

__all__ = ["linear_sum_assignment", "unsupported", "linear_sum_assignment_gpu", "CONFIGS", "pick", "HungarianConfig",
           "COMPILE_CONFIGS"]

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
def _load_problem(cost_base, row_stride, col_offsets, col_valid, nr, BLOCK: tl.constexpr):
    """(status, column minima, their rows) of the nr rows (C++ load_problem). Every entry is read
    once up front: NaN and -inf are errors (status 2), not costs. The same pass finds each
    column's cheapest row, for the column reduction of square problems."""
    status = 0
    col_min = tl.full([BLOCK], float("inf"), tl.float64)
    argmin_row = tl.zeros([BLOCK], tl.int32)
    for i in range(0, nr):
        c = tl.load(cost_base + i * row_stride + col_offsets, mask=col_valid, other=0.0).to(tl.float64)
        num_bad = tl.sum(((c != c) | (c == -float("inf"))).to(tl.int32))
        status = tl.where(num_bad > 0, 2, status)
        lower = c < col_min
        col_min = tl.where(lower, c, col_min)
        argmin_row = tl.where(lower, i, argmin_row)
    return status, col_min, argmin_row


@triton.jit
def _reduce_columns(col4row, row4col, path, col_min, argmin_row, cols, col_valid, status):
    """(status, column duals) after the Jonker-Volgenant column reduction (C++ reduce_columns):
    v = column minima, and each row takes the lowest-index column whose minimum it holds. About
    60% of the rows of a random problem are matched before any search; the searches left are
    what the time goes to. A column of +inf only is infeasible (status 1)."""
    status = tl.where(tl.max(tl.where(col_valid, col_min, 0.0), axis=0) == float("inf"), 1, status)
    tl.debug_barrier()  # boundary: the path scratch initialised by every lane
    tl.atomic_min(path + argmin_row, cols, mask=col_valid)
    tl.debug_barrier()  # boundary: every column's claim on its row landed
    first_col = tl.load(path + argmin_row, mask=col_valid, other=NO_COLUMN)
    tl.store(row4col + cols, tl.where(first_col == cols, argmin_row, -1), mask=col_valid)
    taken_col = tl.load(path + cols, mask=col_valid, other=NO_COLUMN)  # rows as lanes
    tl.store(col4row + cols, tl.where(taken_col < NO_COLUMN, taken_col, -1), mask=col_valid)
    return status, tl.where(col_valid, col_min, 0.0)


@triton.jit
def _scan_row(cost_base, i, row_stride, col_offsets, col_valid, cols, u_i, v, owner, shortest, path, done, min_val,
              BLOCK: tl.constexpr):
    """One search step from row i (C++ scan_row): relax every column's label through row i, then
    take the lowest unreached label; among columns at it a free one first (code < BLOCK), then by
    index -- one reduction tree over (label, code) pairs, not two in a row.
    Returns (shortest, path, done, lowest label, its column, whether that column is free)."""
    c = tl.load(cost_base + i * row_stride + col_offsets, mask=col_valid, other=float("inf")).to(tl.float64)
    reduced = min_val + c - u_i - v
    better = (reduced < shortest) & ~done
    path = tl.where(better, i, path)
    shortest = tl.where(better, reduced, shortest)
    key = tl.where(done | ~col_valid, float("inf"), shortest)
    lowest, code = tl.reduce((key, cols + tl.where(owner < 0, 0, BLOCK)), 0, _lowest_key_code)
    j = code % BLOCK
    return shortest, path, done | (cols == j), lowest, j, code < BLOCK


@triton.jit
def _update_duals(u, cur_row, min_val, shortest, done, owner, v):
    """Column duals after a search: the new row gains min_val; every other row reached (the owner
    of a reached, matched column) and every reached column move by min_val - shortest."""
    delta = min_val - shortest
    reached_rows = done & (owner >= 0)
    u_cur = tl.load(u + cur_row)
    u_old = tl.load(u + owner, mask=reached_rows, other=0.0)
    # boundary: a scalar is loaded by every thread but stored by one; with several warps, one
    # could otherwise read u[cur_row] after another warp's thread has updated it
    tl.debug_barrier()
    tl.store(u + cur_row, u_cur + min_val)
    tl.store(u + owner, u_old + delta, mask=reached_rows)
    return tl.where(done, v - delta, v)


@triton.jit
def _flip_path(sink, cur_row, path, col4row, row4col):
    """Augment along the predecessors from the free column sink back to cur_row. The rows of a
    path are distinct, so each col4row read sees the value from before this loop."""
    j = sink
    row = -1
    while row != cur_row:
        row = tl.load(path + j)
        previous = tl.load(col4row + row)
        tl.debug_barrier()  # boundary: the same read-before-overwrite hand-off as for u
        tl.store(row4col + j, row)
        tl.store(col4row + row, j)
        j = previous


@triton.jit
def _augment_from(cur_row, cost_base, row_stride, col_offsets, col_valid, cols, u, col4row, row4col, path_scratch,
                  v, BLOCK: tl.constexpr):
    """(status, column duals) after matching the free row cur_row (C++ augment_from): a Dijkstra
    search over reduced costs to the nearest free column, the dual update and the augmentation.
    No free column reachable at a finite cost: infeasible (status 1)."""
    owner = tl.load(row4col + cols)
    shortest = tl.full([BLOCK], float("inf"), tl.float64)
    path = tl.full([BLOCK], -1, tl.int32)
    done = cols < 0  # columns reached by this search
    min_val = tl.zeros([BLOCK], tl.float64).max()  # float64 scalar 0
    status = 0
    i = cur_row
    sink = -1
    while sink < 0:
        shortest, path, done, min_val, j, free = _scan_row(cost_base, i, row_stride, col_offsets, col_valid, cols,
                                                           tl.load(u + i), v, owner, shortest, path, done, min_val,
                                                           BLOCK)
        found = free | (min_val == float("inf"))
        status = tl.where(min_val == float("inf"), 1, status)
        sink = tl.where(found, j, -1)
        i = tl.where(found, i, tl.load(row4col + j))
    if status == 0:
        v = _update_duals(u, cur_row, min_val, shortest, done, owner, v)
        tl.store(path_scratch + cols, path)
        tl.debug_barrier()  # boundary: predecessors stored before the path is walked
        _flip_path(sink, cur_row, path_scratch, col4row, row4col)
    return status, v


@triton.jit
def _solve_short_side(cost_base, row_stride, col_stride, nr, nc, u, col4row, row4col, path, BLOCK: tl.constexpr):
    """Status of solving the nr x nc problem, nr <= nc, into the scratch matching col4row
    (C++ solve_short_side): column reduction when square, then a search from each free row."""
    cols = tl.arange(0, BLOCK)
    col_valid = cols < nc
    col_offsets = cols.to(tl.int64) * col_stride
    tl.store(u + cols, tl.zeros([BLOCK], tl.float64))
    tl.store(col4row + cols, tl.full([BLOCK], -1, tl.int32))
    tl.store(row4col + cols, tl.full([BLOCK], -1, tl.int32))
    tl.store(path + cols, tl.full([BLOCK], NO_COLUMN, tl.int32))
    v = tl.zeros([BLOCK], tl.float64)  # column duals stay in registers
    status, col_min, argmin_row = _load_problem(cost_base, row_stride, col_offsets, col_valid, nr, BLOCK)
    if (nr == nc) & (nr > 0) & (status == 0):
        status, v = _reduce_columns(col4row, row4col, path, col_min, argmin_row, cols, col_valid, status)
    cur_row = 0
    while (cur_row < nr) & (status == 0):
        tl.debug_barrier()  # boundary: the previous augmentation's row4col / col4row / u writes
        if tl.load(col4row + cur_row) < 0:
            status, v = _augment_from(cur_row, cost_base, row_stride, col_offsets, col_valid, cols, u, col4row,
                                      row4col, path, v, BLOCK)
        cur_row += 1
    tl.debug_barrier()  # boundary: the last augmentation's writes, before the matching is read
    return status


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
    scratch = b * BLOCK
    col4row = col4row_ptr + scratch
    status = _solve_short_side(cost_ptr + b * stride_b, tl.where(transpose, stride_m, stride_n),
                               tl.where(transpose, stride_n, stride_m), nr, tl.maximum(N, num_cols),
                               u_ptr + scratch, col4row, row4col_ptr + scratch, path_ptr + scratch, BLOCK)
    rows = tl.arange(0, BLOCK)
    matched = tl.load(col4row + rows, mask=rows < nr, other=-1)
    if status == 0:
        if transpose:
            tl.store(out_ptr + b * N + matched, rows.to(tl.int64), mask=(rows < nr) & (matched >= 0))
        else:
            tl.store(out_ptr + b * N + rows, matched.to(tl.int64), mask=rows < nr)
    tl.store(status_ptr + b, status)


@dataclass(frozen=True)
class HungarianConfig(LaunchConfig):
    """Warps of the one program per problem (its BLOCK is the problem's long side, padded)."""

    num_warps: int


# Latency-bound: each search step is a load and one reduction across the block, cheapest within
# one warp (shuffles only); bigger blocks spread over more warps.
CONFIGS = {"one_warp": HungarianConfig(num_warps=1), "four_warps": HungarianConfig(num_warps=4),
           "eight_warps": HungarianConfig(num_warps=8)}


def pick(shape, dtype: torch.dtype) -> HungarianConfig:
    """The CONFIGS entry for costs of this shape ([B, N, M]); the dtype does not matter."""
    block = next_power_of_2(max(shape[1], shape[2]))
    return CONFIGS["one_warp" if block <= 256 else "four_warps" if block <= 512 else "eight_warps"]


def _launch(cost: torch.Tensor, num_cols: torch.Tensor, block: int,
            config: HungarianConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """(assignment int64 [B, N], status int32 [B]) of one launch over every problem."""
    B, N, M = cost.shape
    device = cost.device
    out = torch.full((B, N), -1, dtype=torch.int64, device=device)
    num_cols = num_cols.to(dtype=torch.int32)
    if device.type == "cuda" and num_cols.device.type == "cpu":
        # A copy from pageable memory would first wait for the stream (the costs' kernels);
        # from pinned memory it is queued behind them, and the status read is the one sync.
        num_cols = num_cols.pin_memory().to(device, non_blocking=True)
    num_cols = num_cols.to(device)
    status = torch.empty(B, dtype=torch.int32, device=device)
    u = torch.empty(B, block, dtype=torch.float64, device=device)
    col4row, row4col, path = (torch.empty(B, block, dtype=torch.int32, device=device) for _ in range(3))
    _lsa_kernel[(B,)](
        cost, num_cols, out, status, u, col4row, row4col, path,
        N, M, cost.stride(0), cost.stride(1), cost.stride(2),
        BLOCK=block, **config.kwargs(),
    )
    return out, status


def linear_sum_assignment_gpu(cost: torch.Tensor, num_cols: torch.Tensor,
                              config: Optional[HungarianConfig] = None) -> torch.Tensor:
    """Solves every cost[b, :, :num_cols[b]]; one program per problem, one launch.

    cost: [B, N, M] float (CUDA, or CPU under TRITON_INTERPRET=1), any strides;
    num_cols: int [B] in [0, M]. Returns int64 [B, N] on cost's device: the column matched
    to each row, or -1. Raises ValueError naming the first infeasible or NaN/-inf problem
    (this reads the status back: one host sync).
    """
    B, N, M = cost.shape
    if B == 0 or N == 0 or M == 0:
        return torch.full((B, N), -1, dtype=torch.int64, device=cost.device)
    block = next_power_of_2(max(N, M))
    if block > MAX_BLOCK:
        raise ValueError(f"gpu matching supports up to {MAX_BLOCK} rows or columns, got [{N}, {M}]")
    out, status = _launch(cost, num_cols, block, pick(cost.shape, cost.dtype) if config is None else config)
    failed = torch.nonzero(status).flatten()
    if failed.numel():
        b = int(failed[0])
        what = "is infeasible (no complete matching avoids the +inf entries)" \
            if int(status[b]) == STATUS_INFEASIBLE else "contains NaN or -inf"
        raise ValueError(f"cost matrix {b} {what}")
    return out


def _compile_examples():
    """(config name, launch) pairs on meta tensors: the criterion's problems (96 = 16 images x 6
    layers, 100 queries x 50 padded targets, contiguous) in fp32, fp64 and bf16 costs, a transposed
    view, and long sides of 300 and 1000 (four and eight warps)."""
    for dtype, shape, transposed in ((torch.float32, (96, 100, 50), False), (torch.float64, (96, 100, 50), False),
                                     (torch.bfloat16, (96, 100, 50), False), (torch.float32, (96, 50, 100), True),
                                     (torch.float32, (16, 300, 300), False), (torch.float32, (16, 1000, 1000), False)):
        cost = torch.empty(shape, dtype=dtype, device="meta")
        cost = cost.transpose(1, 2) if transposed else cost
        num_cols = torch.empty(cost.shape[0], dtype=torch.int64, device="meta")
        config = pick(cost.shape, dtype)
        block = next_power_of_2(max(cost.shape[1:]))
        yield config_name(CONFIGS, config), partial(_launch, cost, num_cols, block, config)


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


COMPILE_CONFIGS = compile_configs(__name__, _compile_examples())
