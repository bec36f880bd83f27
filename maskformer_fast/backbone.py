"""Backbones through timm (nothing downloaded): ResNet-50/101, R101c, Swin-T/S/B/L.

Each backbone maps images [B, 3, H, W] (H, W multiples of 32) to the dict
{"res2", "res3", "res4", "res5"} of NCHW features at strides 4, 8, 16, 32, and describes them
in ``feature_info`` (timm style: name, num_chs, reduction).

Parameter names are timm's, at the top of the backbone module (``conv1``, ``layer1`` ... for
ResNet; ``patch_embed``, ``layers.{i}`` for Swin) plus ``norm0..norm3`` for Swin's per-output
LayerNorms (official D2SwinTransformer / HF ``hidden_states_norms``).
"""
from typing import Dict, List, Tuple

import timm
import torch
import torch.nn.functional as F
from timm.layers.norm_act import freeze_batch_norm_2d
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, window_partition, window_reverse
from torch import nn

__all__ = ["ResNetBackbone", "SwinBackbone", "OfficialSwinBlock", "build_backbone", "SWIN_SPECS", "FEATURE_NAMES"]

FEATURE_NAMES = ("res2", "res3", "res4", "res5")

# Swin variants: (embed_dim, depths, num_heads), as the official MODEL.SWIN configs
SWIN_SPECS = {
    "swin_tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "swin_large": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}


def _feature_info(channels: List[int]) -> List[dict]:
    return [dict(name=name, num_chs=ch, reduction=4 * 2 ** i) for i, (name, ch) in enumerate(zip(FEATURE_NAMES, channels))]


class ResNetBackbone(nn.Module):
    """timm ResNet trunk (no pooling/classifier) returning res2..res5.

    Args:
        depth: 50 or 101.
        deep_stem: R101c's DeepLab stem, three 3x3 convs of 64, 64, 128 channels (timm
            stem_type="deep", stem_width=64; timm's own ``resnet101c`` has a 32-wide stem).
        frozen_bn: replace BatchNorm2d by FrozenBatchNorm2d (official configs freeze BN).
        res5_multi_grid: dilation of the 3x3 conv in each res5 block (Detectron2 DeepLab
            RES5_MULTI_GRID; the official R101c config uses (1, 2, 4)). Stride 2 stays in block 0.
    """

    def __init__(self, depth: int = 50, deep_stem: bool = False, frozen_bn: bool = True,
                 res5_multi_grid: Tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        if depth not in (50, 101):
            raise ValueError(f"ResNetBackbone: depth must be 50 or 101, got {depth}")
        kwargs = dict(stem_type="deep", stem_width=64) if deep_stem else {}
        # zero_init_last=False: timm zeroes each block's last BN gamma, which frozen BN would keep
        # at zero forever (dead residual branches when training without pretrained weights)
        trunk = timm.create_model(f"resnet{depth}", pretrained=False, num_classes=0, global_pool="",
                                  zero_init_last=False, **kwargs)
        for name in ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(trunk, name))
        if frozen_bn:
            for name, child in list(self.named_children()):
                self.add_module(name, freeze_batch_norm_2d(child))
        if len(res5_multi_grid) != len(self.layer4):
            raise ValueError(f"ResNetBackbone: res5_multi_grid needs {len(self.layer4)} dilations, "
                             f"got {res5_multi_grid}")
        for block, dilation in zip(self.layer4, res5_multi_grid):  # Detectron2 dilation_per_block
            block.conv2.dilation = (dilation, dilation)
            block.conv2.padding = (dilation, dilation)
        self.feature_info = _feature_info([256, 512, 1024, 2048])

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """[B, 3, H, W] -> {res2: [B, 256, H/4, W/4], ..., res5: [B, 2048, H/32, W/32]}."""
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        res2 = self.layer1(x)
        res3 = self.layer2(res2)
        res4 = self.layer3(res3)
        res5 = self.layer4(res4)
        return {"res2": res2, "res3": res3, "res4": res4, "res5": res5}


class OfficialSwinBlock(SwinTransformerBlock):
    """timm's Swin block with the official window-attention order: pad, then roll.

    timm 1.0 rolls (cyclic shift) before padding to a window multiple and may shrink the window
    at small resolutions. The official Swin (and HF MaskFormerSwin) pads the map to a multiple
    of the window first, then rolls the padded map, computes the shifted-window mask on the padded
    size, and always uses the configured window; padded tokens (zeros after norm1) take part in
    attention. Same parameters as the timm block; only ``_attn`` differs.
    """

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, W, C] after norm1 -> attention output [B, H, W, C]."""
        B, H, W, C = x.shape
        wh, ww = self.window_size
        # ceil-to-multiple as (H + wh - 1) // wh * wh rather than H + (wh - H % wh) % wh: equal
        # integers, but torch.export's symbolic shapes simplify this form (the modulo form made a
        # dynamic-size ONNX export of Swin spend many minutes in sympy)
        Hp, Wp = (H + wh - 1) // wh * wh, (W + ww - 1) // ww * ww
        x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
        has_shift = any(self.shift_size)
        if has_shift:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        mask = self.get_attn_mask(x) if has_shift else None  # region mask of the padded map
        windows = window_partition(x, self.window_size).view(-1, wh * ww, C)
        windows = self.attn(windows, mask=mask)
        x = window_reverse(windows.view(-1, wh, ww, C), self.window_size, Hp, Wp)
        if has_shift:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x[:, :H, :W, :].contiguous()


class SwinBackbone(nn.Module):
    """timm Swin Transformer (patch embed + 4 stages) with the official per-output LayerNorms.

    timm's stage i>0 starts with the patch merging that the official code puts at the end of
    stage i-1; the outputs are the same tensors. Features come out NHWC and are permuted to NCHW.

    Args:
        variant: key of SWIN_SPECS. window_size: attention window (7, or 12 for the 384 models).
        pretrain_img_size: only sets timm's nominal grid; any input size works.
        drop_path_rate: stochastic depth, linear over all blocks as official.
    """

    def __init__(self, variant: str = "swin_tiny", window_size: int = 7, pretrain_img_size: int = 224,
                 drop_path_rate: float = 0.3):
        super().__init__()
        if variant not in SWIN_SPECS:
            raise ValueError(f"SwinBackbone: unknown variant {variant!r}; known: {sorted(SWIN_SPECS)}")
        embed_dim, depths, num_heads = SWIN_SPECS[variant]
        # always_partition: keep the configured window/shift at every resolution (official);
        # strict_img_size=False: any input size, shift masks built per forward.
        trunk = SwinTransformer(
            img_size=pretrain_img_size, embed_dim=embed_dim, depths=depths, num_heads=num_heads,
            window_size=window_size, always_partition=True, strict_img_size=False,
            drop_path_rate=drop_path_rate, num_classes=0, global_pool="")
        self.patch_embed = trunk.patch_embed
        self.layers = trunk.layers
        for block in self.layers.modules():
            if isinstance(block, SwinTransformerBlock):
                block.__class__ = OfficialSwinBlock  # adds no state: same parameters and buffers
        channels = [embed_dim * 2 ** i for i in range(4)]
        for i, ch in enumerate(channels):
            self.add_module(f"norm{i}", nn.LayerNorm(ch))
        self.feature_info = _feature_info(channels)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """[B, 3, H, W] -> {res2: [B, C, ceil(H/4), ceil(W/4)], ..., res5: [B, 8C, ceil(H/32), ceil(W/32)]}.

        As the official D2SwinTransformer: the input is zero-padded bottom/right to a multiple
        of the patch size, and each patch merging pads an odd side by one."""
        ph, pw = self.patch_embed.patch_size
        H, W = x.shape[-2:]
        x = F.pad(x, (0, (W + pw - 1) // pw * pw - W, 0, (H + ph - 1) // ph * ph - H))  # ceil form: see _attn
        x = self.patch_embed(x)  # NHWC
        out = {}
        for i, (name, stage) in enumerate(zip(FEATURE_NAMES, self.layers)):
            x = stage(x)
            out[name] = getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous()
        return out


def build_backbone(name: str, frozen_bn: bool = True, window_size: int = 7, pretrain_img_size: int = 224,
                   drop_path_rate: float = 0.0) -> nn.Module:
    """Backbone by config name: resnet50, resnet101, resnet101c, swin_{tiny,small,base,large}."""
    if name in ("resnet50", "resnet101", "resnet101c"):
        # R101c = the official build_resnet_deeplab_backbone config: DeepLab stem and
        # RES5_MULTI_GRID [1, 2, 4] (configs/ade20k-150/maskformer_R101c_bs16_160k.yaml)
        r101c = name == "resnet101c"
        return ResNetBackbone(depth=50 if name == "resnet50" else 101, deep_stem=r101c, frozen_bn=frozen_bn,
                              res5_multi_grid=(1, 2, 4) if r101c else (1, 1, 1))
    if name in SWIN_SPECS:
        return SwinBackbone(name, window_size=window_size, pretrain_img_size=pretrain_img_size,
                            drop_path_rate=drop_path_rate)
    raise ValueError(f"unknown backbone {name!r}")
