"""torch.compile: the kernels are opaque custom ops, so the model traces as one graph.

Without a GPU the kernels run in the Triton interpreter; Dynamo must not trace into the
launchers (it would break the graph, or fail inside the interpreter), which the custom ops of
``kernels/_library.py`` prevent. The ``aot_eager`` backend traces forward and backward (fake
tensors through each op's shape function, AOTAutograd's joint graph) but runs the same
kernels, so compiled and uncompiled results must be identical, not just close. Inductor
(real code generation) is checked on one op and, slow, on the whole model with the eager ops.
"""
import pytest
import torch

import maskformer_fast as mf
from maskformer_fast.kernels import attention as attention_kernel
from maskformer_fast.kernels import group_norm_act as group_norm_act_kernel
from maskformer_fast.kernels import mask_costs as mask_costs_kernel
from maskformer_fast.kernels import mask_losses as mask_losses_kernel


# On a GPU machine the same tests run the compiled kernels on CUDA (no interpreter there).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _assert_same(got, want, name):
    """Identical on CPU; on CUDA, cuDNN/cuBLAS may pick other algorithms between the two runs."""
    if DEVICE == "cpu":
        assert torch.equal(got, want), name
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def _group_norm_act_case():
    x = torch.randn(2, 16, 6, 5, generator=_gen(0)).to(DEVICE, memory_format=torch.channels_last)
    weight, bias = torch.randn(16, generator=_gen(1)).to(DEVICE), torch.randn(16, generator=_gen(2)).to(DEVICE)
    return (lambda x, weight: mf.ops.group_norm_act(x, 4, weight, bias)), (x, weight)


def _attention_case():
    q, k, v = (torch.randn(2, 2, n, 16, generator=_gen(n)).to(DEVICE) for n in (7, 9, 10))
    v = v[:, :, :9]
    ignore = torch.zeros(2, 9, dtype=torch.bool, device=DEVICE)
    ignore[1, 6:] = True
    return (lambda q, k, v: mf.ops.attention(q, k, v, key_padding_mask=ignore, dropout_p=0.2)), (q, k, v)


def _mask_losses_case():
    pred = torch.randn(3, 5, 4, generator=_gen(0)).to(DEVICE)
    target = (torch.rand(3, 20, 16, generator=_gen(1)) > 0.5).to(DEVICE)
    return (lambda pred: torch.stack(mf.ops.mask_losses(pred, target, 3.0))), (pred,)


def _mask_costs_case():
    pred = torch.randn(2, 5, 4, 4, generator=_gen(0)).to(DEVICE)
    target = (torch.rand(2, 3, 4, 4, generator=_gen(1)) > 0.5).to(DEVICE)
    num_targets = torch.tensor([3, 1], device=DEVICE)
    return (lambda pred: torch.stack(mf.ops.mask_costs(pred, target, num_targets))), (pred,)


CASES = {"group_norm_act": _group_norm_act_case, "attention": _attention_case, "mask_losses": _mask_losses_case,
         "mask_costs": _mask_costs_case}


def _run(fn, inputs, differentiable):
    """fn's output and, when differentiable, the gradients of a fixed weighting of it."""
    leaves = [t.detach().clone().requires_grad_(differentiable) for t in inputs]
    torch.manual_seed(7)  # the attention case's dropout seed
    out = fn(*leaves)
    if not differentiable:
        return out.detach(), []
    weights = torch.randn(out.shape, generator=_gen(3)).to(DEVICE)
    return out.detach(), list(torch.autograd.grad((out * weights).sum(), leaves))


@pytest.mark.parametrize("op", sorted(CASES))
def test_kernel_op_compiles_into_one_graph_with_identical_results(op):
    fn, inputs = CASES[op]()
    differentiable = op != "mask_costs"  # the matcher's costs carry no gradient
    with mf.ops.use("triton"):
        explanation = torch._dynamo.explain(fn)(*inputs)
        assert explanation.graph_break_count == 0
        graph = explanation.graphs[0].print_readable(print_output=False)
        assert "torch.ops.maskformer_fast." in graph, graph  # the kernel's op, not the reference, was traced
        want, want_grads = _run(fn, inputs, differentiable)
        torch._dynamo.reset()
        got, got_grads = _run(torch.compile(fn, backend="aot_eager", fullgraph=True), inputs, differentiable)
    _assert_same(got, want, op)
    for g, w in zip(got_grads, want_grads, strict=True):
        _assert_same(g, w, f"{op} grad")


def test_group_norm_act_compiles_with_inductor():
    fn, inputs = _group_norm_act_case()
    with mf.ops.use("triton"):
        want, want_grads = _run(fn, inputs, True)
        torch._dynamo.reset()
        got, got_grads = _run(torch.compile(fn, fullgraph=True), inputs, True)
    _assert_same(got, want, "y")
    for g, w in zip(got_grads, want_grads, strict=True):
        _assert_same(g, w, "grad")


def _randn(*shape):
    return torch.randn(*shape, generator=_gen(len(shape))).to(DEVICE)


def _group_norm_act_fwd():
    x, weight, bias = _randn(2, 8, 3, 3), _randn(8), _randn(8)
    return group_norm_act_kernel._forward, (x, weight, bias, 2, 1e-5, True)


def _group_norm_act_bwd():
    _, (x, weight, bias, *rest) = _group_norm_act_fwd()
    y, mean, rstd = group_norm_act_kernel._forward(x, weight, bias, *rest)
    return group_norm_act_kernel._backward, (torch.randn_like(y), x, weight, bias, mean, rstd, 2, True)


def _attention_fwd():
    q, k = _randn(1, 2, 5, 16), _randn(1, 2, 6, 16)
    return attention_kernel._forward, (q, k, k, None, 0.25, 0.1, attention_kernel.draw_seed(DEVICE))


def _attention_bwd():
    _, (q, k, _, _, scale, p, seed) = _attention_fwd()
    o, lse = attention_kernel._forward(q, k, k, None, scale, p, seed)
    return attention_kernel._backward, (torch.randn_like(o), q, k, k, o, lse, None, scale, p, seed)


def _mask_losses_args():
    return _randn(2, 3, 3), _randn(2, 6, 6) > 0.5


# name -> builder of (launcher, args). Built inside the test, not at import: a launch at collection
# time that faults on a GPU would stop pytest collecting every other test of the run.
LAUNCHER_CASES = {
    "group_norm_act_fwd": _group_norm_act_fwd,
    "group_norm_act_bwd": _group_norm_act_bwd,
    "attention_fwd": _attention_fwd,
    "attention_bwd": _attention_bwd,
    "mask_losses_fwd": lambda: (mask_losses_kernel.mask_losses_forward, _mask_losses_args()),
    "mask_losses_bwd": lambda: (mask_losses_kernel.mask_losses_backward, (*_mask_losses_args(), _randn(2, 3))),
    "mask_costs": lambda: (mask_costs_kernel._mask_costs, (_randn(2, 3, 4, 4), _randn(2, 2, 4, 4) > 0.5,
                                                           torch.tensor([2, 1], device=DEVICE))),
}
LAUNCHER_OPS = sorted(LAUNCHER_CASES)


@pytest.fixture(params=LAUNCHER_OPS)
def launcher_case(request):
    """(name, launcher, args): the kernel launches that build args run here, in one test's set-up."""
    return (request.param, *LAUNCHER_CASES[request.param]())


def test_launcher_custom_op_passes_opcheck(launcher_case):
    # schema (no input mutated), the fake implementation's shapes/dtypes/strides against the
    # real outputs, and AOTAutograd dispatch, as torch.library documents for custom ops
    name, launcher, args = launcher_case
    assert launcher.op._qualname == f"maskformer_fast::{name}"
    torch.library.opcheck(launcher.op, args, test_utils=("test_schema", "test_faketensor",
                                                         "test_aot_dispatch_dynamic"))


def _tiny_model():
    torch.manual_seed(0)
    cfg = mf.get_config("maskformer_r50_ade20k", num_decoder_layers=2, dim_feedforward=64, num_queries=10,
                        num_classes=5, hidden_dim=32, nheads=1, conv_dim=32, mask_dim=32)
    return mf.build_model(cfg)


def test_model_with_kernels_compiles_into_one_graph():
    # Training mode: the decoder's attention dropout runs in the kernel, seeded in the graph.
    model = _tiny_model().train().to(DEVICE)
    images = torch.randn(1, 3, 64, 64, generator=_gen(0)).to(DEVICE)
    with mf.ops.use("triton"):
        explanation = torch._dynamo.explain(model)(images)
        assert explanation.graph_break_count == 0, [str(r.reason)[:200] for r in explanation.break_reasons]
        torch.manual_seed(1)
        want = model(images)
        torch._dynamo.reset()
        torch.manual_seed(1)
        got = torch.compile(model, backend="aot_eager", fullgraph=True)(images)
        for key in ("pred_logits", "pred_masks"):
            _assert_same(got[key], want[key], key)
        got_grads = torch.autograd.grad(got["pred_masks"].square().mean() + got["pred_logits"].mean(),
                                        list(model.parameters()))
        want_grads = torch.autograd.grad(want["pred_masks"].square().mean() + want["pred_logits"].mean(),
                                         list(model.parameters()))
    for (name, _), g, w in zip(model.named_parameters(), got_grads, want_grads, strict=True):
        _assert_same(g, w, name)


@pytest.mark.slow
def test_compiled_model_matches_eager():
    # Inductor code generation for the whole model (about 75 s on a 2-core CPU), eager ops.
    torch.manual_seed(0)
    cfg = mf.get_config("maskformer_r50_ade20k", num_decoder_layers=2, dim_feedforward=64, num_queries=10,
                        num_classes=5)
    model = mf.build_model(cfg).eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), mf.ops.use("eager"):
        expected = model(images)
        got = torch.compile(model)(images)
    for key in ("pred_logits", "pred_masks"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-4, msg=key)
    assert len(got["aux_outputs"]) == len(expected["aux_outputs"]) == 1
