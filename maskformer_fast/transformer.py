"""DETR transformer pieces used by MaskFormer: sine position encoding, attention, post-norm layers.

Follows the official MaskFormer code (``mask_former/modeling/transformer/{transformer,
position_encoding}.py``, itself from DETR) with one layout change: tensors are batch-first
([B, L, C]) instead of sequence-first; the arithmetic is the same. Parameter names match the
official modules (``self_attn.in_proj_weight``, ``linear1``, ``norm1`` ...) so that released
checkpoints load by name. Attention runs through ``ops.attention`` (eager reference or kernel).
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import ops

__all__ = ["PositionEmbeddingSine", "MultiheadAttention", "TransformerEncoderLayer", "TransformerDecoderLayer",
           "TransformerEncoder", "TransformerDecoder", "TransformerEncoderOnly", "TransformerDecoderOnly"]


class PositionEmbeddingSine(nn.Module):
    """DETR's 2-D sine position encoding, normalised to [0, scale] along each axis.

    The official MaskFormer passes no padding mask, so every position of the (padded) map
    counts and the encoding depends only on H and W.

    Args:
        num_pos_feats: channels per axis; the output has 2 * num_pos_feats channels (y then x).
        temperature: wavelength base.
        normalize: divide the cumulative position by the axis length (+1e-6) and multiply by scale.
        scale: 2*pi by default.
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: Optional[float] = None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: scale needs normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] (only its shape and device are used) -> [B, 2 * num_pos_feats, H, W] in x's dtype."""
        B, _, H, W = x.shape
        # cumulative sums of an all-ones mask = 1..H and 1..W
        y_embed = torch.arange(1, H + 1, dtype=torch.float32, device=x.device)[:, None].expand(H, W)
        x_embed = torch.arange(1, W + 1, dtype=torch.float32, device=x.device)[None, :].expand(H, W)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (H + eps) * self.scale
            x_embed = x_embed / (W + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="trunc") / self.num_pos_feats)
        pos_x = x_embed[:, :, None] / dim_t
        pos_y = y_embed[:, :, None] / dim_t
        # interleave sin (even channels) and cos (odd channels)
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=3).flatten(2)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=3).flatten(2)
        pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)
        return pos[None].expand(B, -1, -1, -1).to(x.dtype)


class MultiheadAttention(nn.Module):
    """nn.MultiheadAttention's parameters (fused ``in_proj_weight``/``in_proj_bias``, ``out_proj``),
    batch-first, with the attention core in ``ops.attention``.

    Args:
        embed_dim: model width E.
        num_heads: heads h (E divisible by h).
        dropout: dropout on the attention weights, training only.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim {embed_dim} not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # as nn.MultiheadAttention._reset_parameters
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """Project x [B, L, E] with the chunk-th third of in_proj -> [B, h, L, d]."""
        E = self.embed_dim
        w = self.in_proj_weight[chunk * E:(chunk + 1) * E]
        b = self.in_proj_bias[chunk * E:(chunk + 1) * E]
        B, L, _ = x.shape
        return F.linear(x, w, b).view(B, L, self.num_heads, E // self.num_heads).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """query [B, Lq, E], key/value [B, Lk, E], key_padding_mask bool [B, Lk] (True = ignore) -> [B, Lq, E]."""
        q, k, v = self._heads(query, 0), self._heads(key, 1), self._heads(value, 2)
        out = ops.attention(q, k, v, key_padding_mask=key_padding_mask,
                            dropout_p=self.dropout if self.training else 0.0)
        B, _, Lq, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, Lq, self.embed_dim))


def _with_pos(x: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    return x if pos is None else x + pos


class TransformerEncoderLayer(nn.Module):
    """DETR post-norm encoder layer: self-attention (pos added to q, k) -> add & norm -> FFN -> add & norm.

    Args:
        d_model: width. nhead: heads. dim_feedforward: FFN width. dropout: dropout everywhere.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: Optional[torch.Tensor] = None,
                key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """src, pos: [B, L, E] -> [B, L, E]."""
        q = k = _with_pos(src, pos)
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, src, key_padding_mask=key_padding_mask)))
        src2 = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(src2))


class TransformerDecoderLayer(nn.Module):
    """DETR post-norm decoder layer: self-attention over queries, cross-attention to memory, FFN.

    query_pos is added to queries and keys of self-attention and to the cross-attention query;
    pos is added to the memory keys (not the values).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: Optional[torch.Tensor] = None,
                query_pos: Optional[torch.Tensor] = None,
                memory_key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """tgt, query_pos: [B, Q, E]; memory, pos: [B, L, E] -> [B, Q, E]."""
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt)))
        tgt2 = self.multihead_attn(_with_pos(tgt, query_pos), _with_pos(memory, pos), memory,
                                   key_padding_mask=memory_key_padding_mask)
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


class TransformerEncoder(nn.Module):
    """A stack of encoder layers (post-norm, so no final norm, as the official code with pre_norm=False)."""

    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout)
                                    for _ in range(num_layers))

    def forward(self, src: torch.Tensor, pos: Optional[torch.Tensor] = None,
                key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos=pos, key_padding_mask=key_padding_mask)
        return src


class TransformerDecoder(nn.Module):
    """A stack of decoder layers with one shared final LayerNorm (``norm``).

    With return_intermediate the normalised output of every layer is returned ([L, B, Q, E],
    for deep supervision); otherwise only the last one ([1, B, Q, E]).
    """

    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_feedforward: int, dropout: float,
                 return_intermediate: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.return_intermediate = return_intermediate

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: Optional[torch.Tensor] = None,
                query_pos: Optional[torch.Tensor] = None,
                memory_key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        intermediate = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos=pos, query_pos=query_pos, memory_key_padding_mask=memory_key_padding_mask)
            if self.return_intermediate:
                intermediate.append(self.norm(tgt))
        if self.return_intermediate:
            return torch.stack(intermediate)
        return self.norm(tgt)[None]


def _xavier_init_matrices(module: nn.Module) -> None:
    """xavier_uniform_ on every parameter with more than one dimension (DETR's _reset_parameters)."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class TransformerEncoderOnly(nn.Module):
    """The "+6Enc" encoder over a feature map (official TransformerEncoderOnly, post-norm).

    forward(src [B, E, H, W], pos [B, E, H, W]) -> [B, E, H, W]. No padding mask: the official
    pixel decoder passes mask=None.
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.encoder = TransformerEncoder(num_encoder_layers, d_model, nhead, dim_feedforward, dropout)
        _xavier_init_matrices(self)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        B, C, H, W = src.shape
        memory = self.encoder(src.flatten(2).transpose(1, 2), pos=pos.flatten(2).transpose(1, 2))
        return memory.transpose(1, 2).reshape(B, C, H, W)


class TransformerDecoderOnly(nn.Module):
    """DETR's Transformer with zero encoder layers (MaskFormer's ENC_LAYERS=0): only ``decoder``.

    forward(src [B, E, H, W], query_embed [Q, E], pos [B, E, H, W]) -> hs [L or 1, B, Q, E].
    Queries start at zero; query_embed is their positional embedding.
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, return_intermediate: bool = True):
        super().__init__()
        self.decoder = TransformerDecoder(num_decoder_layers, d_model, nhead, dim_feedforward, dropout,
                                          return_intermediate=return_intermediate)
        _xavier_init_matrices(self)

    def forward(self, src: torch.Tensor, query_embed: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        B = src.shape[0]
        memory = src.flatten(2).transpose(1, 2)
        pos = pos.flatten(2).transpose(1, 2)
        query_pos = query_embed[None].expand(B, -1, -1)
        tgt = torch.zeros_like(query_pos)
        return self.decoder(tgt, memory, pos=pos, query_pos=query_pos)
