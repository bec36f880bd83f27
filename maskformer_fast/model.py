"""MaskFormer (Cheng et al., NeurIPS 2021): the model, its hot ops (GroupNorm + activation,
attention) dispatched through ``maskformer_fast.ops`` (eager reference or Triton kernel).

    images [B,3,H,W] -> backbone -> res2..res5 -> pixel_decoder -> mask_features [B,256,H/4,W/4]
                                        \\-> res5 (or the +6Enc encoder output) -> predictor
    predictor: DETR decoder over 100 queries -> class logits [B,Q,C+1], mask embeddings
    masks = einsum(mask embeddings, mask_features) -> [B,Q,H/4,W/4]

Module tree and names follow the official code (facebookresearch/MaskFormer): ``backbone``,
``pixel_decoder`` (official ``sem_seg_head.pixel_decoder``), ``predictor`` (official
``sem_seg_head.predictor``: ``query_embed``, ``input_proj``, ``transformer.decoder``,
``class_embed``, ``mask_embed.layers``), plus ``criterion``.
"""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import build_backbone
from .config import MaskFormerConfig
from .criterion import MaskFormerCriterion
from .pixel_decoder import BasePixelDecoder, ConvNorm, TransformerEncoderPixelDecoder
from .transformer import PositionEmbeddingSine, TransformerDecoderOnly

__all__ = ["MaskFormer", "TransformerPredictor", "MLP", "build_model"]


class MLP(nn.Module):
    """Linear layers with ReLU between them (DETR's MLP); parameters ``layers.{i}``."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class TransformerPredictor(nn.Module):
    """MaskFormer's transformer module and heads (official TransformerPredictor, mask_classification=True).

    Args:
        in_channels: channels of the transformer input feature (res5, or conv_dim for +6Enc).
        num_classes: C (the class head has C+1 outputs, the last one "no object").
        hidden_dim, num_queries, nheads, dropout, dim_feedforward, dec_layers: DETR decoder.
        mask_dim: width of the per-pixel embeddings the masks are read from.
        deep_supervision: also return the predictions of the first dec_layers-1 layers.
        enforce_input_project: 1x1 projection even when in_channels == hidden_dim.
    """

    def __init__(self, in_channels: int, num_classes: int, hidden_dim: int = 256, num_queries: int = 100,
                 nheads: int = 8, dropout: float = 0.1, dim_feedforward: int = 2048, dec_layers: int = 6,
                 mask_dim: int = 256, deep_supervision: bool = True, enforce_input_project: bool = False):
        super().__init__()
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.transformer = TransformerDecoderOnly(hidden_dim, nheads, dec_layers, dim_feedforward, dropout,
                                                  return_intermediate=deep_supervision)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        if in_channels != hidden_dim or enforce_input_project:
            self.input_proj = ConvNorm(in_channels, hidden_dim, 1, norm=False, activation="none")
        else:
            self.input_proj = nn.Identity()
        self.deep_supervision = deep_supervision
        # Whether eval-mode forwards also return aux_outputs (the official model computes the masks
        # of every decoder layer at test time and keeps the last; the fast engine turns this off).
        self.eval_aux_outputs = True
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(self, x: torch.Tensor, mask_features: torch.Tensor) -> Dict[str, object]:
        """x: [B, in_channels, h, w] (stride 32); mask_features: [B, mask_dim, H/4, W/4].

        The official code passes no padding mask (mask=None): padded pixels are attended to.
        """
        hs = self.decode(x)
        with_aux = self.deep_supervision and (self.training or self.eval_aux_outputs)
        if not with_aux:
            hs = hs[-1:]  # masks of the final layer only: 1/L of the einsum and of its output
        logits = self.class_embed(hs)
        masks = torch.einsum("lbqc,bchw->lbqhw", self.mask_embed(hs), mask_features)
        out: Dict[str, object] = {"pred_logits": logits[-1], "pred_masks": masks[-1]}
        if with_aux:
            out["aux_outputs"] = [{"pred_logits": a, "pred_masks": b} for a, b in zip(logits[:-1], masks[:-1])]
        return out


    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's query states hs [L (or 1 without deep supervision), B, Q, hidden_dim]."""
        return self.transformer(self.input_proj(x), self.query_embed.weight, self.pe_layer(x))


def padded_hw(height, width, size_divisibility: int) -> Tuple:
    """(H, W) rounded up to multiples of size_divisibility (0 or 1: unchanged), as ImageList.from_tensors.

    (H + d - 1) // d * d, not H + (d - H % d) % d: the same integer, in the form that torch.export's
    symbolic shapes can reason about (a dynamic-size ONNX export, onnx_export.py)."""
    d = size_divisibility
    return (height, width) if d <= 1 else ((height + d - 1) // d * d, (width + d - 1) // d * d)


class MaskFormer(nn.Module):
    """Backbone + pixel decoder + transformer predictor; ``criterion`` holds the training loss.

    forward(images [B, 3, H, W], float, already normalised) -> dict with
      "pred_logits" [B, Q, C+1], "pred_masks" [B, Q, h, w] (the stride-4 grid the convolutions
      give for the padded input: ceil(ceil(Hp/2)/2) for the ResNets, ceil(Hp/4) for Swin),
      "aux_outputs" (list of num_decoder_layers-1 such dicts, with deep supervision),
      "input_size" (H, W) and "padded_size" (Hp, Wp): H, W padded up to a multiple of
      size_divisibility (zeros at the bottom/right; size_divisibility 0 or 1: Hp, Wp = H, W).
      Post-processing and the criterion upsample the masks to "padded_size", as the official
      model upsamples to its ImageList's tensor size.
    """

    def __init__(self, cfg: MaskFormerConfig):
        super().__init__()
        self.cfg = cfg
        self.size_divisibility = cfg.size_divisibility
        self.backbone = build_backbone(cfg.backbone, frozen_bn=cfg.frozen_bn, window_size=cfg.window_size,
                                       pretrain_img_size=cfg.pretrain_img_size, drop_path_rate=cfg.drop_path_rate)
        in_channels = [f["num_chs"] for f in self.backbone.feature_info]
        if cfg.pixel_decoder_encoder_layers > 0:
            self.pixel_decoder = TransformerEncoderPixelDecoder(
                in_channels, conv_dim=cfg.conv_dim, mask_dim=cfg.mask_dim,
                num_encoder_layers=cfg.pixel_decoder_encoder_layers, nheads=cfg.nheads,
                dim_feedforward=cfg.dim_feedforward, dropout=cfg.dropout)
            predictor_in = cfg.conv_dim  # official TRANSFORMER_IN_FEATURE "transformer_encoder"
        else:
            self.pixel_decoder = BasePixelDecoder(in_channels, conv_dim=cfg.conv_dim, mask_dim=cfg.mask_dim)
            predictor_in = in_channels[-1]  # "res5"
        self.predictor = TransformerPredictor(
            predictor_in, cfg.num_classes, hidden_dim=cfg.hidden_dim, num_queries=cfg.num_queries,
            nheads=cfg.nheads, dropout=cfg.dropout, dim_feedforward=cfg.dim_feedforward,
            dec_layers=cfg.num_decoder_layers, mask_dim=cfg.mask_dim, deep_supervision=cfg.deep_supervision,
            enforce_input_project=cfg.enforce_input_project)
        self.criterion = MaskFormerCriterion(
            num_classes=cfg.num_classes, class_weight=cfg.class_weight, mask_weight=cfg.mask_weight,
            dice_weight=cfg.dice_weight, no_object_weight=cfg.no_object_weight)

    @staticmethod
    def check_images(images: torch.Tensor) -> None:
        """ValueError naming the problem unless images is a finite float tensor [B, 3, H, W].

        The finite check (one host sync) is skipped on the meta device and while torch.compile
        traces."""
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
        if images.dim() != 4:
            raise ValueError(f"images must be 4-D [B, 3, H, W], got shape {tuple(images.shape)}")
        if images.shape[1] != 3:
            raise ValueError(f"images must have 3 channels (RGB) in dim 1, got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be a floating dtype (normalised), got {images.dtype}")
        if images.numel() == 0:
            raise ValueError(f"images must not be empty, got shape {tuple(images.shape)}")
        # Meta tensors (parameter/FLOP counting) have no values to check. Under torch.compile the
        # check is left out: a data-dependent branch would split the graph and sync every step.
        if not images.is_meta and not torch.compiler.is_compiling() and not torch.isfinite(images).all():
            raise ValueError("images contain NaN or infinite values")

    def pad_images(self, images: torch.Tensor) -> torch.Tensor:
        """Zero-pad H, W (bottom/right) up to a multiple of size_divisibility (official
        ImageList.from_tensors; 0 or 1 pads nothing)."""
        if self.size_divisibility <= 1:
            return images
        H, W = images.shape[-2:]
        Hp, Wp = padded_hw(H, W, self.size_divisibility)
        return F.pad(images, (0, Wp - W, 0, Hp - H))

    def forward(self, images: torch.Tensor) -> Dict[str, object]:
        self.check_images(images)
        return self.forward_checked(images)

    def forward_checked(self, images: torch.Tensor) -> Dict[str, object]:
        """forward() of images that passed :meth:`check_images` (the part torch.compile traces)."""
        input_size = tuple(images.shape[-2:])
        images = self.pad_images(images)
        features = self.backbone(images)
        mask_features, encoder_features = self.pixel_decoder(features)
        memory = encoder_features if encoder_features is not None else features["res5"]
        out = self.predictor(memory, mask_features)
        out["input_size"] = input_size
        out["padded_size"] = tuple(images.shape[-2:])
        return out


def build_model(cfg: MaskFormerConfig, fast: bool = False) -> MaskFormer:
    """The MaskFormer for `cfg` (random init; load weights with convert.*); hot ops dispatched
    through maskformer_fast.ops. ``fast=True``: the same model made fast in place for training
    and eval (:func:`maskformer_fast.fast.build_fast_model`; compiled serving: ``optimize``)."""
    if not isinstance(cfg, MaskFormerConfig):
        raise ValueError(f"build_model expects a MaskFormerConfig (see get_config), got {type(cfg).__name__}")
    if fast:
        from .fast import build_fast_model  # fast imports this module
        return build_fast_model(cfg)
    return MaskFormer(cfg)
