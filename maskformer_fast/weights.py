"""Reading model weights without running pickled code: train.py checkpoints, bare state
dicts, the official model-zoo files and HF save_pretrained folders, for predict, evaluation and
fine-tuning (:func:`init_from_checkpoint`) alike."""
import dataclasses
import json
import os
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

__all__ = ["Weights", "read_weights", "load_weights", "config_for_weights", "rng_state_globals",
           "hf_folder_file", "read_hf_folder", "InitReport", "init_from_checkpoint"]


@dataclasses.dataclass
class Weights:
    """A weights file's model tensors and, for a train.py checkpoint, the config it trained."""
    state: Dict[str, torch.Tensor]
    config: Optional[Dict] = None

    @property
    def is_official(self) -> bool:
        """Detectron2 names (the official MaskFormer head lives under ``sem_seg_head.``)."""
        return any(k.startswith("sem_seg_head.") for k in self.state)

    @property
    def is_hf(self) -> bool:
        """HF transformers MaskFormer names."""
        return any(k.startswith("model.pixel_level_module.") for k in self.state)


def rng_state_globals() -> List:
    """The numpy objects a train.py checkpoint's saved RNG state pickles, under numpy 1 and 2 names."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from numpy.core.multiarray import _reconstruct
    allowed = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    return allowed + [(_reconstruct, f"{m}._reconstruct") for m in ("numpy.core.multiarray", "numpy._core.multiarray")]


_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def hf_folder_file(folder: str) -> str:
    """The weights file of an HF ``save_pretrained`` folder: ``model.safetensors`` or
    ``pytorch_model.bin``, or the ``.index.json`` of a sharded save."""
    for name in _HF_WEIGHTS + tuple(n + ".index.json" for n in _HF_WEIGHTS):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(f"{folder} is a folder without model.safetensors or pytorch_model.bin (or their "
                            f".index.json; expected an HF save_pretrained folder)")


def read_hf_folder(folder: str) -> Dict[str, torch.Tensor]:
    """{name: tensor} of an HF ``save_pretrained`` folder, one file or shards named by an index."""
    from .convert import read_checkpoint
    found = hf_folder_file(folder)
    if not found.endswith(".index.json"):
        return read_checkpoint(found)
    try:
        with open(found) as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{found}: not an HF shard index (expected {{\"weight_map\": {{name: shard file}}}})") from None
    tensors: Dict[str, torch.Tensor] = {}
    for shard in shards:
        if not isinstance(shard, str) or os.path.basename(shard) != shard:
            raise ValueError(f"{found}: shard {shard!r} is not a file name inside {folder}")
        tensors.update(read_checkpoint(os.path.join(folder, shard)))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise ValueError(f"{found}: {len(missing)} tensors of the index are in none of its shards, e.g. {missing[0]}")
    return {name: tensors[name] for name in weight_map}


def read_weights(path: str) -> Weights:
    """The model tensors of a train.py checkpoint (``{"model": ..., "config": ...}``), a bare state
    dict, an official ``.pkl``/``.pth`` or an HF folder. FileNotFoundError / ValueError name the file."""
    if os.path.isdir(path):
        return Weights(read_hf_folder(path))
    if path.endswith(".pkl") or path.endswith(".safetensors"):
        from .convert import read_checkpoint
        return Weights(read_checkpoint(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
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
    state = model_tensors(weights, model.cfg.backbone)[0] if weights.is_hf else weights.state
    load_state_strict(model, state, f"weights {path}")
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


def model_tensors(weights: Weights, backbone: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """``weights`` under our names for a model with backbone ``backbone`` (official and HF names
    converted), and what kind of file it was."""
    if weights.is_official:
        from .convert import official_to_state_dict
        return official_to_state_dict(weights.state, backbone)[0], "official MaskFormer (Detectron2 names)"
    if weights.is_hf:
        from .convert import hf_state_to_ours
        return hf_state_to_ours(weights.state, backbone)[0], "HF transformers MaskFormer"
    return weights.state, "train.py checkpoint" if weights.config is not None else "state dict"


@dataclasses.dataclass
class InitReport:
    """What init_from_checkpoint did: the tensors it loaded and the class-head tensors it left
    freshly initialised because the checkpoint has another number of classes."""
    path: str
    format: str
    loaded: List[str]
    reinitialised: List[str]
    checkpoint_classes: Optional[int]
    model_classes: int

    def summary(self) -> str:
        text = f"init weights {self.path} [{self.format}]: {len(self.loaded)} tensors loaded"
        if self.reinitialised:
            text += (f"; class head re-initialised for {self.model_classes} classes (checkpoint: "
                     f"{self.checkpoint_classes}): {', '.join(self.reinitialised)}")
        return text


def init_from_checkpoint(model: torch.nn.Module, path: str) -> InitReport:
    """Start fine-tuning ``model`` (from build_model) from a whole MaskFormer checkpoint: ours,
    official ``.pkl``/``.pth``, an HF folder or state dict. With another number of classes the class
    head (``predictor.class_embed``) and ``criterion.empty_weight`` keep the model's fresh values
    and everything else is loaded, strictly (other mismatches are a ValueError naming tensors)."""
    from .convert import CLASS_HEAD, load_state_strict
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise ValueError(f"init_from_checkpoint expects a MaskFormer built by build_model, got {type(model).__name__}")
    tensors, kind = model_tensors(read_weights(path), cfg.backbone)
    own = model.state_dict()
    bias = tensors.get("predictor.class_embed.bias")
    checkpoint_classes = None if bias is None else len(bias) - 1
    reinitialised = []
    if checkpoint_classes is not None and checkpoint_classes != cfg.num_classes:
        reinitialised = [k for k in CLASS_HEAD if k in own]
        tensors = {**tensors, **{k: own[k] for k in reinitialised}}
    load_state_strict(model, tensors, f"--init-weights {path}")
    loaded = sorted(k for k in tensors if k not in reinitialised)
    return InitReport(path, kind, loaded, reinitialised, checkpoint_classes, cfg.num_classes)
