"""The paper's optimiser and schedule: AdamW with per-parameter groups, poly or multistep
learning rate with optional linear warmup (Detectron2's WarmupPolyLR / WarmupMultiStepLR).

Parameter groups follow the official ``build_optimizer``: backbone parameters get
``base_lr x backbone_lr_multiplier``; normalisation layers, embeddings (the queries) and Swin's
position tables get no weight decay.
"""
import math
from typing import Dict, List, Tuple

import torch
from torch import nn

__all__ = ["param_groups", "build_optimizer", "lr_factor", "build_scheduler"]

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
               nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm)
_NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed")
WARMUP_FACTOR = 1e-6  # the official Swin configs' SOLVER.WARMUP_FACTOR


def param_groups(model: nn.Module, base_lr: float, weight_decay: float,
                 backbone_lr_multiplier: float) -> List[Dict]:
    """One group per distinct (lr, weight decay), each with a ``name`` for logging."""
    groups: Dict[Tuple[float, float], Dict] = {}
    seen = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{name}" if module_name else name
            in_backbone = full_name.startswith("backbone.")
            lr = base_lr * (backbone_lr_multiplier if in_backbone else 1.0)
            no_decay = (isinstance(module, _NORM_TYPES + (nn.Embedding,)) or "Norm" in type(module).__name__
                        or any(key in name for key in _NO_DECAY_NAMES))
            wd = 0.0 if no_decay else weight_decay
            group = groups.setdefault((lr, wd), {
                "params": [], "lr": lr, "weight_decay": wd,
                "name": f"{'backbone' if in_backbone else 'head'}{'' if wd else '_no_decay'}"})
            group["params"].append(param)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (betas and eps at PyTorch's defaults, as the official code)."""
    return torch.optim.AdamW(param_groups(model, cfg.base_lr, cfg.weight_decay, cfg.backbone_lr_multiplier),
                             lr=cfg.base_lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, max_iter: int, schedule: str, warmup_iters: int = 0, poly_power: float = 0.9,
              lr_steps: Tuple[int, ...] = (), gamma: float = 0.1) -> float:
    """Multiplier of the base lr at iteration ``step`` (0-based, the lr used by that step)."""
    if schedule == "poly":
        factor = math.pow(max(0.0, 1.0 - step / max_iter), poly_power)
    elif schedule == "multistep":
        factor = gamma ** sum(step >= s for s in lr_steps)
    else:
        raise ValueError(f"unknown lr schedule {schedule!r}; expected 'poly' or 'multistep'")
    if step < warmup_iters:
        alpha = step / warmup_iters
        factor *= WARMUP_FACTOR * (1 - alpha) + alpha
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, cfg.max_iter, cfg.lr_schedule, cfg.warmup_iters, cfg.poly_power, tuple(cfg.lr_steps)))
