"""from_hf parity: our model built from a random-init HF MaskFormerForInstanceSegmentation must
reproduce HF's outputs and final-layer losses.

HF is the independent reference: its own ResNet / MaskFormerSwin backbones, FPN, DETR decoder and
loss code. The HF models are random-init (nothing downloaded), then BatchNorm statistics, norm
affines and Swin relative-position tables are perturbed so that no mapping error can hide
behind HF's identity-like initialisation. Shrunk where it does not change the architecture:
10 classes, 20 queries, 2 decoder layers; the backbones are full ResNet-50 and Swin-T.
"""
from collections import Counter

import pytest
import torch

from maskformer_fast import from_hf
from maskformer_fast.convert import config_from_hf, hf_to_state_dict
from tests.helpers import assert_close_verbose

transformers = pytest.importorskip("transformers")

NUM_LABELS = 10
IMAGE_SIZE = (320, 416)  # non-square, multiples of 32 (HF does not pad; we pad to 32)
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def _hf_config(backbone: str, **kwargs):
    if backbone == "resnet50":
        backbone_config = transformers.ResNetConfig(depths=[3, 4, 6, 3], out_features=STAGES)
    else:  # Swin-T
        backbone_config = transformers.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                                                  window_size=7, out_features=STAGES)
    decoder = dict(model_type="detr", num_queries=20, decoder_layers=2)
    return transformers.MaskFormerConfig(backbone_config=backbone_config, num_labels=NUM_LABELS,
                                         decoder_config=decoder, **kwargs)


@torch.no_grad()
def _perturb(hf_model: torch.nn.Module) -> None:
    """Move HF's init away from identities (BN stats 0/1, LN 1/0, zero Swin bias tables)."""
    for name, buf in hf_model.named_buffers():
        if name.endswith("running_mean"):
            buf.normal_(0.0, 0.1)
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 2.0)
    for name, param in hf_model.named_parameters():
        if param.dim() == 1 or name.endswith("relative_position_bias_table"):
            param.add_(0.1 * torch.randn_like(param))


def _targets(generator: torch.Generator):
    """Two images with 3 and 2 rectangular masks (overlapping allowed) and random labels."""
    H, W = IMAGE_SIZE
    targets = []
    for count in (3, 2):
        masks = torch.zeros(count, H, W, dtype=torch.bool)
        for k in range(count):
            y0, x0 = (int(torch.randint(0, s // 2, (1,), generator=generator)) for s in (H, W))
            h, w = (int(torch.randint(s // 8, s // 2, (1,), generator=generator)) for s in (H, W))
            masks[k, y0:y0 + h, x0:x0 + w] = True
        labels = torch.randint(0, NUM_LABELS, (count,), generator=generator)
        targets.append({"labels": labels, "masks": masks})
    return targets


@pytest.fixture(scope="module", params=["resnet50", "swin_tiny"])
def pair(request):
    """(backbone, HF outputs, HF final-layer loss terms, our outputs, our losses), same images/targets."""
    torch.manual_seed(0)
    hf = transformers.MaskFormerForInstanceSegmentation(_hf_config(request.param)).eval()
    _perturb(hf)
    ours = from_hf(hf)
    assert not ours.training
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, *IMAGE_SIZE, generator=generator)
    targets = _targets(generator)
    mask_labels = [t["masks"].float() for t in targets]
    class_labels = [t["labels"] for t in targets]
    _, skipped = hf_to_state_dict(hf)
    with torch.no_grad():
        hf_out = hf(images, mask_labels=mask_labels, class_labels=class_labels)
        # HF's per-term dict (weighted with its weight_dict: CE x1, focal x20, dice x1)
        hf_terms = hf.get_loss_dict(hf_out.masks_queries_logits, hf_out.class_queries_logits, mask_labels,
                                    class_labels, auxiliary_logits=None)
        out = ours(images)
        losses = ours.criterion(out, targets)
    return request.param, hf_out, hf_terms, out, losses, skipped


def test_logits_and_masks_match_hf(pair):
    backbone, hf_out, _, out, _, _ = pair
    assert out["pred_logits"].shape == (2, 20, NUM_LABELS + 1)
    assert out["pred_masks"].shape == (2, 20, IMAGE_SIZE[0] // 4, IMAGE_SIZE[1] // 4)
    assert_close_verbose(out["pred_logits"], hf_out.class_queries_logits, rtol=0, atol=1e-4,
                         name=f"{backbone} class logits")
    assert_close_verbose(out["pred_masks"], hf_out.masks_queries_logits, rtol=0, atol=1e-4,
                         name=f"{backbone} mask logits")


def test_final_layer_losses_match_hf(pair):
    """Like terms: our loss_ce/loss_mask/loss_dice vs HF's loss_cross_entropy/loss_mask/loss_dice."""
    backbone, hf_out, hf_terms, _, losses, _ = pair
    assert set(hf_terms) == {"loss_cross_entropy", "loss_mask", "loss_dice"}  # HF aux loss off
    assert_close_verbose(sum(hf_terms.values()), hf_out.loss, rtol=1e-6, atol=0, name="HF loss = sum of terms")
    for ours_key, hf_key in (("loss_ce", "loss_cross_entropy"), ("loss_mask", "loss_mask"),
                             ("loss_dice", "loss_dice")):
        assert_close_verbose(losses[ours_key], hf_terms[hf_key], rtol=1e-5, atol=0, name=f"{backbone} {ours_key}")


def test_only_derived_hf_tensors_are_skipped(pair):
    """Every HF tensor is used except BN step counters, Swin index tables and MaskFormerSwinModel's
    final LayerNorm (not on the path to the four features)."""
    backbone, _, _, _, _, skipped = pair
    kinds = Counter(name.rsplit(".", 1)[-1] if "layernorm" not in name else "final layernorm" for name in skipped)
    if backbone == "resnet50":
        assert kinds == {"num_batches_tracked": 1 + (3 + 4 + 6 + 3) * 3 + 4}  # stem, 3 per block, 4 shortcuts
    else:
        assert kinds == {"relative_position_index": 2 + 2 + 6 + 2, "final layernorm": 2}


def test_config_inferred_from_hf():
    cfg = config_from_hf(_hf_config("resnet50", no_object_weight=0.2, mask_weight=10.0))
    assert (cfg.backbone, cfg.num_classes, cfg.num_queries, cfg.num_decoder_layers) == ("resnet50", NUM_LABELS, 20, 2)
    assert (cfg.hidden_dim, cfg.nheads, cfg.dim_feedforward, cfg.conv_dim, cfg.mask_dim) == (256, 8, 2048, 256, 256)
    assert (cfg.no_object_weight, cfg.mask_weight, cfg.dice_weight, cfg.class_weight) == (0.2, 10.0, 1.0, 1.0)
    assert cfg.deep_supervision is False  # HF use_auxiliary_loss default
    r101 = transformers.MaskFormerConfig(
        backbone_config=transformers.ResNetConfig(depths=[3, 4, 23, 3], out_features=STAGES), num_labels=150)
    assert config_from_hf(r101).backbone == "resnet101"
    swin_b = transformers.MaskFormerConfig(backbone_config=transformers.SwinConfig(
        embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12, out_features=STAGES))
    cfg = config_from_hf(swin_b, deep_supervision=True)
    assert (cfg.backbone, cfg.window_size, cfg.deep_supervision) == ("swin_base", 12, True)


@pytest.mark.parametrize("backbone_config, message", [
    (dict(kind="resnet", depths=[2, 2, 2, 2], layer_type="basic", hidden_sizes=[64, 128, 256, 512]), "layer_type"),
    (dict(kind="resnet", depths=[3, 8, 36, 3]), "depths"),
    (dict(kind="resnet", depths=[3, 4, 6, 3], downsample_in_bottleneck=True), "downsample_in_bottleneck"),
    (dict(kind="swin", embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], use_absolute_embeddings=True),
     "use_absolute_embeddings"),
    (dict(kind="swin", embed_dim=64, depths=[2, 2, 6, 2], num_heads=[2, 4, 8, 16]), "not one of Swin-T/S/B/L"),
    (dict(kind="convnext"), "backbone type 'convnext' is not supported"),
])
def test_unsupported_hf_configs_raise(backbone_config, message):
    kind = backbone_config.pop("kind")
    make = {"resnet": transformers.ResNetConfig, "swin": transformers.SwinConfig,
            "convnext": transformers.ConvNextConfig}[kind]
    config = transformers.MaskFormerConfig(backbone_config=make(out_features=STAGES, **backbone_config))
    with pytest.raises(ValueError, match=message):
        config_from_hf(config)


def test_from_hf_rejects_other_models():
    with pytest.raises(ValueError, match="MaskFormerForInstanceSegmentation"):
        from_hf(torch.nn.Linear(2, 2))
