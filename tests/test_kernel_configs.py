"""Each kernel's launch-configuration table: ``pick`` chooses what the launchers chose before the
tables existed (written out below from the code of that time), and an explicit ``config`` reaches
the kernel launch. Launches are recorded on meta tensors, not run (kernels/_settings.py)."""
from functools import partial

import pytest
import torch

from maskformer_fast.kernels import attention, group_norm_act, hungarian, mask_costs, mask_losses
from maskformer_fast.kernels._settings import compile_configs


def _blocks(blocks) -> tuple:
    return tuple(blocks.kwargs().values())


# (head dim, dtype) -> forward and backward (BLOCK_M, BLOCK_N, num_warps, num_stages)
ATTENTION = [
    (16, torch.bfloat16, (64, 64, 4, 3), (64, 64, 4, 3)),
    (32, torch.float16, (64, 64, 4, 3), (64, 64, 4, 3)),
    (64, torch.bfloat16, (64, 64, 4, 3), (64, 64, 8, 3)),
    (128, torch.float16, (64, 32, 8, 3), (32, 32, 4, 3)),
    (32, torch.float32, (64, 16, 4, 2), (64, 16, 4, 2)),
    (128, torch.float64, (64, 16, 4, 2), (64, 16, 4, 2)),
]


@pytest.mark.parametrize("head_dim, dtype, forward, backward", ATTENTION, ids=str)
def test_attention_pick(head_dim, dtype, forward, backward):
    config = attention.pick((2, 8, 100, head_dim), dtype)
    assert (_blocks(config.forward), _blocks(config.backward)) == (forward, backward)


@pytest.mark.parametrize("num_targets, block_k", [(1, 16), (16, 16), (17, 32), (50, 64), (64, 64), (200, 64)])
def test_mask_costs_pick(num_targets, block_k):
    config = mask_costs.pick((4, num_targets, 32, 32), torch.bool)
    assert (config.BLOCK_Q, config.BLOCK_K, config.BLOCK_P, config.num_warps, config.num_stages) == (32, block_k, 32,
                                                                                                    8, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_losses_pick(dtype):
    config = mask_losses.pick((10, 128, 128), dtype)
    assert _blocks(config.forward) == (16, 128, 8, 3)
    assert _blocks(config.backward) == (32, 32, 32, 4, 1)


# (channels per group, pixels) -> (one pass, CPG_BLOCK, BLOCK_P, chunks, num_warps)
GROUP_NORM = [((8, 16 * 16), (True, 8, 256, 1, 8)), ((8, 30 * 30), (True, 8, 1024, 1, 16)),
              ((8, 45 * 50), (False, 8, 512, 5, 8)), ((8, 128 * 128), (False, 8, 512, 32, 8)),
              ((3, 37), (True, 4, 64, 1, 4)), ((64, 6), (True, 64, 8, 1, 4))]


@pytest.mark.parametrize("group, schedule", GROUP_NORM, ids=str)
def test_group_norm_act_pick(group, schedule):
    s = group_norm_act._Schedule(*group, group_norm_act.pick((2, 256, 8, 8), torch.float32))
    assert (s.one_pass, s.cpg_block, s.block_p, s.num_chunks, s.num_warps) == schedule


@pytest.mark.parametrize("shape, num_warps", [((96, 100, 50), 1), ((4, 256, 1), 1), ((4, 257, 3), 4),
                                              ((16, 300, 300), 4), ((16, 200, 700), 8), ((2, 3000, 10), 8)])
def test_hungarian_pick(shape, num_warps):
    assert hungarian.pick(shape, torch.float32).num_warps == num_warps


def _launched(module, launch):
    """(kernel name, constexprs, num_warps, num_stages) of each launch ``launch()`` makes."""
    return [(c.fn.__name__, c.constexprs, c.num_warps, c.num_stages)
            for c in compile_configs(module.__name__, [("explicit", launch)])]


def test_explicit_config_reaches_the_launches():
    meta = partial(torch.empty, device="meta")
    blocks = attention.AttentionBlocks(BLOCK_M=32, BLOCK_N=128, num_warps=2, num_stages=1)
    q = meta(1, 2, 10, 32)
    custom = attention.AttentionConfig(forward=blocks, backward=blocks)
    for name, cx, warps, stages in _launched(attention, partial(attention._forward, q, q, q, None, 1.0, 0.0, None,
                                                                config=custom)):
        assert (cx["BLOCK_M"], cx["BLOCK_N"], warps, stages) == (32, 128, 2, 1), name

    custom = mask_costs.MaskCostsConfig(BLOCK_Q=16, BLOCK_K=32, BLOCK_P=128, num_warps=2, num_stages=1)
    [(_, cx, warps, stages)] = _launched(mask_costs, partial(mask_costs._mask_costs, meta(2, 5, 4, 4),
                                                             meta(2, 3, 4, 4), meta(2, dtype=torch.int64),
                                                             config=custom))
    assert (cx["BLOCK_Q"], cx["BLOCK_K"], cx["BLOCK_P"], warps, stages) == (16, 32, 128, 2, 1)

    custom = mask_losses.MaskLossesConfig(forward=mask_losses.ForwardBlocks(8, 64, 2, 1),
                                          backward=mask_losses.BackwardBlocks(16, 16, 64, 2, 2))
    pred, target = meta(3, 8, 8), meta(3, 32, 32)
    [(_, cx, warps, stages)] = _launched(mask_losses, partial(mask_losses.mask_losses_forward, pred, target,
                                                              config=custom))
    assert (cx["BLOCK_Y"], cx["BLOCK_X"], warps, stages) == (8, 64, 2, 1)
    [(_, cx, warps, stages)] = _launched(mask_losses, partial(mask_losses.mask_losses_backward, pred, target,
                                                              meta(3, 3), config=custom))
    assert (cx["BLOCK_I"], cx["BLOCK_J"], cx["CHUNK"], warps, stages) == (16, 16, 64, 2, 2)

    x = meta(1, 8, 16, 16)
    launches = _launched(group_norm_act, partial(group_norm_act._forward, x, meta(8), meta(8), 2, 1e-5, True,
                                                 config=group_norm_act.GroupNormConfig(one_pass_max=64, chunk=128)))
    assert [(name, cx["BLOCK_P"]) for name, cx, _, _ in launches] == [("_gn_fwd_stats_kernel", 32),
                                                                      ("_gn_fwd_apply_kernel", 32)]

    [(_, cx, warps, _)] = _launched(hungarian, partial(hungarian._launch, meta(2, 5, 3), meta(2, dtype=torch.int64), 8,
                                                       hungarian.HungarianConfig(num_warps=2)))
    assert (cx["BLOCK"], warps) == (8, 2)
