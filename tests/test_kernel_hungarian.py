"""The Triton assignment solver (``ops.use("fast")``) against scipy's optimum.

Without a GPU it runs through the Triton interpreter (tests/conftest.py), at small counts;
its sm_90 compilation is checked by tests/test_kernels_compile.py. The GPU-marked tests run
the training-step shapes on CUDA.
"""
import pytest
import torch

from tests.helpers import only_kernel
from tests.test_matching import KINDS, assert_optimal, random_batch, solve

# Triton's interpreter converts its 1-element scalars with int(array): numpy deprecates that.
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
INF = float("inf")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def triton_solver(monkeypatch):
    """The Triton solver is the matcher's only kernel, built for DEVICE (the CPU: interpreted)."""
    only_kernel(monkeypatch, "linear_sum_assignment", "triton", DEVICE)


@pytest.mark.parametrize("kind", KINDS)
def test_triton_solver_matches_scipy_optimum(kind):
    gen = torch.Generator().manual_seed(KINDS.index(kind))
    # Tall, wide and square problems (padded to different num_cols), float64 and float32.
    for (rows, cols), dtype in [((9, 5), torch.float64), ((5, 9), torch.float32), ((6, 6), torch.float64),
                                ((1, 1), torch.float32)]:
        cost, num_cols = random_batch(gen, kind, 24, rows, cols, dtype)
        out = solve(cost.to(DEVICE), num_cols)
        assert out.device.type == DEVICE and out.dtype == torch.int64
        assert_optimal(cost, num_cols, out, 1e-9 if dtype == torch.float64 else 1e-6, f"{kind} {rows}x{cols}")


def test_triton_solver_training_shape():
    # 100 queries x up to 20 targets: BLOCK = 128 lanes, solved transposed (targets as rows).
    gen = torch.Generator().manual_seed(0)
    cost, num_cols = random_batch(gen, "uniform", 3, 100, 20, torch.float32)
    strided = cost.transpose(1, 2).contiguous().transpose(1, 2)  # costs are read through strides
    out = solve(strided.to(DEVICE), num_cols)
    assert_optimal(cost, num_cols, out, 1e-6, "100x20")
    # Square 100 x 100 with many ties: the column reduction's conflicts, then long searches.
    cost = torch.randint(0, 10, (2, 100, 100), generator=gen).double()
    out = solve(cost.to(DEVICE))
    assert_optimal(cost, torch.full((2,), 100), out, 1e-9, "100x100")


def test_triton_solver_forbidden_pairs_and_errors():
    cost = torch.tensor([[4.0, INF, 3.0], [2.0, 0.0, 5.0], [3.5, 2.0, 2.0]], device=DEVICE)
    assert solve(cost).tolist() == [0, 1, 2]
    cost[:, 2] = INF  # a square problem with a column no row may take
    with pytest.raises(ValueError, match="cost matrix 0 is infeasible"):
        solve(cost)
    tall = torch.tensor([[INF, INF], [1.0, 2.0], [2.0, 3.0]], device=DEVICE)
    assert solve(tall).tolist() == [-1, 0, 1]
    tall[:, 1] = INF
    with pytest.raises(ValueError, match="cost matrix 0 is infeasible"):
        solve(tall)

    cost = torch.rand(6, 4, 3, device=DEVICE)
    num_cols = torch.tensor([3, 3, 1, 3, 3, 3])
    cost[2, :, 1:] = float("nan")  # padding: never read
    cost[4, 2, 0] = -INF
    cost[5, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="cost matrix 4 contains NaN or -inf"):
        solve(cost, num_cols)


def test_triton_solver_empty_problems():
    for shape in [(2, 0, 3), (2, 3, 0), (0, 3, 3)]:
        out = solve(torch.rand(shape, device=DEVICE))
        assert out.shape == shape[:2] and (out == -1).all()
    out = solve(torch.rand(2, 3, 2, device=DEVICE), torch.tensor([0, 2]))
    assert (out[0] == -1).all() and sorted(out[1].tolist()) == [-1, 0, 1]


@pytest.mark.gpu
@pytest.mark.parametrize("num_targets", [5, 20, 50, 100])
@pytest.mark.parametrize("kind", ["uniform", "integer"])
def test_triton_solver_training_step_on_cuda(num_targets, kind):
    # One training step at batch 16: 6 layers x 16 images, 100 queries.
    gen = torch.Generator().manual_seed(num_targets)
    for dtype in (torch.float32, torch.float64):
        cost, num_cols = random_batch(gen, kind, 96, 100, num_targets, dtype)
        out = solve(cost.cuda(), num_cols)
        assert out.is_cuda
        assert_optimal(cost, num_cols, out, 1e-9 if dtype == torch.float64 else 1e-6, f"{kind} K={num_targets}")


@pytest.mark.gpu
@pytest.mark.parametrize("rows,cols", [(300, 300), (200, 700), (1000, 1000)])
def test_triton_solver_several_warps_on_cuda(rows, cols):
    # Blocks over 256 lanes run on several warps, where a lagging warp can read a scalar that
    # another warp's thread has already overwritten unless a barrier separates the two: the
    # training shapes (one warp) cannot show such a race. Integer costs give long searches.
    gen = torch.Generator().manual_seed(rows + cols)
    for kind in ("uniform", "integer"):
        cost, num_cols = random_batch(gen, kind, 16, rows, cols, torch.float64)
        out = solve(cost.cuda(), num_cols)
        assert_optimal(cost, num_cols, out, 1e-9, f"{kind} {rows}x{cols}")
