"""Checkpoints that survive a kill: atomic writes, the last N kept, full training state.

A checkpoint is a dict ``{"model": state_dict, "optimizer", "scheduler", "scaler", "iter",
"data_position", "rng", "config", "engine"}``. The model part is a plain state dict with the
same keys for the eager and the fast engine, so either loads the other's files.
Files are ``model_{iter:07d}.pth`` beside a ``last_checkpoint`` text file naming the newest.
Checkpoints are read with ``torch.load(weights_only=True)`` (plus the numpy types of the saved
RNG state): a file in the output folder replaced by a crafted pickle is refused, never run.
Each checkpoint lists the earlier checkpoints of its run (``"run_checkpoints"``), so pruning
removes only files this run wrote, whatever else the folder holds.
"""
import os
import random
import re
import tempfile
from typing import Dict, Optional

import numpy as np
import torch

from maskformer_fast.cli_errors import torch_load_reason
from maskformer_fast.weights import read_weights, rng_state_globals

__all__ = ["atomic_save", "atomic_write_text", "CheckpointManager", "rng_state", "set_rng_state",
           "load_model_weights", "remove_stale_temporaries"]

POINTER = "last_checkpoint"
_NAME = re.compile(r"^model_(\d{7})\.pth$")
# what tempfile.mkstemp(prefix=".tmp_") leaves behind when a write is killed
_TMP = re.compile(r"^\.tmp_[a-z0-9_]{8}(\.pth)?$")


def _atomic_write(path: str, write, binary: bool) -> None:
    """``write(file)`` into a temporary file in ``path``'s folder, fsync, then os.replace onto
    ``path``: a reader sees the old file or the new one, never half of one. A failed or killed
    write leaves no temporary behind (or one ``remove_stale_temporaries`` recognises)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pth" if binary else "", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_save(obj, path: str) -> None:
    """torch.save ``obj`` to ``path`` atomically (see :func:`_atomic_write`)."""
    def write(f):
        try:
            torch.save(obj, f)
        except RuntimeError as e:  # torch's writer reports a full disk as "unexpected pos"
            raise OSError(f"cannot write {path}: the disk is full or failing "
                          f"({' '.join(str(e).split())[:200]})") from None
    _atomic_write(path, write, binary=True)


def atomic_write_text(text: str, path: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`_atomic_write`)."""
    _atomic_write(path, lambda f: f.write(text), binary=False)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def remove_stale_temporaries(folder: str) -> list:
    """Delete the ``.tmp_*`` files killed writes left in ``folder`` (call it holding the folder's
    lock, so no live writer owns them); returns their names."""
    stale = sorted(n for n in os.listdir(folder) if _TMP.match(n)) if os.path.isdir(folder) else []
    for name in stale:
        _remove_quietly(os.path.join(folder, name))
    return stale


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
    """Saves ``model_{iter}.pth`` atomically into ``folder``, keeping this run's newest ``keep``.

    Only checkpoints this run wrote (in this process, or in the segments before a resume, as
    listed in the checkpoint resumed from; see :meth:`adopt`) are ever pruned.
    """

    def __init__(self, folder: str, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.folder = folder
        self.keep = keep
        self.written: list = []  # names of this run's checkpoints, oldest first
        os.makedirs(folder, exist_ok=True)

    def adopt(self, state: Dict, path: str) -> None:
        """Continue the run of the checkpoint ``state`` read from ``path`` (its files become ours)."""
        earlier = [n for n in state.get("run_checkpoints", []) if isinstance(n, str) and _NAME.match(n)]
        self.written = earlier + [os.path.basename(path)]

    def save(self, state: Dict, iteration: int) -> str:
        name = f"model_{iteration:07d}.pth"
        path = os.path.join(self.folder, name)
        earlier = [n for n in self.written if n != name]
        atomic_save({**state, "run_checkpoints": earlier}, path)
        atomic_write_text(name + "\n", os.path.join(self.folder, POINTER))
        self.written = earlier + [name]
        for old in self.written[: -self.keep]:
            _remove_quietly(os.path.join(self.folder, old))
        self.written = self.written[-self.keep:]
        return path

    def latest(self) -> Optional[str]:
        """Path of the newest checkpoint (from ``last_checkpoint``), or None if there is none."""
        pointer = os.path.join(self.folder, POINTER)
        if not os.path.isfile(pointer):
            return None
        with open(pointer) as f:
            name = f.read().strip()
        if not _NAME.match(name):
            raise ValueError(f"{pointer} should name a model_NNNNNNN.pth file, holds {name[:100]!r}")
        path = os.path.join(self.folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{pointer} names {name}, which does not exist in {self.folder}")
        return path

    @staticmethod
    def load(path: str) -> Dict:
        """A checkpoint written by :meth:`save`, read without running pickled code."""
        try:
            with torch.serialization.safe_globals(rng_state_globals()):
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"cannot load checkpoint {path}: {torch_load_reason(e)}") from None
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise ValueError(f"checkpoint {path} is not a train.py checkpoint (no model state)")
        return state
