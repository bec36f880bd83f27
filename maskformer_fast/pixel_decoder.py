"""MaskFormer pixel decoders: the FPN-style BasePixelDecoder and its "+6Enc" variant.

Module names follow the official code (``mask_former/modeling/heads/pixel_decoder.py``):
``adapter_{1,2,3}`` are the 1x1 laterals of res2..res4, ``layer_{1..4}`` the 3x3 output convs
(``layer_4`` is the res5 path, which has no lateral), ``mask_features`` the per-pixel embedding
conv; the "+6Enc" decoder adds ``input_proj`` and ``transformer.encoder.layers.{i}``.
GroupNorm + activation go through ``ops.group_norm_act`` (eager reference or fused kernel).
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .transformer import PositionEmbeddingSine, TransformerEncoderOnly

__all__ = ["ConvNorm", "BasePixelDecoder", "TransformerEncoderPixelDecoder", "c2_xavier_fill"]

GN_GROUPS = 32


def c2_xavier_fill(conv: nn.Conv2d) -> None:
    """Caffe2's XavierFill as Detectron2 uses it: kaiming_uniform_(a=1) weights, zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ConvNorm(nn.Conv2d):
    """Conv2d, optionally followed by GroupNorm(32) (``.norm``) and ReLU (Detectron2's Conv2d layout).

    With a norm the conv has no bias (as the official "GN" configs); without one it has a bias.
    Parameters: ``weight`` [, ``bias``] [, ``norm.weight``, ``norm.bias``].

    Args:
        in_channels, out_channels, kernel_size: conv shape (stride 1, "same" padding).
        norm: add GroupNorm(32, out_channels).
        activation: "relu" or "none".
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: bool = True,
                 activation: str = "relu"):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not norm)
        if activation not in ("relu", "none"):
            raise ValueError(f"ConvNorm: activation must be 'relu' or 'none', got {activation!r}")
        self.norm = nn.GroupNorm(GN_GROUPS, out_channels) if norm else None
        self.activation = activation
        c2_xavier_fill(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in, H, W] -> [B, out, H, W]."""
        x = self._conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            return ops.group_norm_act(x, GN_GROUPS, self.norm.weight, self.norm.bias, self.norm.eps,
                                      activation=self.activation)
        return F.relu(x) if self.activation == "relu" else x


class BasePixelDecoder(nn.Module):
    """FPN pixel decoder: top-down from res5 with nearest upsampling, GN everywhere, then mask_features.

    res5 -> layer_4 (3x3+GN+ReLU); for res4, res3, res2: adapter (1x1+GN) + nearest-upsampled
    previous map -> layer (3x3+GN+ReLU); then mask_features (3x3 conv with bias).

    Args:
        in_channels: channels of res2..res5.
        conv_dim: FPN width. mask_dim: per-pixel embedding width.
    """

    def __init__(self, in_channels: Sequence[int], conv_dim: int = 256, mask_dim: int = 256):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"BasePixelDecoder expects 4 feature levels (res2..res5), got {len(in_channels)}")
        self.in_features = ("res2", "res3", "res4", "res5")
        for idx, ch in enumerate(in_channels[:-1]):
            self.add_module(f"adapter_{idx + 1}", ConvNorm(ch, conv_dim, 1, activation="none"))
            self.add_module(f"layer_{idx + 1}", ConvNorm(conv_dim, conv_dim, 3))
        self.layer_4 = ConvNorm(in_channels[-1], conv_dim, 3)
        # The paper says a 1x1 conv here; the official code (and HF, and the released weights)
        # use a 3x3 conv with bias. We follow the code so that the checkpoints load.
        self.mask_features = ConvNorm(conv_dim, mask_dim, 3, norm=False, activation="none")

    def top_level(self, res5: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The res5 path: (FPN top map, transformer-encoder features or None)."""
        return self.layer_4(res5), None

    def forward(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """features: res2..res5 NCHW -> (mask_features [B, mask_dim, H/4, W/4], encoder features or None)."""
        y, encoder_features = self.fpn(features)
        return self.mask_features(y), encoder_features

    def fpn(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The top-down path up to (not including) mask_features: ([B, conv_dim, H/4, W/4], encoder features)."""
        y, encoder_features = self.top_level(features["res5"])
        for idx in (3, 2, 1):  # res4, res3, res2
            lateral = getattr(self, f"adapter_{idx}")(features[self.in_features[idx - 1]])
            # FPN: nearest upsampling to the lateral's size (official F.interpolate(size=..., "nearest"))
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{idx}")(y)
        return y, encoder_features


class TransformerEncoderPixelDecoder(BasePixelDecoder):
    """The "+6Enc" pixel decoder: a DETR encoder on res5 before the FPN (official TransformerEncoderPixelDecoder).

    res5 -> input_proj (1x1 with bias) -> 6 post-norm encoder layers with sine positions (no
    padding mask, as official) -> layer_4 (now conv_dim -> conv_dim 3x3+GN+ReLU). The encoder
    output also feeds the transformer predictor ("transformer_encoder" in-feature).
    """

    def __init__(self, in_channels: Sequence[int], conv_dim: int = 256, mask_dim: int = 256,
                 num_encoder_layers: int = 6, nheads: int = 8, dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__(in_channels, conv_dim=conv_dim, mask_dim=mask_dim)
        self.input_proj = ConvNorm(in_channels[-1], conv_dim, 1, norm=False, activation="none")
        self.transformer = TransformerEncoderOnly(conv_dim, nheads, num_encoder_layers, dim_feedforward, dropout)
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.layer_4 = ConvNorm(conv_dim, conv_dim, 3)

    def top_level(self, res5: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        encoded = self.transformer(self.input_proj(res5), self.pe_layer(res5))
        return self.layer_4(encoded), encoded
