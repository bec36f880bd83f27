"""Reading model weights without running pickled code: train.py checkpoints, bare state
dicts and the official model-zoo files, for predict, evaluation and fine-tuning alike."""
import dataclasses
import os
import warnings
from typing import Dict, List, Optional

import numpy as np
import torch

__all__ = ["Weights", "read_weights", "load_weights", "config_for_weights", "rng_state_globals"]


@dataclasses.dataclass
class Weights:
    """A weights file's model tensors and, for a train.py checkpoint, the config it trained."""
    state: Dict[str, torch.Tensor]
    config: Optional[Dict] = None

    @property
    def is_official(self) -> bool:
        """Detectron2 names (the official MaskFormer head lives under ``sem_seg_head.``)."""
        return any(k.startswith("sem_seg_head.") for k in self.state)


def rng_state_globals() -> List:
    """The numpy objects a train.py checkpoint's saved RNG state pickles, under numpy 1 and 2 names."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from numpy.core.multiarray import _reconstruct
    allowed = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    return allowed + [(_reconstruct, f"{m}._reconstruct") for m in ("numpy.core.multiarray", "numpy._core.multiarray")]


def read_weights(path: str) -> Weights:
    """The model tensors of a train.py checkpoint (``{"model": ..., "config": ...}``), a bare state
    dict or an official ``.pkl``/``.pth``. FileNotFoundError / ValueError name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".pkl"):
        from .convert import read_checkpoint
        return Weights(read_checkpoint(path))
    try:
        with torch.serialization.safe_globals(rng_state_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled objects beyond tensors and RNG states
        from .cli_errors import torch_load_reason
        raise ValueError(f"cannot load checkpoint {path}: {torch_load_reason(e)}") from None
    config = obj.get("config") if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else None
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds neither a training checkpoint nor a model state dict")
    return Weights(state, config if isinstance(config, dict) else None)


def load_weights(model: torch.nn.Module, path: str, weights: Optional[Weights] = None) -> torch.nn.Module:
    """Load ``path`` (see :func:`read_weights`; ``weights`` if already read) into ``model``, strictly."""
    weights = read_weights(path) if weights is None else weights
    if weights.is_official:
        from .convert import load_official_checkpoint
        return load_official_checkpoint(model, path)
    from .convert import load_state_strict
    load_state_strict(model, weights.state, f"weights {path}")
    return model


def config_for_weights(weights: Optional[Weights], preset: Optional[str], default_preset: str,
                       overrides: Dict):
    """The config a model for ``weights`` is built from: ``preset`` when given, else the config a
    train.py checkpoint saved, else ``default_preset``; ``overrides`` (field -> value) on top."""
    from .config import get_config
    if preset is None and weights is not None and weights.config is not None:
        saved = {k: v for k, v in weights.config.items() if k != "name"}
        return get_config(weights.config["name"], **{**saved, **overrides})
    return get_config(preset or default_preset, **overrides)
