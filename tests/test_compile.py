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


# Every registered op with a kernel traced into graphs (ops.OPS): a new op's spec brings its examples.
COMPILED_OPS = sorted(name for name, spec in mf.ops.OPS.items() if spec.not_compiled is None)


def _run(fn, inputs, differentiable):
    """fn's output and, when differentiable, the gradients of a fixed weighting of it."""
    leaves = [t.detach().clone().requires_grad_(differentiable) for t in inputs]
    torch.manual_seed(7)  # the attention case's dropout seed
    out = fn(*leaves)
    if not differentiable:
        return out.detach(), []
    weights = torch.randn(out.shape, generator=_gen(3)).to(DEVICE)
    return out.detach(), list(torch.autograd.grad((out * weights).sum(), leaves))


@pytest.mark.parametrize("op", COMPILED_OPS)
def test_kernel_op_compiles_into_one_graph_with_identical_results(op):
    example = mf.ops.OPS[op].example(DEVICE)
    fn, inputs, differentiable = example.fn, example.inputs, example.differentiable
    with mf.ops.use("fast"):
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
    example = mf.ops.OPS["group_norm_act"].example(DEVICE)
    fn, inputs = example.fn, example.inputs
    with mf.ops.use("fast"):
        want, want_grads = _run(fn, inputs, True)
        torch._dynamo.reset()
        got, got_grads = _run(torch.compile(fn, fullgraph=True), inputs, True)
    _assert_same(got, want, "y")
    for g, w in zip(got_grads, want_grads, strict=True):
        _assert_same(g, w, "grad")


# (op, launcher name) for every custom op the registered kernels launch; built inside the test.
LAUNCHERS = sorted((op, name) for op, spec in mf.ops.OPS.items() for name in spec.launcher_examples(DEVICE))


def test_every_kernel_custom_op_has_a_launcher_example():
    # the custom ops the kernel modules registered (kernels/_library.py) are the ones opcheck runs
    for spec in mf.ops.OPS.values():
        for kernel in spec.kernels:
            kernel.load()
    from maskformer_fast.kernels._library import LAUNCHERS as registered
    assert set(registered) == {name for _, name in LAUNCHERS}


@pytest.fixture(params=LAUNCHERS, ids=[name for _, name in LAUNCHERS])
def launcher_case(request):
    """(name, launcher, args): the kernel launches that build args run here, in one test's set-up."""
    op, name = request.param
    return (name, *mf.ops.OPS[op].launcher_examples(DEVICE)[name]())


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
    with mf.ops.use("fast"):
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
