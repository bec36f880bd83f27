"""The op registry and its one dispatcher: eager runs no kernel anywhere (the matcher included),
auto on CPU tensors runs the C++ matcher, resolve follows the reference module, and an unsupported
call falls back under auto and raises its reason under fast."""
import numpy as np
import pytest
import torch
import triton
import triton.runtime.interpreter
import triton.runtime.jit
from scipy.optimize import linear_sum_assignment as scipy_lsa

import maskformer_fast as mf
from maskformer_fast import matching, ops, reference
from tests.helpers import only_kernel, spy

needs_cpp = pytest.mark.skipif(matching._C is None, reason="maskformer_fast._C is not built here")
TINY = dict(num_decoder_layers=2, hidden_dim=32, conv_dim=32, mask_dim=32, dim_feedforward=64, num_queries=8,
            nheads=2, num_classes=5)


class KernelRan(AssertionError):
    pass


def _forbid_every_kernel(monkeypatch):
    """Every registered kernel function, the C++ solver and any Triton launch raise KernelRan."""
    def boom(*args, **kwargs):
        raise KernelRan("a kernel ran")

    for spec in ops.OPS.values():
        for kernel in spec.kernels:
            monkeypatch.setattr(kernel.load(), kernel.function, boom)
    if matching._C is not None:
        monkeypatch.setattr(matching._C, "linear_sum_assignment", boom)
    monkeypatch.setattr(triton.runtime.jit.JITFunction, "run", boom)
    monkeypatch.setattr(triton.runtime.interpreter.InterpretedFunction, "run", boom)


def _forward_and_losses():
    """A tiny model's forward, its criterion (matching included) and the backward, on CPU."""
    torch.manual_seed(0)
    model = mf.build_model(mf.get_config("maskformer_r50_ade20k", **TINY)).train()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 64, generator=g)
    targets = [{"labels": torch.tensor([1, 3]), "masks": torch.rand(2, 64, 64, generator=g) > 0.5},
               {"labels": torch.tensor([4]), "masks": torch.rand(1, 64, 64, generator=g) > 0.3}]
    losses = model.criterion(model(images), targets)
    sum(losses.values()).backward()
    return losses


def test_eager_runs_no_kernel_anywhere(monkeypatch):
    _forbid_every_kernel(monkeypatch)
    calls = []
    monkeypatch.setattr(reference, "linear_sum_assignment", spy(reference.linear_sum_assignment, calls, "scipy"))
    with ops.use("eager"):
        losses = _forward_and_losses()
    assert calls == ["scipy"]  # one matcher call per step, through the reference
    assert all(torch.isfinite(v) for v in losses.values())
    with ops.use("fast"), pytest.raises(KernelRan):  # the spies are live: fast reaches a kernel
        _forward_and_losses()


@needs_cpp
def test_auto_on_cpu_runs_the_cpp_matcher_and_the_other_references(monkeypatch):
    calls = []
    monkeypatch.setattr(matching._C, "linear_sum_assignment", spy(matching._C.linear_sum_assignment, calls, "cpp"))
    monkeypatch.setattr(reference, "linear_sum_assignment", spy(reference.linear_sum_assignment, calls, "scipy"))
    for name in ("group_norm_act", "attention", "mask_costs", "mask_losses"):
        monkeypatch.setattr(reference, name, spy(getattr(reference, name), calls, name))
    monkeypatch.setattr(triton.runtime.interpreter.InterpretedFunction, "run",
                        lambda *a, **k: pytest.fail("a Triton kernel ran under auto on CPU tensors"))
    with ops.use("auto"):
        _forward_and_losses()
    assert calls.count("cpp") == 1 and "scipy" not in calls
    assert {"group_norm_act", "attention", "mask_costs", "mask_losses"} <= set(calls)


def test_resolve_looks_the_reference_up_at_call_time(monkeypatch):
    calls = []
    patched = spy(reference.linear_sum_assignment, calls, "patched")
    monkeypatch.setattr(reference, "linear_sum_assignment", patched)
    cost = torch.rand(3, 4, 2)
    with ops.use("eager"):
        assert ops.resolve("linear_sum_assignment", cost) is patched
        assert ops.resolve("linear_sum_assignment", cost, torch.tensor([2, 1, 0])) is patched
        matching.linear_sum_assignment(cost)
    assert calls == ["patched"]
    with ops.use("auto"):
        want = matching.cpp_linear_sum_assignment if matching._C is not None else patched
        assert ops.resolve("linear_sum_assignment", cost) is want


@pytest.mark.parametrize("rows,cols", [(7, 4), (4, 7), (6, 6), (1, 5)])
def test_reference_linear_sum_assignment_is_scipy_per_problem(rows, cols):
    g = torch.Generator().manual_seed(rows * 10 + cols)
    cost = torch.rand(5, rows, cols, generator=g, dtype=torch.float64)  # continuous: no ties
    num_cols = torch.tensor([cols, cols - 1, 0, cols, 1])
    for given in (num_cols, None):
        out = reference.linear_sum_assignment(cost, given)
        assert out.dtype == torch.int64 and out.shape == (5, rows)
        counts = [cols] * 5 if given is None else num_cols.tolist()
        for b, k in enumerate(counts):
            want = np.full(rows, -1)
            if k:
                r, c = scipy_lsa(cost[b, :, :k].numpy())
                want[r] = c
            assert out[b].tolist() == want.tolist(), (b, k)


@pytest.mark.parametrize("op,args,reason", [
    # more channels per group than the kernel holds: the reference normalises them
    ("group_norm_act", lambda: (torch.randn(1, 8192, 1, 2), 1, None, None), "channels per group exceed"),
    ("attention", lambda: tuple(torch.randn(1, 2, n, 24, dtype=torch.float64) for n in (3, 5, 5)),
     "head dim 24 not supported"),
    ("mask_losses", lambda: (torch.randn(2, 3, 3, dtype=torch.float64), torch.rand(2, 6, 6) > 0.5, 2.0),
     "logits must be fp32"),
])
def test_unsupported_call_falls_back_under_auto_and_raises_under_fast(op, args, reason, monkeypatch):
    only_kernel(monkeypatch, op, "triton")  # the kernel counts as built for CPU tensors: auto considers it
    inputs = args()
    kernel = ops.OPS[op].kernel("triton")
    assert reason in getattr(kernel.load(), kernel.unsupported)(*inputs)
    with ops.use("auto"):
        assert ops.resolve(op, *inputs) is getattr(reference, op)
        got = getattr(ops, op)(*inputs)
    want = getattr(reference, op)(*inputs)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert torch.equal(g, w)
    with ops.use("fast"), pytest.raises(ValueError, match=reason):
        getattr(ops, op)(*inputs)


def test_retired_mode_names_are_refused_naming_the_vocabulary(monkeypatch):
    for old in ("triton", "scipy", "gpu"):
        with pytest.raises(ValueError, match="eager, fast, auto"):
            with ops.use(old):
                pass
    monkeypatch.setenv(ops.ENV_VAR, "triton")
    with pytest.raises(ValueError, match="MASKFORMER_FAST_OPS must be one of eager, fast, auto"):
        ops.current_mode()


def test_cli_engine_flag_takes_the_ops_vocabulary(monkeypatch, capsys):
    from train.train import parse_args
    monkeypatch.delenv(ops.ENV_VAR, raising=False)
    assert parse_args([]).engine == "auto"
    assert parse_args(["--engine", "eager"]).engine == "eager"
    monkeypatch.setenv(ops.ENV_VAR, "fast")
    assert parse_args([]).engine == "fast"
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--engine", "triton"])
    assert exit_info.value.code == 2 and "choose from" in capsys.readouterr().err
    monkeypatch.setenv(ops.ENV_VAR, "triton")  # a bad default is refused too (argparse checks only the command line)
    with pytest.raises(SystemExit) as exit_info:
        parse_args([])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and "MASKFORMER_FAST_OPS='triton': must be one of eager, fast, auto" in err


def test_every_spec_names_kernels_that_exist():
    for spec in ops.OPS.values():
        assert callable(spec.reference()) and callable(getattr(ops, spec.name))
        for kernel in spec.kernels:
            module = kernel.load()
            assert callable(getattr(module, kernel.function)) and callable(getattr(module, kernel.unsupported))
        assert set(spec.configs()) == {k.name for k in spec.kernels}
