"""Checkpoints that survive a kill: atomic writes, the last N kept, full training state.

A checkpoint is a dict ``{"model": state_dict, "optimizer", "scheduler", "scaler", "iter",
"data_position", "rng", "config", "engine"}``. The model part is a plain state dict with the
same keys for the eager and the fast engine, so either loads the other's files.
Files are ``model_{iter:07d}.pth`` beside a ``last_checkpoint`` text file naming the newest.
"""
import os
import random
import re
import tempfile
from typing import Dict, Optional

import numpy as np
import torch

from maskformer_fast.weights import read_weights

__all__ = ["atomic_save", "CheckpointManager", "rng_state", "set_rng_state", "load_model_weights"]

POINTER = "last_checkpoint"
_NAME = re.compile(r"^model_(\d{7})\.pth$")


def atomic_save(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, fsync, then os.replace onto ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _atomic_write_text(text: str, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", dir=folder)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> Dict:
    """Python, numpy, torch CPU and (when present) CUDA generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model_weights(path: str) -> Dict[str, torch.Tensor]:
    """The model state dict from a training checkpoint or a plain state-dict file."""
    return read_weights(path).state


class CheckpointManager:
    """Saves ``model_{iter}.pth`` atomically into ``folder``, keeping the newest ``keep``."""

    def __init__(self, folder: str, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.folder = folder
        self.keep = keep
        os.makedirs(folder, exist_ok=True)

    def save(self, state: Dict, iteration: int) -> str:
        name = f"model_{iteration:07d}.pth"
        path = os.path.join(self.folder, name)
        atomic_save(state, path)
        _atomic_write_text(name + "\n", os.path.join(self.folder, POINTER))
        for old in sorted(n for n in os.listdir(self.folder) if _NAME.match(n))[: -self.keep]:
            os.remove(os.path.join(self.folder, old))
        return path

    def latest(self) -> Optional[str]:
        """Path of the newest checkpoint (from ``last_checkpoint``), or None if there is none."""
        pointer = os.path.join(self.folder, POINTER)
        if not os.path.isfile(pointer):
            return None
        with open(pointer) as f:
            name = f.read().strip()
        path = os.path.join(self.folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{pointer} names {name}, which does not exist in {self.folder}")
        return path

    @staticmethod
    def load(path: str) -> Dict:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ValueError(f"cannot load checkpoint {path}: {e}") from None
