"""Backbones: feature shapes vs feature_info, R101c stem, frozen BN, and the official Swin window order."""
import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn

from maskformer_fast.backbone import FEATURE_NAMES, OfficialSwinBlock, SwinBackbone, build_backbone
from tests.helpers import assert_close_verbose


@pytest.mark.parametrize("name, channels", [
    ("resnet50", (256, 512, 1024, 2048)),
    ("resnet101c", (256, 512, 1024, 2048)),
    ("swin_tiny", (96, 192, 384, 768)),
])
def test_feature_shapes_match_feature_info(name, channels):
    torch.manual_seed(0)
    backbone = build_backbone(name).eval()
    info = backbone.feature_info
    assert [f["name"] for f in info] == list(FEATURE_NAMES)
    assert tuple(f["num_chs"] for f in info) == channels
    assert [f["reduction"] for f in info] == [4, 8, 16, 32]
    H, W = 64, 96
    with torch.no_grad():
        feats = backbone(torch.randn(2, 3, H, W))
    assert list(feats) == list(FEATURE_NAMES)
    for f in info:
        assert feats[f["name"]].shape == (2, f["num_chs"], H // f["reduction"], W // f["reduction"]), f["name"]
        assert torch.isfinite(feats[f["name"]]).all()


def test_r101c_has_the_deeplab_stem():
    backbone = build_backbone("resnet101c")
    convs = [m for m in backbone.conv1 if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 64, (3, 3), (2, 2)), (64, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (1, 1))]
    assert backbone.layer1[0].conv1.in_channels == 128
    assert len(backbone.layer3) == 23  # ResNet-101
    # official R101c config: RES5_MULTI_GRID [1, 2, 4]; stride 2 stays in the first res5 block
    assert [(b.conv2.dilation, b.conv2.padding, b.conv2.stride) for b in backbone.layer4] == [
        ((1, 1), (1, 1), (2, 2)), ((2, 2), (2, 2), (1, 1)), ((4, 4), (4, 4), (1, 1))]


def test_frozen_bn_has_no_trainable_bn_and_ignores_train_mode():
    backbone = build_backbone("resnet50", frozen_bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert not any("bn" in n or "downsample.1" in n for n, _ in backbone.named_parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        train_out = backbone.train()(x)["res5"]
        eval_out = backbone.eval()(x)["res5"]
    assert torch.equal(train_out, eval_out)
    with torch.device("meta"):
        unfrozen = build_backbone("resnet50", frozen_bn=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in unfrozen.modules())


def _official_swin_attention64(block: SwinTransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """The official Swin W-MSA/SW-MSA step written out in float64: pad to a window multiple,
    roll the padded map, region mask on the padded size (-100 across regions), window
    attention with relative position bias, unroll, crop. x: [B, H, W, C] after norm1."""
    ws, shift = block.window_size[0], block.shift_size[0]
    attn = block.attn
    B, H, W, C = x.shape
    x = x.double()
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
    region = torch.zeros(Hp, Wp, dtype=torch.float64)
    if shift:
        x = torch.roll(x, (-shift, -shift), (1, 2))
        bounds = lambda n: [(0, n - ws), (n - ws, n - shift), (n - shift, n)]  # noqa: E731
        cnt = 0
        for h0, h1 in bounds(Hp):
            for w0, w1 in bounds(Wp):
                region[h0:h1, w0:w1] = cnt
                cnt += 1
    heads = attn.num_heads
    d = C // heads
    qkv_w, qkv_b = attn.qkv.weight.double(), attn.qkv.bias.double()
    table = attn.relative_position_bias_table.double()
    # relative position bias from first principles: (dy + ws - 1) * (2ws - 1) + (dx + ws - 1)
    ii, jj = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    coords = torch.stack([ii.flatten(), jj.flatten()], 1)
    rel = coords[:, None, :] - coords[None, :, :] + ws - 1
    bias = table[rel[..., 0] * (2 * ws - 1) + rel[..., 1]].permute(2, 0, 1)  # heads, N, N
    out = torch.zeros_like(x)
    for b in range(B):
        for wy in range(0, Hp, ws):
            for wx in range(0, Wp, ws):
                tokens = x[b, wy:wy + ws, wx:wx + ws].reshape(-1, C)
                reg = region[wy:wy + ws, wx:wx + ws].reshape(-1)
                q, k, v = (tokens @ qkv_w.T + qkv_b).split(C, dim=-1)
                q, k, v = (t.view(-1, heads, d).transpose(0, 1) for t in (q, k, v))
                scores = (q * d ** -0.5) @ k.transpose(1, 2) + bias
                scores = scores + torch.where(reg[:, None] != reg[None, :], -100.0, 0.0)
                o = (scores.softmax(-1) @ v).transpose(0, 1).reshape(-1, C)
                out[b, wy:wy + ws, wx:wx + ws] = (o @ attn.proj.weight.double().T + attn.proj.bias.double()).view(ws, ws, C)
    if shift:
        out = torch.roll(out, (shift, shift), (1, 2))
    return out[:, :H, :W]


@pytest.mark.parametrize("shift", [0, 3])
def test_swin_block_pads_then_rolls_like_official(shift):
    torch.manual_seed(0)
    dim, H, W = 32, 10, 13  # neither a multiple of the window (7)
    block = OfficialSwinBlock(dim, input_resolution=(H, W), num_heads=4, window_size=7, shift_size=shift,
                              always_partition=True, dynamic_mask=True).double().eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_(0, 0.5)
        x = torch.randn(2, H, W, dim, dtype=torch.float64)
        ours = block._attn(x)
        ref = _official_swin_attention64(block, x)
    assert_close_verbose(ours, ref, rtol=1e-10, atol=1e-10, name=f"swin attention shift={shift}")
    if shift:
        # timm's own order (roll before pad) gives a different answer here: the test can fail
        with torch.no_grad():
            timm_order = SwinTransformerBlock._attn(block, x)
        assert (timm_order - ref).abs().max() > 1e-3


def test_swin_backbone_keeps_configured_window_at_small_sizes():
    backbone = SwinBackbone("swin_tiny", window_size=7, drop_path_rate=0.0)
    blocks = [m for m in backbone.modules() if isinstance(m, SwinTransformerBlock)]
    assert len(blocks) == 12 and all(type(b) is OfficialSwinBlock for b in blocks)
    assert all(b.window_size == (7, 7) for b in blocks)
    assert [b.shift_size for b in blocks[:2]] == [(0, 0), (3, 3)]


_HF_BLOCK_NAMES = {"layernorm_before": "norm1", "layernorm_after": "norm2",
                   "attention.self.relative_position_bias_table": "attn.relative_position_bias_table",
                   "attention.output.dense": "attn.proj", "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}


def _hf_swin_to_ours(hf_state: dict) -> dict:
    """HF MaskFormerSwinBackbone state dict -> SwinBackbone names (only what this test needs)."""
    out = {}
    for key, value in hf_state.items():
        k = key.removeprefix("model.")
        if k.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + k.rsplit(".", 1)[1]] = value
        elif k.startswith("embeddings.norm."):
            out["patch_embed.norm." + k.rsplit(".", 1)[1]] = value
        elif k.startswith("hidden_states_norms."):
            out["norm" + k[len("hidden_states_norms."):]] = value
        elif k.startswith("encoder.layers."):
            _, _, stage, kind, rest = k.split(".", 4)
            if kind == "downsample":  # official/HF: end of stage i; timm: start of stage i+1
                out[f"layers.{int(stage) + 1}.downsample.{rest}"] = value
                continue
            block, rest = rest.split(".", 1)
            prefix = f"layers.{stage}.blocks.{block}."
            module, param = rest.rsplit(".", 1) if "." in rest else (rest, "")
            if rest in _HF_BLOCK_NAMES:
                out[prefix + _HF_BLOCK_NAMES[rest]] = value
            elif module in _HF_BLOCK_NAMES:
                out[prefix + _HF_BLOCK_NAMES[module] + "." + param] = value
            elif module == "attention.self.query":  # fuse q, k, v as timm's attn.qkv
                parts = [hf_state[key.replace(".query.", f".{n}.")] for n in ("query", "key", "value")]
                out[prefix + "attn.qkv." + param] = torch.cat(parts)
    return out


def test_swin_backbone_matches_hf_maskformer_swin():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.MaskFormerSwinConfig(
        embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, drop_path_rate=0.0,
        image_size=224, out_features=["stage1", "stage2", "stage3", "stage4"])
    hf = transformers.MaskFormerSwinBackbone(hf_cfg).eval()
    ours = SwinBackbone("swin_tiny", window_size=7, drop_path_rate=0.0).eval()
    with torch.no_grad():
        for p in hf.parameters():  # non-trivial norms, biases and position tables
            p.add_(torch.randn_like(p) * 0.02)
    missing, unexpected = ours.load_state_dict(_hf_swin_to_ours(hf.state_dict()), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    x = torch.randn(1, 3, 320, 416)  # stage maps 80x104 ... 10x13: none a multiple of 7
    with torch.no_grad():
        feats = ours(x)
        hf_feats = hf(x).feature_maps
    for name, ref in zip(FEATURE_NAMES, hf_feats):
        assert_close_verbose(feats[name], ref, rtol=1e-4, atol=1e-4, name=name)


@pytest.mark.parametrize("name", ["resnet101", "swin_small", "swin_base", "swin_large"])
def test_other_backbones_shapes_on_meta(name):
    # window 12 (Swin-B/L) on maps of 24x40 ... 3x5: padding and shift masks on every stage
    with torch.device("meta"):
        backbone = build_backbone(name, window_size=12 if name in ("swin_base", "swin_large") else 7)
        feats = backbone(torch.empty(1, 3, 96, 160))
    for f in backbone.feature_info:
        assert feats[f["name"]].shape == (1, f["num_chs"], 96 // f["reduction"], 160 // f["reduction"])
