"""``--resume`` checks: the checkpoint exists, fits this run's config, and is restored whole.

Each problem is one line naming the file and the setting: no checkpoint to resume, a config
whose model differs (``hidden_dim``, preset, ...: the weights could not load), a
``--max-iter`` below the checkpoint's iteration. Settings that change the recipe but not the
model (batch size, learning rate, crop, ...) are allowed and named in a note, since the resumed
run then no longer repeats the uninterrupted one.
"""
import dataclasses
from typing import Dict, Tuple

import torch

__all__ = ["MODEL_FIELDS", "check_resume", "config_changes", "restore"]

# fields that change the model's parameters or their meaning: a checkpoint of another value
# cannot continue this run
MODEL_FIELDS = ("name", "backbone", "dataset", "num_classes", "num_queries", "hidden_dim", "nheads",
                "dim_feedforward", "num_decoder_layers", "deep_supervision", "enforce_input_project", "conv_dim",
                "mask_dim", "pixel_decoder_encoder_layers", "frozen_bn", "window_size", "pretrain_img_size")
_IGNORED = ("max_iter",)  # raising max_iter to train longer is what --resume is for


def config_changes(saved: Dict, cfg) -> Dict[str, Tuple]:
    """{field: (checkpoint value, this run's value)} of every field that differs."""
    now = dataclasses.asdict(cfg)
    changes = {}
    for key, value in now.items():
        old = saved.get(key, value)
        if isinstance(old, list):
            old = tuple(old)
        if isinstance(value, list):
            value = tuple(value)
        if key not in _IGNORED and old != value:
            changes[key] = (old, value)
    return changes


def _describe(changes: Dict[str, Tuple]) -> str:
    return ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())


def check_resume(output: str, checkpoints, cfg, log=print):
    """(path, state) of the checkpoint to resume, or ValueError / FileNotFoundError saying why not."""
    latest = checkpoints.latest()
    if latest is None:
        raise FileNotFoundError(f"--resume: {output} holds no checkpoint (no last_checkpoint); run without "
                                f"--resume to start (with --overwrite if the folder holds a run's files)")
    state = checkpoints.load(latest)
    missing = [k for k in ("optimizer", "scheduler", "scaler", "iter", "data_position", "rng") if k not in state]
    if missing:
        raise ValueError(f"--resume: {latest} is not a full train.py checkpoint (no {', '.join(missing)})")
    changes = config_changes(state.get("config") or {}, cfg)
    model_changes = {k: v for k, v in changes.items() if k in MODEL_FIELDS}
    if model_changes:
        raise ValueError(f"--resume: {latest} was trained with another model ({_describe(model_changes)}); "
                         f"resume with its settings, or start a new run in another --output")
    if cfg.max_iter < state["iter"]:
        raise ValueError(f"--resume: --max-iter {cfg.max_iter} is below the checkpoint's iteration {state['iter']} "
                         f"({latest}); give a max_iter of at least {state['iter']}")
    if changes:
        log(f"note: --resume with changed settings ({_describe(changes)}): the run no longer repeats an "
            f"uninterrupted one")
    return latest, state


def restore(path: str, state: Dict, model: torch.nn.Module, optimizer, scheduler, scaler) -> None:
    """Load the checkpoint's model / optimizer / scheduler / scaler states; ValueError naming the file."""
    try:
        result = model.load_state_dict(state["model"], strict=False)
    except RuntimeError as e:  # shapes: the first line names the tensors
        raise ValueError(f"--resume: {path} does not fit the model: {str(e).splitlines()[-1].strip()[:300]}") from None
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        names = (missing + list(result.unexpected_keys))[:3]
        raise ValueError(f"--resume: {path} does not fit the model: {len(missing)} missing and "
                         f"{len(result.unexpected_keys)} unexpected tensors (e.g. {', '.join(names)})")
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"--resume: the optimizer state in {path} does not fit this run: {e}") from None
