"""ImageNet-pretrained backbone weights, read from the files users have in their released formats.

    report = mf.load_backbone_weights(model, "R-50.pkl")   # a MaskFormer, or a bare backbone
    print(report.summary())

The layout is told from the tensor names (never from the file name); the file from its content
(``convert.read_checkpoint``: torch zip or legacy, safetensors, plain pickle without code):

==============================  =====================================================================
Detectron2 ResNet ``.pkl``      ``stem.conv1(.norm)``, ``res{2-5}.{b}.conv{k}(.norm)``, ``shortcut(.norm)``
                                (``tools/convert-torchvision-to-d2.py``: R-50.pkl, R-101.pkl)
Detectron2 DeepLab ResNet       ``stem.conv{1,2,3}(.norm)`` + the above (R-103.pkl, R101c)
torchvision / timm ResNet       ``conv1``, ``bn1``, ``layer{1-4}.*`` (resnet50, resnet101)
HF ResNetModel                  ``embedder.embedder.*``, ``encoder.stages.*`` (``resnet.`` prefix too)
Swin, original release layout   ``layers.{i}.downsample`` at the end of stage i: the Swin release ``.pth``
                                and ``tools/convert-pretrained-swin-model-to-d2.py`` ``.pkl`` files
Swin, timm layout               ``layers.{i+1}.downsample`` at the start of the next stage
HF SwinModel                    ``embeddings.*``, ``encoder.layers.*`` (``swin.`` prefix too)
==============================  =====================================================================

Every backbone tensor is filled, except Swin's per-output norms ``norm0..norm3``: no ImageNet
checkpoint has them, and the official D2SwinTransformer initialises them fresh too. Classifier
heads, the final classification norm and rebuildable buffers are skipped by name; any other
unknown name or a wrong shape is a ValueError listing them, except relative-position bias tables
of another window size, which are resized as timm does (``resize_rel_pos_bias_table``).
FrozenBatchNorm takes the running statistics.
"""
import dataclasses
import json
import os
import re
from collections import Counter
from typing import Callable, Dict, List, Tuple, Union

import torch
from torch import nn

from .backbone import ResNetBackbone, SwinBackbone
from .convert import (_SKIP_BN_COUNTER, Rule, Skip, _d2_resnet_rules, _d2_swin_rules, _hf_backbone_name,
                      _hf_resnet_rules, _hf_swin_rules, _rename, load_state_strict, read_checkpoint)
from .weights import read_hf_folder

__all__ = ["BackboneWeightsReport", "load_backbone_weights", "read_backbone_file"]

Tensor = torch.Tensor

_CLASSIFIER = "ImageNet classifier head"
_FINAL_NORM = "final classification norm (feeds only the pooled classifier)"
_INDEX = "constant index table, rebuilt by timm"
_ATTN_MASK = "shifted-window attention mask, rebuilt for each input size"
_SWIN_OUTPUT_NORMS = ("per-output LayerNorm of MaskFormer's Swin backbone: not in ImageNet checkpoints; the "
                      "official D2SwinTransformer initialises it fresh too")
_SWIN_SKIPS: Tuple[Skip, ...] = ((r"backbone\.head\..*", _CLASSIFIER), (r"backbone\.norm\.(weight|bias)", _FINAL_NORM),
                                 (r".*\.relative_position_index", _INDEX), (r".*\.attn_mask", _ATTN_MASK))


def _under_backbone(name: str) -> str:
    return "backbone." + name


@dataclasses.dataclass(frozen=True)
class _Layout:
    """One source naming scheme: a name only it has, how its names reach our rules, the rules."""
    name: str
    family: str  # "resnet", "resnet_deeplab" (3-conv stem) or "swin": the backbone it fills
    marker: str  # regex a source name of this layout (and of no layout after it) fully matches
    rules: Callable[[], List[Rule]]  # source name (after `prepare`) -> "backbone.<our name>"
    skips: Tuple[Skip, ...]
    prepare: Callable[[str], str] = _under_backbone


# first match wins: the DeepLab stem before the basic one, Swin's original layout before timm's
_LAYOUTS = (
    _Layout("Detectron2 DeepLab ResNet (R-103.pkl)", "resnet_deeplab", r"stem\.conv2\.weight",
            lambda: _d2_resnet_rules(deeplab_stem=True),
            ((r"backbone\.stem\.fc\..*", _CLASSIFIER), _SKIP_BN_COUNTER)),
    _Layout("Detectron2 ResNet (convert-torchvision-to-d2 .pkl)", "resnet", r"stem\.conv1\.weight",
            lambda: _d2_resnet_rules(deeplab_stem=False),
            ((r"backbone\.stem\.fc\..*", _CLASSIFIER), _SKIP_BN_COUNTER)),
    _Layout("HF transformers ResNet", "resnet", r"(resnet\.)?embedder\.embedder\.convolution\.weight",
            lambda: _hf_resnet_rules(""), ((r"classifier\..*", _CLASSIFIER), _SKIP_BN_COUNTER),
            prepare=lambda k: k.removeprefix("resnet.")),
    _Layout("HF transformers Swin", "swin", r"(swin\.)?embeddings\.patch_embeddings\.projection\.weight",
            lambda: _hf_swin_rules(""),
            ((r"model\.classifier\..*", _CLASSIFIER), (r"model\.layernorm\.(weight|bias)", _FINAL_NORM),
             (r".*\.relative_position_index", _INDEX)),
            prepare=lambda k: "model." + k.removeprefix("swin.")),  # our HF rules read MaskFormerSwin's "model."
    _Layout("Swin, original release layout (Swin .pth / Detectron2 .pkl)", "swin",
            r"layers\.0\.downsample\.reduction\.weight", _d2_swin_rules, _SWIN_SKIPS),
    _Layout("Swin, timm layout", "swin", r"layers\.0\.blocks\.0\.attn\.qkv\.weight",
            lambda: [(r"backbone\.((?:patch_embed|layers)\..+)", r"backbone.\1")], _SWIN_SKIPS),
    _Layout("torchvision / timm ResNet", "resnet", r"layer1\.0\.conv1\.weight",
            lambda: [(r"backbone\.((?:conv1|bn1|layer[1-4])\..+)", r"backbone.\1")],
            ((r"backbone\.fc\..*", _CLASSIFIER), _SKIP_BN_COUNTER)),
)
# names of a whole MaskFormer checkpoint (ours, official, HF): not a backbone file
_WHOLE_MODEL = re.compile(r"(backbone|sem_seg_head|pixel_decoder|predictor|model\.pixel_level_module)\..*")


@dataclasses.dataclass
class BackboneWeightsReport:
    """What load_backbone_weights did. Names: ``loaded``/``resized``/``initialised`` are ours
    (backbone-relative), ``skipped`` the file's."""
    path: str
    format: str
    loaded: List[str]
    skipped: Dict[str, str]   # file's name -> why it was not used
    resized: Dict[str, str]   # our name -> "(169, 3) -> (529, 3)"
    initialised: Dict[str, str]  # our names the file cannot fill, kept as built -> why

    def summary(self) -> str:
        """One line: the file, its format, and counts by outcome and reason."""
        parts = [f"{len(self.loaded)} tensors loaded"]
        if self.resized:
            example = next(iter(self.resized.values()))
            parts.append(f"{len(self.resized)} relative-position tables resized to this window ({example}, as timm)")
        parts += [f"{n} skipped ({reason})" for reason, n in Counter(self.skipped.values()).items()]
        parts += [f"{n} left as initialised ({reason})" for reason, n in Counter(self.initialised.values()).items()]
        return f"backbone weights {self.path} [{self.format}]: " + "; ".join(parts)


def read_backbone_file(path: Union[str, os.PathLike]) -> Dict[str, Tensor]:
    """{name: tensor} of a weights file, or of an HF ``save_pretrained`` folder (``model.safetensors``
    or ``pytorch_model.bin``, whole or sharded; its ``config.json`` is checked for options the
    tensors do not show)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return read_checkpoint(path)
    tensors = read_hf_folder(path)
    if os.path.isfile(os.path.join(path, "config.json")):
        _check_hf_config(path)
    return tensors


def _check_hf_config(folder: str) -> None:
    """ValueError for HF ResNet/Swin options that change the forward but not the tensor shapes
    (e.g. a ResNet striding in its 1x1 conv)."""
    config_path = os.path.join(folder, "config.json")
    with open(config_path) as f:
        model_type = json.load(f).get("model_type")
    if model_type not in ("resnet", "swin"):
        raise ValueError(f"{config_path}: model_type {model_type!r} is not an HF ResNet or Swin backbone")
    try:
        from transformers import AutoConfig  # only for HF folders, which transformers wrote
    except ImportError:
        raise ValueError(f"{config_path}: checking an HF folder's config needs transformers "
                         f"(pip install transformers)") from None
    try:
        _hf_backbone_name(AutoConfig.from_pretrained(folder))
    except ValueError as e:
        raise ValueError(f"{config_path}: {str(e).removeprefix('from_hf: ')}") from None


def _backbone_of(model: nn.Module) -> nn.Module:
    backbone = getattr(model, "backbone", model)
    if not isinstance(backbone, (ResNetBackbone, SwinBackbone)):
        raise ValueError(f"load_backbone_weights expects a MaskFormer from build_model or a ResNetBackbone/"
                         f"SwinBackbone, got {type(model).__name__}")
    return backbone


def _family(backbone: nn.Module) -> str:
    if isinstance(backbone, SwinBackbone):
        return "swin"
    return "resnet_deeplab" if isinstance(backbone.conv1, nn.Sequential) else "resnet"


def _detect(source: Dict[str, Tensor], path: str) -> _Layout:
    for layout in _LAYOUTS:
        marker = re.compile(layout.marker)
        if any(marker.fullmatch(name) for name in source):
            return layout
    if "conv1_w" in source and "res_conv1_bn_s" in source:
        raise ValueError(f"{path} is a Detectron2 MSRA (Caffe2) ResNet: it strides in the 1x1 conv and takes BGR "
                         f"0-255 input, unlike the backbone MaskFormer's configs train; use the torchvision "
                         f"conversion detectron2://ImageNetPretrained/torchvision/R-50.pkl (or R-101.pkl)")
    if any(_WHOLE_MODEL.fullmatch(name) for name in source):
        raise ValueError(f"{path} holds a whole MaskFormer checkpoint, not backbone weights: load it with "
                         f"--init-weights (mf.init_from_checkpoint) or --weights")
    names = ", ".join(sorted(source)[:6])
    raise ValueError(f"{path}: not a backbone weights file of a known layout (Detectron2/torchvision/timm/HF "
                     f"ResNet-50/101, Swin); its first names: {names}")


def _resize_tables(tensors: Dict[str, Tensor], own: Dict[str, Tensor], backbone: nn.Module) -> Dict[str, str]:
    """Relative-position bias tables of another window size, interpolated in place as timm's
    checkpoint filter does; {our name: "old shape -> new shape"}."""
    from timm.layers import resize_rel_pos_bias_table
    resized = {}
    for name, table in list(tensors.items()):
        target = own.get(name)
        if (not name.endswith("relative_position_bias_table") or target is None or table.shape == target.shape
                or table.ndim != 2 or table.shape[1] != target.shape[1]):
            continue  # same shape, or a wrong one for load_state_strict to name
        window = backbone.get_submodule(name.rsplit(".", 1)[0]).window_size
        tensors[name] = resize_rel_pos_bias_table(table.float(), new_window_size=tuple(window),
                                                  new_bias_shape=tuple(target.shape)).to(table.dtype)
        resized[name] = f"{tuple(table.shape)} -> {tuple(target.shape)}"
    return resized


def load_backbone_weights(model: nn.Module, path: Union[str, os.PathLike]) -> BackboneWeightsReport:
    """Fill ``model``'s backbone (a MaskFormer's ``backbone``, or a bare ResNetBackbone/SwinBackbone)
    from an ImageNet-pretrained file or HF folder (layouts: module docstring).

    Raises FileNotFoundError, or ValueError naming the file and the offending tensors (unknown
    layout, another architecture, unexpected or missing names, wrong shapes, NaN/inf).
    """
    path = os.fspath(path)
    backbone = _backbone_of(model)
    source = read_backbone_file(path)
    layout = _detect(source, path)
    if layout.family != _family(backbone):
        raise ValueError(f"{path} holds a {layout.name} backbone, but the model's backbone is a "
                         f"{type(backbone).__name__}" + (" with the DeepLab stem (R-103.pkl)" if _family(backbone)
                                                         == "resnet_deeplab" else ""))
    file_names = {layout.prepare(k): k for k in source}
    renamed, skipped = _rename({k: source[name] for k, name in file_names.items()}, layout.rules(), layout.skips,
                               f"backbone weights {path}")
    skipped = {file_names[k]: why for k, why in skipped.items()}
    tensors = {k.removeprefix("backbone."): v for k, v in renamed.items()}
    own = backbone.state_dict()
    resized = _resize_tables(tensors, own, backbone)
    initialised = {k: _SWIN_OUTPUT_NORMS for k in own
                   if k not in tensors and isinstance(backbone, SwinBackbone) and re.fullmatch(r"norm\d\..*", k)}
    loaded = sorted(tensors)
    load_state_strict(backbone, {**tensors, **{k: own[k] for k in initialised}}, f"backbone weights {path}")
    return BackboneWeightsReport(path, layout.name, loaded, skipped, resized, initialised)
