"""Weight import: HF transformers' MaskFormer and the official (Detectron2) checkpoints.

Both importers rename the source tensors into this package's names with explicit rules (a
regex per source name; first full match wins), then load through one strict function: every
parameter and persistent buffer of ours is assigned exactly once, every source tensor is used or
skipped for a stated reason, shapes agree. Anything else is a ValueError listing the names.

Name maps, source -> ours (``backbone.`` / ``pixel_decoder.`` / ``predictor.`` prefixes):

==========================  ==========================================================
HF ResNet                   ``embedder.embedder.{convolution,normalization}`` -> conv1 / bn1;
                            ``encoder.stages.{s}.layers.{b}.layer.{k}`` -> layer{s+1}.{b}.conv{k+1}
                            / bn{k+1}; ``...shortcut`` -> ``downsample.{0,1}``
D2 ResNet                   ``stem.conv1(.norm)`` -> conv1 / bn1, DeepLab stem
                            ``stem.conv{1,2,3}(.norm)`` -> ``conv1.{0,3,6}`` / ``conv1.{1,4}``, bn1;
                            ``res{n}.{b}.conv{k}(.norm)`` -> layer{n-1}.{b}.conv{k} / bn{k};
                            ``shortcut(.norm)`` -> ``downsample.{0,1}``
HF MaskFormerSwin           ``layernorm_before/after`` -> norm1/norm2; ``attention.self.{query,key,
                            value}`` -> ``attn.qkv`` (concatenated); ``attention.output.dense`` ->
                            ``attn.proj``; ``intermediate/output.dense`` -> ``mlp.fc1/fc2``;
                            ``hidden_states_norms.{i}`` -> ``norm{i}``
D2 Swin                     timm's names already, except:
both Swin                   patch merging ``layers.{i}.downsample`` (end of stage i) ->
                            ``layers.{i+1}.downsample`` (timm: start of the next stage)
HF pixel decoder            ``fpn.stem.{0,1}`` -> layer_4(.norm); ``fpn.layers.{k}.proj.{0,1}`` ->
                            adapter_{3-k}(.norm) and ``block.{0,1}`` -> layer_{3-k}(.norm) (HF
                            iterates res4 -> res2); ``mask_projection`` -> mask_features
HF transformer module       ``queries_embedder`` -> query_embed; ``input_projection`` -> input_proj;
                            ``{self_attn,encoder_attn}.{q,k,v}_proj`` -> ``{self_attn,multihead_attn}
                            .in_proj_*`` (concatenated q, k, v); ``o_proj`` -> out_proj;
                            ``mlp.fc1/fc2`` -> linear1/2; ``self_attn_layer_norm``,
                            ``encoder_attn_layer_norm``, ``final_layer_norm`` -> norm1, norm2, norm3
                            (official post-norm order); ``decoder.layernorm`` -> decoder.norm;
                            ``class_predictor`` -> class_embed; ``mask_embedder.{i}.0`` ->
                            mask_embed.layers.{i}
official heads              ``sem_seg_head.pixel_decoder.*`` -> pixel_decoder.* (released files
                            without the ``pixel_decoder.`` level too), ``sem_seg_head.predictor.*``
                            -> predictor.*; ``criterion.empty_weight`` -> criterion.empty_weight
==========================  ==========================================================
"""
import contextlib
import io
import os
import pickle
import re
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .config import MaskFormerConfig, get_config

__all__ = ["from_hf", "config_from_hf", "hf_to_state_dict", "hf_state_to_ours", "load_official_checkpoint", "read_checkpoint",
           "official_to_state_dict"]

Tensor = torch.Tensor
# target: our name (re.Match.expand template, or a function of the match); a "#i/n" suffix marks
# part i of n pieces that are concatenated along dim 0 (fused q/k/v)
Target = Union[str, Callable[[re.Match], str]]
Rule = Tuple[str, Target]
Skip = Tuple[str, str]  # (regex, reason)

# (embed_dim, depths, num_heads) -> our backbone name; as backbone.SWIN_SPECS
_SWIN_VARIANTS = {
    (96, (2, 2, 6, 2), (3, 6, 12, 24)): "swin_tiny",
    (96, (2, 2, 18, 2), (3, 6, 12, 24)): "swin_small",
    (128, (2, 2, 18, 2), (4, 8, 16, 32)): "swin_base",
    (192, (2, 2, 18, 2), (6, 12, 24, 48)): "swin_large",
}
_RESNET_DEPTHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101"}
_PRESET_SHORT = {"resnet50": "r50", "resnet101": "r101", "resnet101c": "r101c", "swin_tiny": "swin_t",
                 "swin_small": "swin_s", "swin_base": "swin_b", "swin_large": "swin_l"}
_BN = r"(weight|bias|running_mean|running_var)"
_SKIP_BN_COUNTER = (r".*\.num_batches_tracked", "BatchNorm step counter; frozen BN has none")


# ---------------------------------------------------------------------------- renaming core
def _rename(source: Dict[str, Tensor], rules: Sequence[Rule], skips: Sequence[Skip],
            source_name: str) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """Apply `rules` to every source name -> ({our name: tensor}, {skipped source name: reason}).

    Raises ValueError listing source names that no rule or skip matches, and names two sources
    map onto.
    """
    compiled = [(re.compile(p), t) for p, t in rules]
    compiled_skips = [(re.compile(p), r) for p, r in skips]
    parts: Dict[str, Dict[int, Tuple[int, Tensor]]] = {}
    out: Dict[str, Tensor] = {}
    skipped: Dict[str, str] = {}
    unknown: List[str] = []
    for name, tensor in source.items():
        reason = next((r for p, r in compiled_skips if p.fullmatch(name)), None)
        if reason is not None:
            skipped[name] = reason
            continue
        for pattern, target in compiled:
            m = pattern.fullmatch(name)
            if m is None:
                continue
            new = target(m) if callable(target) else m.expand(target)
            if "#" in new:
                new, piece = new.split("#")
                index, count = (int(v) for v in piece.split("/"))
                if index in parts.setdefault(new, {}):
                    raise ValueError(f"{source_name}: two source tensors map to piece {index} of {new!r}")
                parts[new][index] = (count, tensor)
            elif new in out:
                raise ValueError(f"{source_name}: two source tensors map to {new!r}")
            else:
                out[new] = tensor
            break
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"{source_name}: {len(unknown)} tensors have no mapping onto this model "
                         f"(unsupported layout?): {_preview(unknown)}")
    for new, pieces in parts.items():
        count = next(iter(pieces.values()))[0]
        if sorted(pieces) != list(range(count)):
            raise ValueError(f"{source_name}: {new!r} needs {count} pieces, got pieces {sorted(pieces)}")
        out[new] = torch.cat([pieces[i][1] for i in range(count)], dim=0)
    return out, skipped


def _preview(names: Sequence[str], limit: int = 12) -> str:
    names = sorted(names)
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


CLASS_HEAD = ("predictor.class_embed.weight", "predictor.class_embed.bias", "criterion.empty_weight")
EMPTY_WEIGHT = "criterion.empty_weight"


def _check_num_classes(own: Dict[str, Tensor], tensors: Dict[str, Tensor], source_name: str) -> None:
    """ValueError naming the class-head tensors and both class counts when ``tensors`` were
    trained for another number of classes than the model has."""
    for name in CLASS_HEAD:
        if name in tensors and name in own and len(tensors[name]) != len(own[name]):
            theirs, ours = len(tensors[name]) - 1, len(own[name]) - 1
            shapes = ", ".join(f"{k} {tuple(tensors[k].shape)}" for k in CLASS_HEAD if k in tensors)
            raise ValueError(f"{source_name} is for {theirs} classes ({shapes}) but the model has {ours} "
                             f"(num_classes={ours}): build it with num_classes={theirs}")


def load_state_strict(model: nn.Module, tensors: Dict[str, Tensor], source_name: str, strict: bool = True) -> List[str]:
    """Copy `tensors` into model's state dict; with strict, every entry must match one to one.

    Returns the messages about missing/unexpected names (empty when everything matched).
    Shape mismatches are always errors.
    """
    own = model.state_dict()
    _check_num_classes(own, tensors, source_name)
    # not weights, so kept from the model when absent: a BatchNorm step counter (only with
    # frozen_bn=False), and the criterion's class weights (a constant of the config, which
    # files converted for inference drop)
    missing = [k for k in own if k not in tensors and not k.endswith("num_batches_tracked") and k != EMPTY_WEIGHT]
    unexpected = [k for k in tensors if k not in own]
    bad_shape = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                 for k, v in tensors.items() if k in own and v.shape != own[k].shape]
    if bad_shape:
        raise ValueError(f"{source_name}: {len(bad_shape)} tensors have the wrong shape for this model "
                         f"(config mismatch?): {_preview(bad_shape)}")
    not_finite = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if not_finite:
        raise ValueError(f"{source_name}: {len(not_finite)} tensors contain NaN or infinite values: "
                         f"{_preview(not_finite)}")
    problems = []
    if missing:
        problems.append(f"{len(missing)} model tensors missing from the checkpoint: {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint tensors the model does not have: {_preview(unexpected)}")
    if problems and strict:
        raise ValueError(f"{source_name} does not match the model: " + "; ".join(problems))
    with torch.no_grad():
        for k, v in tensors.items():
            if k in own:
                own[k].copy_(v.to(dtype=own[k].dtype, device=own[k].device))
    return problems


# ---------------------------------------------------------------------------- HF transformers
def _hf_resnet_rules(p: str) -> List[Rule]:
    def stage(m: re.Match) -> str:
        return f"backbone.layer{int(m[1]) + 1}.{m[2]}"
    return [
        (p + r"embedder\.embedder\.convolution\.weight", "backbone.conv1.weight"),
        (p + r"embedder\.embedder\.normalization\." + _BN, r"backbone.bn1.\1"),
        (p + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.convolution\.weight",
         lambda m: f"{stage(m)}.conv{int(m[3]) + 1}.weight"),
        (p + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.normalization\." + _BN,
         lambda m: f"{stage(m)}.bn{int(m[3]) + 1}.{m[4]}"),
        (p + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.weight",
         lambda m: f"{stage(m)}.downsample.0.weight"),
        (p + r"encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\." + _BN,
         lambda m: f"{stage(m)}.downsample.1.{m[3]}"),
    ]


def _next_stage_downsample(m: re.Match) -> str:
    """Patch merging at the end of stage i (official, HF) -> start of stage i+1 (timm)."""
    return f"backbone.layers.{int(m[1]) + 1}.downsample.{m[2]}"


def _hf_swin_rules(p: str) -> List[Rule]:
    blk = p + r"model\.encoder\.layers\.(\d+)\.blocks\.(\d+)\."
    ours = r"backbone.layers.\1.blocks.\2."
    return [
        (p + r"model\.embeddings\.patch_embeddings\.projection\.(weight|bias)", r"backbone.patch_embed.proj.\1"),
        (p + r"model\.embeddings\.norm\.(weight|bias)", r"backbone.patch_embed.norm.\1"),
        (blk + r"layernorm_before\.(weight|bias)", ours + r"norm1.\3"),
        (blk + r"attention\.self\.query\.(weight|bias)", ours + r"attn.qkv.\3#0/3"),
        (blk + r"attention\.self\.key\.(weight|bias)", ours + r"attn.qkv.\3#1/3"),
        (blk + r"attention\.self\.value\.(weight|bias)", ours + r"attn.qkv.\3#2/3"),
        (blk + r"attention\.self\.relative_position_bias_table", ours + "attn.relative_position_bias_table"),
        (blk + r"attention\.output\.dense\.(weight|bias)", ours + r"attn.proj.\3"),
        (blk + r"layernorm_after\.(weight|bias)", ours + r"norm2.\3"),
        (blk + r"intermediate\.dense\.(weight|bias)", ours + r"mlp.fc1.\3"),
        (blk + r"output\.dense\.(weight|bias)", ours + r"mlp.fc2.\3"),
        (p + r"model\.encoder\.layers\.(\d+)\.downsample\.((?:reduction|norm)\.(?:weight|bias))",
         _next_stage_downsample),
        (p + r"hidden_states_norms\.(\d)\.(weight|bias)", r"backbone.norm\1.\2"),
    ]


def _hf_head_rules() -> List[Rule]:
    d = r"model\.pixel_level_module\.decoder\."
    t = r"model\.transformer_module\."
    lay = t + r"decoder\.layers\.(\d+)\."
    ours = r"predictor.transformer.decoder.layers.\1."

    def fpn(kind: str, norm: bool) -> Callable[[re.Match], str]:
        # HF's fpn.layers[k] handles res{4-k}: k=0 -> res4 (our adapter_3/layer_3)
        return lambda m: f"pixel_decoder.{kind}_{3 - int(m[1])}." + ("norm." if norm else "") + m[2]

    rules: List[Rule] = [
        (d + r"fpn\.stem\.0\.weight", "pixel_decoder.layer_4.weight"),
        (d + r"fpn\.stem\.1\.(weight|bias)", r"pixel_decoder.layer_4.norm.\1"),
        (d + r"fpn\.layers\.(\d)\.proj\.0\.(weight)", fpn("adapter", False)),
        (d + r"fpn\.layers\.(\d)\.proj\.1\.(weight|bias)", fpn("adapter", True)),
        (d + r"fpn\.layers\.(\d)\.block\.0\.(weight)", fpn("layer", False)),
        (d + r"fpn\.layers\.(\d)\.block\.1\.(weight|bias)", fpn("layer", True)),
        (d + r"mask_projection\.(weight|bias)", r"pixel_decoder.mask_features.\1"),
        (t + r"queries_embedder\.weight", "predictor.query_embed.weight"),
        (t + r"input_projection\.(weight|bias)", r"predictor.input_proj.\1"),
        (t + r"decoder\.layernorm\.(weight|bias)", r"predictor.transformer.decoder.norm.\1"),
        # transformers < 5 names: out_proj, fc1/fc2 directly on the layer
        (lay + r"(self_attn|encoder_attn)\.(?:o_proj|out_proj)\.(weight|bias)",
         lambda m: f"predictor.transformer.decoder.layers.{m[1]}.{_attn_name(m[2])}.out_proj.{m[3]}"),
        (lay + r"(?:mlp\.)?fc1\.(weight|bias)", ours + r"linear1.\2"),
        (lay + r"(?:mlp\.)?fc2\.(weight|bias)", ours + r"linear2.\2"),
        (lay + r"self_attn_layer_norm\.(weight|bias)", ours + r"norm1.\2"),
        (lay + r"encoder_attn_layer_norm\.(weight|bias)", ours + r"norm2.\2"),
        (lay + r"final_layer_norm\.(weight|bias)", ours + r"norm3.\2"),
        (r"class_predictor\.(weight|bias)", r"predictor.class_embed.\1"),
        (r"mask_embedder\.(\d)\.0\.(weight|bias)", r"predictor.mask_embed.layers.\1.\2"),
        (r"criterion\.empty_weight", "criterion.empty_weight"),
    ]
    for i, qkv in enumerate("qkv"):
        rules.append((lay + rf"(self_attn|encoder_attn)\.{qkv}_proj\.(weight|bias)",
                      lambda m, i=i: f"predictor.transformer.decoder.layers.{m[1]}.{_attn_name(m[2])}"
                                     f".in_proj_{m[3]}#{i}/3"))
    return rules


def _attn_name(hf_name: str) -> str:
    return "self_attn" if hf_name == "self_attn" else "multihead_attn"


def _hf_backbone_name(backbone_config) -> str:
    """Our backbone name for an HF backbone config; ValueError for what we cannot reproduce."""
    kind = getattr(backbone_config, "model_type", None)
    if kind == "resnet":
        c = backbone_config
        checks = {"layer_type": (c.layer_type, "bottleneck"), "embedding_size": (c.embedding_size, 64),
                  "hidden_sizes": (tuple(c.hidden_sizes), (256, 512, 1024, 2048)),
                  "hidden_act": (c.hidden_act, "relu"), "num_channels": (c.num_channels, 3),
                  # official/timm ResNets stride in the 3x3 conv and downsample from stage 2 on
                  "downsample_in_bottleneck": (c.downsample_in_bottleneck, False),
                  "downsample_in_first_stage": (c.downsample_in_first_stage, False)}
        for key, (got, want) in checks.items():
            if got != want:
                raise ValueError(f"from_hf: HF ResNet with {key}={got!r} is not supported (need {want!r})")
        depths = tuple(c.depths)
        if depths not in _RESNET_DEPTHS:
            raise ValueError(f"from_hf: HF ResNet depths {list(depths)} are not supported; "
                             f"supported: {[list(d) for d in _RESNET_DEPTHS]} (ResNet-50/101)")
        return _RESNET_DEPTHS[depths]
    if kind in ("maskformer-swin", "swin"):
        c = backbone_config
        key = (c.embed_dim, tuple(c.depths), tuple(c.num_heads))
        if key not in _SWIN_VARIANTS:
            raise ValueError(f"from_hf: HF Swin with embed_dim={c.embed_dim}, depths={list(c.depths)}, "
                             f"num_heads={list(c.num_heads)} is not one of Swin-T/S/B/L")
        checks = {"patch_size": (c.patch_size, 4), "mlp_ratio": (c.mlp_ratio, 4.0), "qkv_bias": (c.qkv_bias, True),
                  "use_absolute_embeddings": (c.use_absolute_embeddings, False), "hidden_act": (c.hidden_act, "gelu"),
                  "layer_norm_eps": (c.layer_norm_eps, 1e-5), "num_channels": (c.num_channels, 3),
                  # the official Swin in MaskFormer has no dropout, only stochastic depth
                  "hidden_dropout_prob": (c.hidden_dropout_prob, 0.0),
                  "attention_probs_dropout_prob": (c.attention_probs_dropout_prob, 0.0)}
        for name, (got, want) in checks.items():
            if got != want:
                raise ValueError(f"from_hf: HF Swin with {name}={got!r} is not supported (need {want!r})")
        return _SWIN_VARIANTS[key]
    raise ValueError(f"from_hf: backbone type {kind!r} is not supported (supported: HF 'resnet' with depths "
                     f"[3,4,6,3] or [3,4,23,3], and 'swin'/'maskformer-swin' Swin-T/S/B/L)")


def config_from_hf(hf_config, **overrides) -> MaskFormerConfig:
    """The MaskFormerConfig equivalent to an HF ``MaskFormerConfig`` (+ keyword overrides).

    Starts from our ADE20K preset of the same backbone (recipe fields) and sets the architecture
    from HF: num_classes = num_labels, queries, decoder depth/width/heads/FFN, dropout, FPN and
    mask widths, loss weights; deep_supervision follows HF's use_auxiliary_loss.
    HF's separate ``attention_dropout`` (0 by default) has no counterpart: the official decoder
    uses ``dropout`` for attention weights too (only matters in training mode).
    """
    backbone = _hf_backbone_name(hf_config.backbone_config)
    dec = hf_config.decoder_config
    checks = {"decoder model_type": (getattr(dec, "model_type", None), "detr"),
              "activation_function": (dec.activation_function, "relu"),
              "position_embedding_type": (dec.position_embedding_type, "sine")}
    for key, (got, want) in checks.items():
        if got != want:
            raise ValueError(f"from_hf: HF decoder with {key}={got!r} is not supported (need {want!r})")
    fields = dict(
        num_classes=hf_config.num_labels, num_queries=dec.num_queries, hidden_dim=dec.d_model,
        nheads=dec.decoder_attention_heads, dim_feedforward=dec.decoder_ffn_dim, dropout=float(dec.dropout),
        num_decoder_layers=dec.decoder_layers, deep_supervision=bool(hf_config.use_auxiliary_loss),
        conv_dim=hf_config.fpn_feature_size, mask_dim=hf_config.mask_feature_size,
        class_weight=float(hf_config.cross_entropy_weight), mask_weight=float(hf_config.mask_weight),
        dice_weight=float(hf_config.dice_weight), no_object_weight=float(hf_config.no_object_weight))
    if backbone.startswith("swin"):
        c = hf_config.backbone_config
        fields.update(window_size=c.window_size, drop_path_rate=float(c.drop_path_rate))
    fields.update(overrides)
    return get_config(f"maskformer_{_PRESET_SHORT[backbone]}_ade20k", **fields)


def hf_to_state_dict(hf_model) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """HF MaskFormerForInstanceSegmentation tensors under our names -> (tensors, {skipped: reason})."""
    return hf_state_to_ours(hf_model.state_dict(), _hf_backbone_name(hf_model.config.backbone_config))


def hf_state_to_ours(state: Dict[str, Tensor], backbone: str) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """An HF MaskFormer state dict (``model.pixel_level_module.*`` names) for our backbone name
    (``cfg.backbone``) under our names -> (tensors, {skipped: reason})."""
    p = r"model\.pixel_level_module\.encoder\."
    rules = (_hf_resnet_rules(p) if backbone.startswith("resnet") else _hf_swin_rules(p)) + _hf_head_rules()
    skips: List[Skip] = [
        _SKIP_BN_COUNTER,
        (r".*\.relative_position_index", "constant index table, rebuilt by timm"),
        (p + r"model\.layernorm\.(weight|bias)", "MaskFormerSwinModel's final norm; the backbone features use "
                                                 "hidden_states_norms instead, so it never affects the outputs"),
    ]
    return _rename(state, rules, skips, "HF MaskFormer")


def from_hf(hf_model, **overrides):
    """Our MaskFormer with the weights of an HF ``MaskFormerForInstanceSegmentation``.

    The config is inferred (``config_from_hf``; keyword overrides for non-architecture fields such
    as ``deep_supervision`` or ``dataset``); loading is strict. The result is in the same
    train/eval mode as `hf_model`. Outputs match HF's class_queries_logits / masks_queries_logits
    (for inputs whose sides are multiples of 32: we pad to 32 internally, HF does not). With
    deep supervision our ``aux_outputs`` follow the official model (shared final LayerNorm on every
    layer); HF's auxiliary logits skip that norm, so only the final-layer outputs are comparable.

    Raises ValueError for HF configs we cannot reproduce (other backbones, absolute position
    embeddings, non-ReLU decoders ...).
    """
    from .model import build_model

    if not (hasattr(hf_model, "class_predictor") and hasattr(hf_model, "config")
            and getattr(hf_model.config, "model_type", None) == "maskformer"):
        raise ValueError(f"from_hf expects a transformers MaskFormerForInstanceSegmentation, "
                         f"got {type(hf_model).__name__}")
    model = build_model(config_from_hf(hf_model.config, **overrides))
    tensors, _ = hf_to_state_dict(hf_model)
    load_state_strict(model, tensors, "HF MaskFormer")
    return model.train(hf_model.training)


# ---------------------------------------------------------------------------- official checkpoints
def _d2_resnet_rules(deeplab_stem: bool) -> List[Rule]:
    def block(m: re.Match) -> str:
        return f"backbone.layer{int(m[1]) - 1}.{m[2]}"
    if deeplab_stem:  # timm deep stem: Sequential(conv, bn, act, conv, bn, act, conv) + bn1
        stem: List[Rule] = [
            (r"backbone\.stem\.conv(\d)\.weight", lambda m: f"backbone.conv1.{3 * (int(m[1]) - 1)}.weight"),
            (r"backbone\.stem\.conv([12])\.norm\." + _BN, lambda m: f"backbone.conv1.{3 * int(m[1]) - 2}.{m[2]}"),
            (r"backbone\.stem\.conv3\.norm\." + _BN, r"backbone.bn1.\1"),
        ]
    else:
        stem = [(r"backbone\.stem\.conv1\.weight", "backbone.conv1.weight"),
                (r"backbone\.stem\.conv1\.norm\." + _BN, r"backbone.bn1.\1")]
    return stem + [
        (r"backbone\.res([2-5])\.(\d+)\.conv(\d)\.weight", lambda m: f"{block(m)}.conv{m[3]}.weight"),
        (r"backbone\.res([2-5])\.(\d+)\.conv(\d)\.norm\." + _BN, lambda m: f"{block(m)}.bn{m[3]}.{m[4]}"),
        (r"backbone\.res([2-5])\.(\d+)\.shortcut\.weight", lambda m: f"{block(m)}.downsample.0.weight"),
        (r"backbone\.res([2-5])\.(\d+)\.shortcut\.norm\." + _BN, lambda m: f"{block(m)}.downsample.1.{m[3]}"),
    ]


def _d2_swin_rules() -> List[Rule]:
    return [
        (r"backbone\.patch_embed\.((?:proj|norm)\.(?:weight|bias))", r"backbone.patch_embed.\1"),
        (r"backbone\.layers\.(\d+)\.blocks\.(.+)", r"backbone.layers.\1.blocks.\2"),
        (r"backbone\.layers\.(\d+)\.downsample\.((?:reduction|norm)\.(?:weight|bias))", _next_stage_downsample),
        (r"backbone\.norm(\d)\.(weight|bias)", r"backbone.norm\1.\2"),
    ]


def _official_head_rules() -> List[Rule]:
    return [
        (r"sem_seg_head\.predictor\.(.+)", r"predictor.\1"),
        (r"sem_seg_head\.pixel_decoder\.(.+)", r"pixel_decoder.\1"),
        # released files predate the pixel_decoder level (official MaskFormerHead version < 2)
        (r"sem_seg_head\.(.+)", r"pixel_decoder.\1"),
        (r"criterion\.empty_weight", "criterion.empty_weight"),
    ]


def _storage_from_bytes(data: bytes):
    """What ``torch.storage._load_from_bytes`` does for a plainly pickled tensor, without its
    unrestricted ``torch.load``: the bytes are a torch.save of one storage."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for Detectron2 ``.pkl`` checkpoints that only rebuilds arrays, tensors and dicts.

    A model-zoo file is a pickled {"model": {name: ndarray}, "__author__": ...}; the official
    ``convert-pretrained-swin-model-to-d2.py`` pickles torch tensors instead (plain ``pickle.dump``
    of ``torch.load(...)["model"]``), whose storages are rebuilt here by ``torch.load(weights_only=True)``.
    Refusing every other global keeps a crafted file from running code.
    """

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
                ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
                ("_codecs", "encode")}  # protocol-2 pickles spell bytes as _codecs.encode(str, "latin1")

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _storage_from_bytes
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"checkpoint pickle refers to {module}.{name}, which a weights file "
                                         f"should not contain")
        if module.startswith("numpy._core") and not hasattr(np, "_core"):  # written by numpy 2, read by 1.x
            module = module.replace("numpy._core", "numpy.core", 1)
        return super().find_class(module, name)


@contextlib.contextmanager
def _quiet_unraisable():
    """numpy reports some errors of a corrupt pickle's array state as 'unraisable' tracebacks on
    stderr while the load itself fails cleanly: keep them off the console."""
    previous = sys.unraisablehook
    sys.unraisablehook = lambda info: None
    try:
        yield
    finally:
        sys.unraisablehook = previous


# torch.save's legacy (non-zip) format starts with this pickled magic number
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C


def _is_safetensors(path: str) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < os.path.getsize(path)


def _read_object(path: str):
    """The object a weights file holds, told apart by content (not by name): a torch zip file, a
    safetensors file, a plain pickle (Detectron2 ``.pkl``), or torch.save's legacy format."""
    import zipfile
    if _is_safetensors(path):
        from safetensors.torch import load_file
        return load_file(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            pickled = f.read(1) == b"\x80"  # pickle PROTO opcode
        if pickled:
            with open(path, "rb") as f, _quiet_unraisable():
                obj = _ArrayUnpickler(f, encoding="latin1").load()
            if not (isinstance(obj, int) and obj == _LEGACY_TORCH_MAGIC):
                return obj
    return torch.load(path, map_location="cpu", weights_only=True)  # also names an empty or truncated file


def read_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Tensor]:
    """{name: tensor} from an official ``.pkl`` (pickled numpy or tensors), a ``.pth`` (torch.save)
    or a ``.safetensors`` file, whatever its name.

    Accepts {"model": state_dict, ...} (Detectron2 and Swin-release checkpoints), {"state_dict":
    state_dict, ...} (timm training checkpoints) or a bare state dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    try:
        obj = _read_object(path)
    except MemoryError:  # a crafted length field asks for an absurd allocation
        raise ValueError(f"cannot read checkpoint {path!r}: it asks for more memory than exists (corrupt?)") from None
    except Exception as e:  # a fuzzed pickle raises nearly anything: OverflowError, TypeError, KeyError...
        from .cli_errors import torch_load_reason
        raise ValueError(f"cannot read checkpoint {path!r}: {torch_load_reason(e)}") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"checkpoint {path!r} holds no state dict (expected {{'model': {{name: array}}}})")
    tensors = {}
    for name, value in obj.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, Tensor):
            raise ValueError(f"checkpoint {path!r}: entry {name!r} is a {type(value).__name__}, not an array")
        tensors[name] = value
    return tensors


def official_to_state_dict(source: Dict[str, Tensor], backbone: str) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """Official (Detectron2) MaskFormer tensors under our names -> (tensors, {skipped: reason}).

    `backbone` is our config's backbone name; it picks the D2 ResNet (basic or DeepLab stem) or
    D2SwinTransformer rules.
    """
    if backbone.startswith("swin"):
        rules = _d2_swin_rules()
    else:
        rules = _d2_resnet_rules(deeplab_stem=backbone == "resnet101c")
    skips: List[Skip] = [
        _SKIP_BN_COUNTER,
        (r"backbone\..*\.relative_position_index", "constant index table, rebuilt by timm"),
    ]
    if any(k == "backbone.absolute_pos_embed" for k in source):
        raise ValueError("official checkpoint has a Swin absolute position embedding (APE), which MaskFormer "
                         "configs never use and this model does not support")
    return _rename(source, rules + _official_head_rules(), skips, "official checkpoint")


def load_official_checkpoint(model: nn.Module, path: Union[str, os.PathLike], strict: bool = True) -> nn.Module:
    """Load an official MaskFormer model-zoo file (``.pkl`` or ``.pth``, Detectron2 names) into `model`.

    strict (default): every parameter/buffer of `model` must come from the file and every file
    tensor must be used (or be a known derived buffer), else ValueError listing the names.
    strict=False loads what matches and warns with the lists. Wrong shapes always raise
    (e.g. the file is for another number of classes or backbone). Returns `model`.
    """
    cfg: Optional[MaskFormerConfig] = getattr(model, "cfg", None)
    if cfg is None:
        raise ValueError(f"load_official_checkpoint expects a MaskFormer built by build_model, "
                         f"got {type(model).__name__}")
    tensors, _ = official_to_state_dict(read_checkpoint(path), cfg.backbone)
    problems = load_state_strict(model, tensors, f"official checkpoint {os.fspath(path)!r}", strict=strict)
    if problems:
        import warnings
        warnings.warn(f"load_official_checkpoint({os.fspath(path)!r}, strict=False): " + "; ".join(problems))
    return model
