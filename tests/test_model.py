"""The eager MaskFormer: output contract, padding, bad input, module names, and the
transformer/pixel-decoder pieces against float64 re-implementations of the official code."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import maskformer_fast as mf
from maskformer_fast.pixel_decoder import BasePixelDecoder, ConvNorm
from maskformer_fast.transformer import PositionEmbeddingSine, TransformerDecoderOnly, TransformerEncoderOnly
from tests.helpers import assert_close_verbose


@pytest.fixture(scope="module")
def r50_model():
    torch.manual_seed(0)
    return mf.build_model(mf.get_config("maskformer_r50_ade20k")).eval()


def test_output_contract_on_odd_size(r50_model):
    x = torch.randn(2, 3, 70, 100)
    with torch.no_grad():
        out = r50_model(x)
    Hp, Wp = 96, 128  # padded up to multiples of 32
    assert out["pred_logits"].shape == (2, 100, 151)
    assert out["pred_masks"].shape == (2, 100, Hp // 4, Wp // 4)
    assert out["input_size"] == (70, 100)
    assert len(out["aux_outputs"]) == 5
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 100, 151) and aux["pred_masks"].shape == (2, 100, Hp // 4, Wp // 4)
    # internal padding is zeros at the bottom/right: same result as padding by hand
    with torch.no_grad():
        padded = r50_model(F.pad(x, (0, Wp - 100, 0, Hp - 70)))
    assert padded["input_size"] == (Hp, Wp)
    assert_close_verbose(out["pred_masks"], padded["pred_masks"], rtol=0, atol=0, name="pred_masks")
    assert_close_verbose(out["pred_logits"], padded["pred_logits"], rtol=0, atol=0, name="pred_logits")


def test_decoder_layer_count_and_deep_supervision_switch():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    model = mf.build_model(mf.get_config("maskformer_r50_ade20k", num_decoder_layers=3)).eval()
    with torch.no_grad():
        assert len(model(x)["aux_outputs"]) == 2
    model = mf.build_model(mf.get_config("maskformer_r50_ade20k", deep_supervision=False)).eval()
    with torch.no_grad():
        out = model(x)
    assert "aux_outputs" not in out and out["pred_masks"].shape == (1, 100, 16, 16)


@pytest.mark.parametrize("images, needle", [
    (torch.randn(1, 4, 64, 64), "3 channels"),
    (torch.randn(1, 1, 64, 64), "3 channels"),
    (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), "floating"),
    (torch.randn(3, 64, 64), "4-D"),
    (torch.full((1, 3, 64, 64), float("nan")), "NaN"),
    (torch.full((1, 3, 64, 64), float("inf")), "infinite"),
    ([[0.0]], "torch.Tensor"),
])
def test_bad_images_raise_value_error_naming_the_problem(r50_model, images, needle):
    with pytest.raises(ValueError, match=needle):
        r50_model(images)


def test_build_model_rejects_non_config():
    with pytest.raises(ValueError, match="MaskFormerConfig"):
        mf.build_model({"backbone": "resnet50"})


def test_official_module_names(r50_model):
    names = set(r50_model.state_dict())
    expected = [
        "backbone.conv1.weight", "backbone.layer4.2.conv3.weight",
        "pixel_decoder.adapter_1.weight", "pixel_decoder.adapter_1.norm.weight", "pixel_decoder.adapter_3.norm.bias",
        "pixel_decoder.layer_1.weight", "pixel_decoder.layer_4.weight", "pixel_decoder.layer_4.norm.bias",
        "pixel_decoder.mask_features.weight", "pixel_decoder.mask_features.bias",
        "predictor.query_embed.weight", "predictor.input_proj.weight", "predictor.input_proj.bias",
        "predictor.transformer.decoder.layers.5.self_attn.in_proj_weight",
        "predictor.transformer.decoder.layers.0.self_attn.in_proj_bias",
        "predictor.transformer.decoder.layers.0.multihead_attn.out_proj.weight",
        "predictor.transformer.decoder.layers.0.linear1.weight", "predictor.transformer.decoder.layers.0.linear2.bias",
        "predictor.transformer.decoder.layers.0.norm3.weight", "predictor.transformer.decoder.norm.weight",
        "predictor.class_embed.weight", "predictor.mask_embed.layers.2.weight",
    ]
    assert not [n for n in expected if n not in names]
    assert "pixel_decoder.adapter_4.weight" not in names and "pixel_decoder.layer_1.bias" not in names
    assert r50_model.pixel_decoder.mask_features.kernel_size == (3, 3)  # the code's 3x3, not the paper's 1x1
    assert r50_model.predictor.transformer.decoder.layers[0].self_attn.in_proj_weight.shape == (768, 256)
    assert isinstance(r50_model.criterion, mf.criterion.MaskFormerCriterion)
    assert not list(r50_model.criterion.parameters())  # no trainable state hidden in the loss


def test_plus_6enc_and_swin_coco_variants():
    torch.manual_seed(0)
    with torch.device("meta"):
        enc = mf.build_model(mf.get_config("maskformer_r50_coco_panoptic"))
        swin = mf.build_model(mf.get_config("maskformer_swin_t_coco_panoptic"))
    names = set(enc.state_dict())
    assert "pixel_decoder.input_proj.bias" in names
    assert "pixel_decoder.transformer.encoder.layers.5.self_attn.in_proj_weight" in names
    assert enc.pixel_decoder.layer_4.in_channels == 256
    assert isinstance(enc.predictor.input_proj, nn.Identity)  # conv_dim == hidden_dim, official nn.Sequential()
    assert swin.predictor.input_proj.in_channels == 768 and "backbone.norm3.weight" in swin.state_dict()
    forced = mf.build_model(mf.get_config("maskformer_r50_coco_panoptic", enforce_input_project=True, dropout=0.0))
    hooked = {}
    forced.predictor.input_proj.register_forward_hook(lambda m, i, o: hooked.setdefault("in", i[0]))
    forced.pixel_decoder.transformer.register_forward_hook(lambda m, i, o: hooked.setdefault("enc", o))
    with torch.no_grad():
        out = forced.eval()(torch.randn(1, 3, 64, 96))
    assert out["pred_masks"].shape == (1, 100, 16, 24)
    assert hooked["in"] is hooked["enc"]  # the predictor reads the +6Enc output, not res5


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = mf.build_model(mf.get_config("maskformer_r50_ade20k", num_decoder_layers=2)).train()
    with torch.no_grad():  # trained-like values: zero-initialised biases would hide some gradients
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    out = model(torch.randn(2, 3, 64, 64))
    loss = out["pred_logits"].sum() + out["pred_masks"].sum()
    for aux in out["aux_outputs"]:
        loss = loss + aux["pred_logits"].sum() + aux["pred_masks"].sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    missing = {n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0}
    # Queries start at zero (DETR), so the first self-attention's values all equal its v-bias and
    # its output does not depend on in_proj_weight (only rounding reaches it): dead in the official model too.
    assert missing <= {"predictor.transformer.decoder.layers.0.self_attn.in_proj_weight"}, missing


# ---------- float64 references written from the official code (seq-first, nn.MultiheadAttention) ----------

def _sine_pos_reference(B, H, W, num_pos_feats=128, temperature=10000):
    not_mask = torch.ones(B, H, W, dtype=torch.float64)
    y_embed = not_mask.cumsum(1)
    x_embed = not_mask.cumsum(2)
    y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * 2 * math.pi
    x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * 2 * math.pi
    dim_t = torch.arange(num_pos_feats, dtype=torch.float64)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos_x = x_embed[..., None] / dim_t
    pos_y = y_embed[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def test_sine_position_encoding_matches_detr_formula():
    ours = PositionEmbeddingSine(128, normalize=True)(torch.zeros(2, 7, 5, 9))
    assert_close_verbose(ours, _sine_pos_reference(2, 5, 9), rtol=1e-5, atol=1e-5, name="pos")


class _RefMHA(nn.MultiheadAttention):
    def forward(self, q, k, v):  # seq-first [L, B, E]
        return super().forward(q, k, v, need_weights=False)[0]


def _copy_mha(ref: nn.MultiheadAttention, ours) -> None:
    ref.in_proj_weight.copy_(ours.in_proj_weight)
    ref.in_proj_bias.copy_(ours.in_proj_bias)
    ref.out_proj.weight.copy_(ours.out_proj.weight)
    ref.out_proj.bias.copy_(ours.out_proj.bias)


def _ref_decoder_layer(layer, tgt, memory, pos, query_pos):
    """Official TransformerDecoderLayer.forward_post, seq-first, with torch's MultiheadAttention."""
    E = tgt.shape[-1]
    sa, ca = _RefMHA(E, layer.self_attn.num_heads).double(), _RefMHA(E, layer.self_attn.num_heads).double()
    _copy_mha(sa, layer.self_attn)
    _copy_mha(ca, layer.multihead_attn)
    q = k = tgt + query_pos
    tgt = layer.norm1(tgt + sa(q, k, tgt))
    tgt = layer.norm2(tgt + ca(tgt + query_pos, memory + pos, memory))
    return layer.norm3(tgt + layer.linear2(F.relu(layer.linear1(tgt))))


def _ref_encoder_layer(layer, src, pos):
    E = src.shape[-1]
    sa = _RefMHA(E, layer.self_attn.num_heads).double()
    _copy_mha(sa, layer.self_attn)
    src = layer.norm1(src + sa(src + pos, src + pos, src))
    return layer.norm2(src + layer.linear2(F.relu(layer.linear1(src))))


@torch.no_grad()
def test_decoder_matches_official_detr_decoder_float64():
    torch.manual_seed(0)
    E, B, Q, H, W = 32, 2, 5, 3, 4
    dec = TransformerDecoderOnly(E, 4, num_decoder_layers=3, dim_feedforward=64, dropout=0.1).double().eval()
    for p in dec.parameters():
        p.add_(torch.randn_like(p) * 0.1)
    src = torch.randn(B, E, H, W, dtype=torch.float64)
    pos = torch.randn(B, E, H, W, dtype=torch.float64)
    query_embed = torch.randn(Q, E, dtype=torch.float64)
    ours = dec(src, query_embed, pos)  # [L, B, Q, E]
    memory = src.flatten(2).permute(2, 0, 1)
    pos_s = pos.flatten(2).permute(2, 0, 1)
    query_pos = query_embed[:, None].repeat(1, B, 1)
    tgt = torch.zeros_like(query_pos)
    intermediate = []
    for layer in dec.decoder.layers:
        tgt = _ref_decoder_layer(layer, tgt, memory, pos_s, query_pos)
        intermediate.append(dec.decoder.norm(tgt))
    ref = torch.stack(intermediate).transpose(1, 2)
    assert_close_verbose(ours, ref, rtol=1e-10, atol=1e-10, name="decoder hs")


@torch.no_grad()
def test_encoder_matches_official_detr_encoder_float64():
    torch.manual_seed(0)
    E, B, H, W = 32, 2, 3, 5
    enc = TransformerEncoderOnly(E, 4, num_encoder_layers=2, dim_feedforward=64, dropout=0.1).double().eval()
    src = torch.randn(B, E, H, W, dtype=torch.float64)
    pos = torch.randn(B, E, H, W, dtype=torch.float64)
    ours = enc(src, pos)
    x, p = src.flatten(2).permute(2, 0, 1), pos.flatten(2).permute(2, 0, 1)
    for layer in enc.encoder.layers:
        x = _ref_encoder_layer(layer, x, p)
    assert_close_verbose(ours, x.permute(1, 2, 0).reshape(B, E, H, W), rtol=1e-10, atol=1e-10, name="encoder")


@torch.no_grad()
def test_pixel_decoder_matches_official_fpn_float64():
    torch.manual_seed(0)
    chans = (32, 48, 64, 96)
    dec = BasePixelDecoder(chans, conv_dim=64, mask_dim=40).double().eval()
    for p in dec.parameters():
        p.add_(torch.randn_like(p) * 0.1)
    sizes = [(13, 17), (7, 9), (4, 5), (2, 3)]  # odd sizes: nearest resize to the lateral's size
    feats = {n: torch.randn(2, c, *s, dtype=torch.float64) for n, c, s in zip(("res2", "res3", "res4", "res5"), chans, sizes)}
    ours, enc = dec(feats)

    def conv_gn(m: ConvNorm, x, relu):
        y = F.group_norm(F.conv2d(x, m.weight, None, padding=m.padding), 32, m.norm.weight, m.norm.bias, 1e-5)
        return F.relu(y) if relu else y

    y = conv_gn(dec.layer_4, feats["res5"], True)
    for i, name in ((3, "res4"), (2, "res3"), (1, "res2")):
        lateral = conv_gn(getattr(dec, f"adapter_{i}"), feats[name], False)
        y = conv_gn(getattr(dec, f"layer_{i}"), lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest"), True)
    ref = F.conv2d(y, dec.mask_features.weight, dec.mask_features.bias, padding=1)
    assert enc is None
    assert_close_verbose(ours, ref, rtol=1e-10, atol=1e-10, name="mask_features")


def test_transformer_init_is_xavier_and_convs_c2_xavier(r50_model):
    w = r50_model.predictor.transformer.decoder.layers[0].linear1.weight  # [2048, 256]
    bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    conv = r50_model.pixel_decoder.layer_1.weight  # kaiming_uniform(a=1): bound sqrt(3 / fan_in)
    bound = math.sqrt(3.0 / (conv.shape[1] * 9))
    assert conv.abs().max() <= bound and conv.abs().max() > 0.9 * bound
    assert torch.all(r50_model.pixel_decoder.mask_features.bias == 0)
