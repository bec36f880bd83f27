"""train.py's ``train_step`` called directly, against the plain PyTorch step written out here."""
import copy

import pytest
import torch

import maskformer_fast as mf
from maskformer_fast import ops
from train.solver import build_optimizer, build_scheduler
from train.train import TrainState, train_step

TINY = dict(num_decoder_layers=2, hidden_dim=32, conv_dim=32, mask_dim=32, dim_feedforward=64, num_queries=8,
            nheads=2, frozen_bn=False, num_classes=5, max_iter=10, base_lr=1e-3, clip_grad_norm=0.01)


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, 64, 64, generator=g)
    targets = [{"labels": torch.tensor([1, 3]), "masks": torch.rand(2, 64, 64, generator=g) > 0.5},
               {"labels": torch.tensor([4]), "masks": torch.rand(1, 64, 64, generator=g) > 0.3}]
    return images, targets


def _state(model, cfg):
    optimizer = build_optimizer(model, cfg)
    return TrainState(model, optimizer, build_scheduler(optimizer, cfg), torch.amp.GradScaler("cpu", enabled=False),
                      clip_grad_norm=cfg.clip_grad_norm)


def _plain_step(model, optimizer, scheduler, batch, clip):
    """The step as the official train loop (Detectron2 SimpleTrainer + full-model clipping) takes it."""
    images, targets = batch
    losses = model.criterion(model(images), targets)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    scheduler.step()
    return losses


def test_train_step_matches_the_plain_pytorch_step():
    cfg = mf.get_config("maskformer_r50_ade20k", **TINY)
    torch.manual_seed(0)
    model = mf.build_model(cfg).train()
    reference, start = copy.deepcopy(model), copy.deepcopy(model)
    state = _state(model, cfg)
    ref_opt = build_optimizer(reference, cfg)
    ref_sched = build_scheduler(ref_opt, cfg)
    with ops.use("eager"):
        for step in range(2):  # two steps: gradients of the first must not leak into the second
            batch = _batch(step)
            torch.manual_seed(100 + step)  # same dropout draws for both
            got = train_step(state, batch)
            torch.manual_seed(100 + step)
            want = _plain_step(reference, ref_opt, ref_sched, batch, cfg.clip_grad_norm)
            assert got.keys() == want.keys()
            for k in want:
                torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7)
    assert state.iteration == 2
    assert state.optimizer.param_groups[-1]["lr"] == pytest.approx(ref_opt.param_groups[-1]["lr"])
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
    assert any(not torch.allclose(p, s) for p, s in zip(model.parameters(), start.parameters()))  # it trained


def test_non_finite_loss_raises_before_any_weight_changes():
    cfg = mf.get_config("maskformer_r50_ade20k", **TINY)
    torch.manual_seed(0)
    model = mf.build_model(cfg).train()
    with torch.no_grad():
        # the matching costs stay finite (they do not use empty_weight); the weighted CE does not
        model.criterion.empty_weight[-1] = float("inf")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    state = _state(model, cfg)
    images, targets = _batch(0)
    with ops.use("eager"), pytest.raises(FloatingPointError, match="at iteration 1"):
        train_step(state, (images, targets))
    assert state.iteration == 0
    for name, p in model.named_parameters():  # (the forward did update BatchNorm running statistics)
        assert torch.equal(p, before[name]), name
    assert not state.optimizer.state  # no step taken: no momentum buffers
