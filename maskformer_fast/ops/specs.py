"""Every hot op, declared once: its kernels and its example calls (see ``registry.OpSpec``).

Adding a fused op is its kernel file in ``kernels/`` (the op function, ``unsupported``,
``CONFIGS``), its reference in ``maskformer_fast/reference.py`` and one ``OpSpec`` here, listed
in ``SPECS``; dispatch, opcheck, the compile tests and the benchmarks find it in ``ops.OPS``.
The example inputs are small and odd-sized (7 queries, 9 keys, 6x5 pixels) on purpose.
"""
import torch

from .registry import Example, Kernel, OpSpec


def _randn(device, *shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)


def _bits(device, *shape, seed=1):
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) > 0.5).to(device)


def _forward_backward(name: str, kernel, forward_args, backward_args):
    """Launcher examples ``{name}_fwd`` and ``{name}_bwd`` of a kernel module with ``_forward`` and
    ``_backward``; ``backward_args(forward outputs)`` builds the backward's arguments."""
    def backward():
        return kernel._backward, backward_args(kernel._forward(*forward_args))

    return {f"{name}_fwd": lambda: (kernel._forward, forward_args), f"{name}_bwd": backward}


def _ops():
    from .. import ops  # the dispatching functions, through which the examples call the op

    return ops


# ------------------------------------------------------------------ group_norm_act
def _group_norm_act_module():
    from ..kernels import group_norm_act
    return group_norm_act


def _group_norm_act_example(device):
    x = _randn(device, 2, 16, 6, 5).contiguous(memory_format=torch.channels_last)
    weight, bias = _randn(device, 16, seed=1), _randn(device, 16, seed=2)
    return Example(lambda x, weight: _ops().group_norm_act(x, 4, weight, bias), (x, weight))


def _group_norm_act_launchers(device):
    x, weight, bias = _randn(device, 2, 8, 3, 3, seed=4), _randn(device, 8, seed=1), _randn(device, 8, seed=2)
    return _forward_backward("group_norm_act", _group_norm_act_module(), (x, weight, bias, 2, 1e-5, True),
                             lambda out: (torch.randn_like(out[0]), x, weight, bias, out[1], out[2], 2, True))


GROUP_NORM_ACT = OpSpec("group_norm_act", (Kernel("triton", "cuda", _group_norm_act_module, "group_norm_act"),),
                        _group_norm_act_example, "bench_group_norm_act", _group_norm_act_launchers)


# ------------------------------------------------------------------ attention
def _attention_module():
    from ..kernels import attention
    return attention


def _attention_example(device):
    q, k, v = (_randn(device, 2, 2, n, 16, seed=n) for n in (7, 9, 10))
    v = v[:, :, :9]  # strided
    ignore = torch.zeros(2, 9, dtype=torch.bool, device=device)
    ignore[1, 6:] = True
    return Example(lambda q, k, v: _ops().attention(q, k, v, key_padding_mask=ignore, dropout_p=0.2), (q, k, v))


def _attention_launchers(device):
    kernel = _attention_module()
    q, k, seed = _randn(device, 1, 2, 5, 16, seed=4), _randn(device, 1, 2, 6, 16, seed=5), kernel.draw_seed(device)
    return _forward_backward("attention", kernel, (q, k, k, None, 0.25, 0.1, seed),
                             lambda out: (torch.randn_like(out[0]), q, k, k, *out, None, 0.25, 0.1, seed))


ATTENTION = OpSpec("attention", (Kernel("triton", "cuda", _attention_module, "attention"),),
                   _attention_example, "bench_attention", _attention_launchers)


# ------------------------------------------------------------------ mask_costs
def _mask_costs_module():
    from ..kernels import mask_costs
    return mask_costs


def _mask_costs_example(device):
    target, num_targets = _bits(device, 2, 3, 4, 4), torch.tensor([3, 1], device=device)
    return Example(lambda pred: torch.stack(_ops().mask_costs(pred, target, num_targets)),
                   (_randn(device, 2, 5, 4, 4),), differentiable=False)  # the matcher's costs carry no gradient


def _mask_costs_launchers(device):
    args = (_randn(device, 2, 3, 4, 4, seed=3), _bits(device, 2, 2, 4, 4, seed=4), torch.tensor([2, 1], device=device))
    return {"mask_costs": lambda: (_mask_costs_module()._mask_costs, args)}


MASK_COSTS = OpSpec("mask_costs", (Kernel("triton", "cuda", _mask_costs_module, "mask_costs"),),
                    _mask_costs_example, "bench_mask_costs", _mask_costs_launchers)


# ------------------------------------------------------------------ mask_losses
def _mask_losses_module():
    from ..kernels import mask_losses
    return mask_losses


def _mask_losses_example(device):
    target = _bits(device, 3, 20, 16)
    return Example(lambda pred: torch.stack(_ops().mask_losses(pred, target, 3.0)), (_randn(device, 3, 5, 4),))


def _mask_losses_launchers(device):
    kernel = _mask_losses_module()
    pred, target = _randn(device, 2, 3, 3, seed=3), _bits(device, 2, 6, 6, seed=4)
    return {"mask_losses_fwd": lambda: (kernel.mask_losses_forward, (pred, target)),
            "mask_losses_bwd": lambda: (kernel.mask_losses_backward, (pred, target, _randn(device, 2, 3, seed=5)))}


MASK_LOSSES = OpSpec("mask_losses", (Kernel("triton", "cuda", _mask_losses_module, "mask_losses"),),
                     _mask_losses_example, "bench_mask_losses", _mask_losses_launchers)


# ------------------------------------------------------------------ linear_sum_assignment
def _hungarian_module():
    from ..kernels import hungarian
    return hungarian


def _cpp_matcher_module():
    from .. import matching  # the Python side of the C++ solver maskformer_fast._C
    return matching


def _linear_sum_assignment_example(device):
    cost = _randn(device, 4, 7, 5, seed=3)
    num_cols = torch.tensor([5, 3, 0, 5])
    return Example(lambda cost: _ops().linear_sum_assignment(cost, num_cols), (cost,), differentiable=False)


LINEAR_SUM_ASSIGNMENT = OpSpec(
    "linear_sum_assignment",
    (Kernel("triton", "cuda", _hungarian_module, "linear_sum_assignment"),
     Kernel("cpp", "cpu", _cpp_matcher_module, "cpp_linear_sum_assignment", "cpp_unsupported")),
    _linear_sum_assignment_example, "bench_matching",
    not_compiled="one host sync by design (the infeasibility status); the criterion that runs it is not compiled")

SPECS = (GROUP_NORM_ACT, ATTENTION, MASK_COSTS, MASK_LOSSES, LINEAR_SUM_ASSIGNMENT)
