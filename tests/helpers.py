"""Comparison helpers shared by the tests."""
import torch


def assert_close_verbose(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, name: str = ""):
    """assert_close that names the worst elements when it fails."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.double(), expected.double()
    assert torch.isfinite(a).all() == torch.isfinite(e).all(), f"{name}: non-finite values differ"
    err = (a - e).abs()
    bad = err > atol + rtol * e.abs()
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        details = ", ".join(f"{tuple(i)}: {a[tuple(i)].item():.6g} vs {e[tuple(i)].item():.6g}" for i in idx)
        raise AssertionError(f"{name}: {int(bad.sum())}/{bad.numel()} elements differ "
                             f"(max abs err {err.max().item():.3g}); first: {details}")


def error_ratio_ok(kernel_out: torch.Tensor, torch_out: torch.Tensor, ref64: torch.Tensor, factor: float = 2.0,
                   floor: float = 1e-6) -> bool:
    """FlashAttention-style tolerance: kernel error at most `factor` x plain torch's error.

    Both errors are measured against a float64 reference; `floor` absorbs the case where
    plain torch happens to be exact.
    """
    k_err = (kernel_out.double() - ref64).abs().max().item()
    t_err = (torch_out.double() - ref64).abs().max().item()
    return k_err <= factor * t_err + floor


def poison_torch_empty(monkeypatch) -> None:
    """Make torch.empty / torch.empty_like return NaN-filled floating tensors for one test.

    Kernel launchers allocate outputs with them, so an element a kernel forgets to write
    shows up as NaN instead of whatever the allocator had there.
    """
    # torch's device context (`with torch.device("meta")`) caches its constructor set on first
    # use: fill that cache with the real functions before patching, or it keeps the lambdas.
    import torch.utils._device

    torch.utils._device._device_constructors()
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))


def spy(fn, calls: list, name: str):
    """fn, recording `name` in `calls` at each call (which implementation the dispatch ran)."""
    def wrapper(*args, **kwargs):
        calls.append(name)
        return fn(*args, **kwargs)
    return wrapper


def spy_kernels(monkeypatch):
    """Count kernel calls made through the dispatch layer."""
    calls = {}
    import maskformer_fast as mf
    from maskformer_fast import ops
    real_resolve = ops.resolve

    def resolve(op, *tensors, **kwargs):
        fn = real_resolve(op, *tensors, **kwargs)
        if fn is not getattr(mf.reference, op):
            calls[op] = calls.get(op, 0) + 1
        return fn

    monkeypatch.setattr(ops, "resolve", resolve)
    return calls


def only_kernel(monkeypatch, op: str, kernel: str, device: str = "cpu") -> None:
    """Make ``kernel`` (a name: "triton", "cpp") op's only kernel, registered as built for
    ``device``: "auto" and "fast" then pick it for tensors there (a Triton kernel on CPU tensors
    runs through the interpreter) and fall back or raise where its ``unsupported`` says so."""
    import dataclasses

    from maskformer_fast import ops
    spec = ops.OPS[op]
    chosen = dataclasses.replace(spec.kernel(kernel), device=device)
    monkeypatch.setitem(ops.OPS, op, dataclasses.replace(spec, kernels=(chosen,)))
