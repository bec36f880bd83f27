"""matching.linear_sum_assignment: every solver against scipy, problem by problem.

The solver is ops' choice: ``ops.use("eager")`` the scipy reference, ``ops.use("fast")`` on
CPU tensors the C++ solver. A solver passes a problem when it returns a one-to-one matching of size min(N, K) inside
the valid columns whose total cost equals scipy's optimum (to 1e-9 in float64, 1e-6 in float32,
relative to how far two matchings' totals can be apart) -- not necessarily scipy's matching,
since ties allow several optima.
The Triton solver runs through the Triton interpreter in tests/test_kernel_hungarian.py.
"""
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment as scipy_lsa

import maskformer_fast
from maskformer_fast import matching, ops

needs_cpu_backend = pytest.mark.skipif(matching._C is None, reason=f"maskformer_fast._C not built: "
                                                                   f"{matching._C_IMPORT_ERROR}")
INF = float("inf")
ENGINES = ["eager", pytest.param("fast", marks=needs_cpu_backend)]  # scipy, and the C++ solver on CPU tensors


def solve(cost, num_cols=None, engine="fast"):
    """The front (2-D costs, num_cols checks) under ops.use(engine)."""
    with ops.use(engine):
        return matching.linear_sum_assignment(cost, num_cols)


def assert_optimal(cost: torch.Tensor, num_cols: torch.Tensor, cols: torch.Tensor, rtol: float, name: str = ""):
    """cols [B, N] is an optimal matching of every cost[b, :, :num_cols[b]] (scipy decides)."""
    costs = cost.double().cpu().numpy()
    cols = cols.cpu().numpy()
    assert cols.shape == costs.shape[:2], f"{name}: output shape {cols.shape}"
    for b, k in enumerate(num_cols.tolist()):
        c, matched = costs[b, :, :k], cols[b]
        rows = np.nonzero(matched >= 0)[0]
        assert (matched[matched < 0] == -1).all(), f"{name} problem {b}: bad entries {matched}"
        assert (matched[rows] < k).all(), f"{name} problem {b}: matched a padding column: {matched}"
        assert len(rows) == min(c.shape), f"{name} problem {b}: {len(rows)} rows matched, want {min(c.shape)}"
        assert len(set(matched[rows])) == len(rows), f"{name} problem {b}: a column matched twice: {matched}"
        if c.size == 0:
            continue
        ref_rows, ref_cols = scipy_lsa(c)
        expected = c[ref_rows, ref_cols].sum()
        total = c[rows, matched[rows]].sum()
        # Relative to what matchings can differ by (min(N, K) times the spread of the finite
        # costs), not to the total: with costs 1e6 + k*1e-3 a total-relative 1e-6 would pass
        # any matching at all.
        finite = c[np.isfinite(c)]
        spread = len(rows) * (finite.max() - finite.min())
        assert abs(total - expected) <= rtol * max(1.0, spread), \
            f"{name} problem {b} ({c.shape}): total {total!r}, scipy {expected!r}"


def random_batch(gen: torch.Generator, kind: str, batch: int, rows: int, cols: int, dtype=torch.float64):
    """[batch, rows, cols] costs and num_cols in [0, cols]; padding columns hold NaN (never read)."""
    if kind == "uniform":
        cost = torch.rand(batch, rows, cols, generator=gen, dtype=torch.float64) * 2 - 1
    elif kind == "integer":  # many ties
        cost = torch.randint(0, 4, (batch, rows, cols), generator=gen).double()
    elif kind == "large":  # 1e6 magnitudes with 1e-3 differences
        cost = 1e6 + torch.randint(0, 1000, (batch, rows, cols), generator=gen).double() * 1e-3
    else:
        raise ValueError(kind)
    num_cols = torch.randint(0, cols + 1, (batch,), generator=gen)
    num_cols[0] = cols  # at least one unpadded problem per batch
    padding = torch.arange(cols) >= num_cols[:, None, None]
    return cost.masked_fill(padding, float("nan")).to(dtype), num_cols


KINDS = ("uniform", "integer", "large")
SHAPES = [(100, 20), (13, 7), (7, 13), (1, 1), (20, 20), (5, 50), (100, 100)]


@needs_cpu_backend
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpp_solver_matches_scipy_optimum(kind, dtype):
    gen = torch.Generator().manual_seed(KINDS.index(kind) + 10 * (dtype == torch.float32))
    for rows, cols in SHAPES:
        batch = 20 if rows * cols >= 10000 else 120
        cost, num_cols = random_batch(gen, kind, batch, rows, cols, dtype)
        out = solve(cost, num_cols)
        assert out.dtype == torch.int64
        assert_optimal(cost, num_cols, out, 1e-9 if dtype == torch.float64 else 1e-6, f"{kind} {rows}x{cols}")


@needs_cpu_backend
def test_cpp_solver_forbidden_pairs_and_infeasibility_agree_with_scipy():
    gen = torch.Generator().manual_seed(3)
    infeasible = 0
    for trial in range(300):
        rows, cols = torch.randint(1, 7, (2,), generator=gen).tolist()
        cost = torch.rand(rows, cols, generator=gen, dtype=torch.float64)
        cost[torch.rand(rows, cols, generator=gen) < 0.45] = INF
        try:
            scipy_lsa(cost.numpy())
        except ValueError:
            infeasible += 1
            with pytest.raises(ValueError, match="cost matrix 0 is infeasible"):
                solve(cost)
            continue
        out = solve(cost)
        assert_optimal(cost[None], torch.tensor([cols]), out[None], 1e-9, f"trial {trial}")
    assert 20 < infeasible < 280  # both outcomes were exercised


@pytest.mark.parametrize("engine", ENGINES)
def test_hand_computed_and_forbidden(engine):
    # Row minima collide on column 1; the optimum 1 + 2 + 2 = 5 is unique.
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.5, 2.0, 2.0]])
    assert solve(cost, engine=engine).tolist() == [1, 0, 2]
    # +inf forbids row 0 -> column 1: the optimum becomes 4 + 0 + 2 = 6 (next best 3 + 0 + 3.5).
    cost[0, 1] = INF
    assert solve(cost, engine=engine).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="infeasible"):  # square, and column 2 has no allowed row
        solve(cost.index_fill(1, torch.tensor([2]), INF), engine=engine)
    # 3 rows, 2 columns: a row with only forbidden pairs is the one left unmatched.
    tall = torch.tensor([[INF, INF], [1.0, 2.0], [2.0, 3.0]])
    assert solve(tall, engine=engine).tolist() == [-1, 0, 1]
    tall[:, 1] = INF  # column 1 has no allowed row: infeasible
    with pytest.raises(ValueError, match="infeasible"):
        solve(tall, engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("bad", [float("nan"), -INF])
def test_nan_and_negative_inf_name_the_problem(engine, bad):
    cost = torch.rand(8, 6, 4)
    num_cols = torch.tensor([4, 4, 4, 2, 4, 4, 4, 4])
    cost[3, :, 2:] = bad  # padding of problem 3: ignored
    assert solve(cost, num_cols, engine=engine).shape == (8, 6)
    cost[5, 1, 3] = bad
    cost[7, 0, 0] = bad
    with pytest.raises(ValueError, match="cost matrix 5 contains NaN or -inf"):
        solve(cost, num_cols, engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
def test_empty_problems_give_minus_one(engine):
    for shape in [(3, 0, 5), (3, 5, 0), (0, 4, 4)]:
        out = solve(torch.rand(shape), engine=engine)
        assert out.shape == shape[:2] and (out == -1).all()
    out = solve(torch.rand(2, 4, 3), torch.tensor([0, 3]), engine=engine)
    assert (out[0] == -1).all() and sorted(out[1].tolist()) == [-1, 0, 1, 2]


@needs_cpu_backend
def test_cpp_solver_input_handling():
    cost = torch.rand(4, 9, 6, dtype=torch.float64)
    expected = solve(cost, engine="eager")
    # Non-contiguous, half precision and 2-D inputs are accepted by the front.
    strided = cost.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(solve(strided), expected)
    half = cost.half()
    assert_optimal(half, torch.full((4,), 6), solve(half), 1e-6)
    assert torch.equal(solve(cost[2]), expected[2])
    # The binding itself checks what the front would have fixed.
    with pytest.raises(ValueError, match="contiguous"):
        matching._C.linear_sum_assignment(strided, None)
    with pytest.raises(ValueError, match="float32 or float64"):
        matching._C.linear_sum_assignment(half, None)
    with pytest.raises(ValueError, match=r"\[B, N, M\]"):
        matching._C.linear_sum_assignment(cost[0], None)
    with pytest.raises(ValueError, match="num_cols\\[1\\] = 7"):
        matching._C.linear_sum_assignment(cost, torch.tensor([6, 7, 0, 1]))


def test_front_validation_and_auto():
    with pytest.raises(ValueError, match="must be one of eager, fast, auto"):  # the retired backend names
        with ops.use("scipy"):
            pass
    with pytest.raises(ValueError, match="num_cols must lie"):
        matching.linear_sum_assignment(torch.rand(2, 3, 3), torch.tensor([1, 4]))
    with pytest.raises(ValueError, match="floating"):
        matching.linear_sum_assignment(torch.ones(2, 3, 3, dtype=torch.int64))
    expected = matching.cpp_linear_sum_assignment if matching._C is not None else maskformer_fast.reference.linear_sum_assignment
    assert ops.resolve("linear_sum_assignment", torch.rand(2, 3, 3)) is expected
    assert ops.OPS["linear_sum_assignment"].kernel("triton").device == "cuda"


def test_auto_falls_back_to_scipy_without_the_extension(monkeypatch):
    monkeypatch.setattr(matching, "_C", None)
    assert ops.resolve("linear_sum_assignment", torch.rand(1, 2, 2)) is maskformer_fast.reference.linear_sum_assignment
    with pytest.raises(ValueError, match="C\\+\\+ matcher maskformer_fast._C is not built"):
        solve(torch.rand(2, 2))


def test_float_or_bool_num_cols_are_refused_not_truncated():
    cost = torch.rand(2, 3, 3)
    for bad in (torch.tensor([2.7, 3.0]), [2.5, 1.0], torch.tensor([True, True])):
        with pytest.raises(ValueError, match="num_cols must be an integer tensor"):
            solve(cost, bad, engine="eager")
    assert solve(cost, [3, 2], engine="eager").shape == (2, 3)  # ints still fine
