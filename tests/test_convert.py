"""load_official_checkpoint: official (Detectron2) MaskFormer checkpoints -> our model.

Nothing can be downloaded, so the checkpoints are written here from the official code's structure:
the key names and shapes below are enumerated from Detectron2's ResNet (BasicStem / DeepLabStem,
BottleneckBlock with ``shortcut``), MaskFormer's D2SwinTransformer, BasePixelDecoder /
TransformerEncoderPixelDecoder and TransformerPredictor — not from our model — filled with random
values, saved as ``.pth`` (torch.save) and ``.pkl`` (pickled numpy, model-zoo format), loaded, and
checked by value.
"""
import os
import pickle
from collections import Counter
from typing import Dict, Sequence, Tuple

import pytest
import torch

import maskformer_fast as mf
from maskformer_fast.convert import load_official_checkpoint

Shape = Tuple[int, ...]
BN_FIELDS = ("weight", "bias", "running_mean", "running_var")  # D2 FrozenBatchNorm2d state


# ------------------------------------------------------------------ official key enumerations
def _conv_norm(keys: Dict[str, Shape], prefix: str, out_c: int, in_c: int, k: int, norm: str = "bn") -> None:
    """Detectron2 Conv2d(bias=False) with a norm attribute: prefix.weight, prefix.norm.*."""
    keys[f"{prefix}.weight"] = (out_c, in_c, k, k)
    for field in (BN_FIELDS if norm == "bn" else ("weight", "bias")):
        keys[f"{prefix}.norm.{field}"] = (out_c,)


def d2_resnet_keys(depth: int, deeplab_stem: bool) -> Dict[str, Shape]:
    """build_resnet_backbone / build_resnet_deeplab_backbone, STRIDE_IN_1X1 False, FrozenBN."""
    keys: Dict[str, Shape] = {}
    if deeplab_stem:  # DeepLabStem(out_channels=128): 3x3 convs 3->64 (s2), 64->64, 64->128
        _conv_norm(keys, "backbone.stem.conv1", 64, 3, 3)
        _conv_norm(keys, "backbone.stem.conv2", 64, 64, 3)
        _conv_norm(keys, "backbone.stem.conv3", 128, 64, 3)
        in_c = 128
    else:  # BasicStem: 7x7 conv 3->64
        _conv_norm(keys, "backbone.stem.conv1", 64, 3, 7)
        in_c = 64
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    out_c, bottleneck = 256, 64
    for stage, count in zip(range(2, 6), blocks):
        for b in range(count):
            p = f"backbone.res{stage}.{b}"
            block_in = in_c if b == 0 else out_c
            if block_in != out_c:
                _conv_norm(keys, f"{p}.shortcut", out_c, block_in, 1)
            _conv_norm(keys, f"{p}.conv1", bottleneck, block_in, 1)
            _conv_norm(keys, f"{p}.conv2", bottleneck, bottleneck, 3)
            _conv_norm(keys, f"{p}.conv3", out_c, bottleneck, 1)
        in_c, out_c, bottleneck = out_c, out_c * 2, bottleneck * 2
    return keys


def d2_swin_keys(embed_dim: int, depths: Sequence[int], heads: Sequence[int], window: int) -> Dict[str, Shape]:
    """D2SwinTransformer (patch_norm=True, ape=False, out_indices 0..3 with norm{i})."""
    keys: Dict[str, Shape] = {"backbone.patch_embed.proj.weight": (embed_dim, 3, 4, 4),
                              "backbone.patch_embed.proj.bias": (embed_dim,),
                              "backbone.patch_embed.norm.weight": (embed_dim,),
                              "backbone.patch_embed.norm.bias": (embed_dim,)}
    for i, (depth, h) in enumerate(zip(depths, heads)):
        dim = embed_dim * 2 ** i
        for j in range(depth):
            p = f"backbone.layers.{i}.blocks.{j}"
            keys.update({f"{p}.norm1.weight": (dim,), f"{p}.norm1.bias": (dim,),
                         f"{p}.attn.relative_position_bias_table": ((2 * window - 1) ** 2, h),
                         f"{p}.attn.relative_position_index": (window * window, window * window),
                         f"{p}.attn.qkv.weight": (3 * dim, dim), f"{p}.attn.qkv.bias": (3 * dim,),
                         f"{p}.attn.proj.weight": (dim, dim), f"{p}.attn.proj.bias": (dim,),
                         f"{p}.norm2.weight": (dim,), f"{p}.norm2.bias": (dim,),
                         f"{p}.mlp.fc1.weight": (4 * dim, dim), f"{p}.mlp.fc1.bias": (4 * dim,),
                         f"{p}.mlp.fc2.weight": (dim, 4 * dim), f"{p}.mlp.fc2.bias": (dim,)})
        if i < len(depths) - 1:  # PatchMerging at the END of stages 0..2
            keys.update({f"backbone.layers.{i}.downsample.reduction.weight": (2 * dim, 4 * dim),
                         f"backbone.layers.{i}.downsample.norm.weight": (4 * dim,),
                         f"backbone.layers.{i}.downsample.norm.bias": (4 * dim,)})
        keys.update({f"backbone.norm{i}.weight": (dim,), f"backbone.norm{i}.bias": (dim,)})
    return keys


def _attention(keys: Dict[str, Shape], p: str, d: int = 256) -> None:
    keys.update({f"{p}.in_proj_weight": (3 * d, d), f"{p}.in_proj_bias": (3 * d,),
                 f"{p}.out_proj.weight": (d, d), f"{p}.out_proj.bias": (d,)})


def head_keys(in_channels: Sequence[int], num_classes: int, dec_layers: int, enc_layers: int = 0,
              pixel_decoder_prefix: bool = True) -> Dict[str, Shape]:
    """MaskFormerHead (GN pixel decoder, conv_dim = mask_dim = 256) + TransformerPredictor + criterion."""
    keys: Dict[str, Shape] = {}
    pd = "sem_seg_head.pixel_decoder" if pixel_decoder_prefix else "sem_seg_head"
    for idx, ch in enumerate(in_channels[:-1]):
        _conv_norm(keys, f"{pd}.adapter_{idx + 1}", 256, ch, 1, norm="gn")
        _conv_norm(keys, f"{pd}.layer_{idx + 1}", 256, 256, 3, norm="gn")
    _conv_norm(keys, f"{pd}.layer_4", 256, 256 if enc_layers else in_channels[-1], 3, norm="gn")
    keys.update({f"{pd}.mask_features.weight": (256, 256, 3, 3), f"{pd}.mask_features.bias": (256,)})
    if enc_layers:  # TransformerEncoderPixelDecoder
        keys.update({f"{pd}.input_proj.weight": (256, in_channels[-1], 1, 1), f"{pd}.input_proj.bias": (256,)})
        for i in range(enc_layers):
            p = f"{pd}.transformer.encoder.layers.{i}"
            _attention(keys, f"{p}.self_attn")
            keys.update({f"{p}.linear1.weight": (2048, 256), f"{p}.linear1.bias": (2048,),
                         f"{p}.linear2.weight": (256, 2048), f"{p}.linear2.bias": (256,)})
            for n in (1, 2):
                keys.update({f"{p}.norm{n}.weight": (256,), f"{p}.norm{n}.bias": (256,)})
    pr = "sem_seg_head.predictor"
    keys[f"{pr}.query_embed.weight"] = (100, 256)
    transformer_in = 256 if enc_layers else in_channels[-1]
    if transformer_in != 256:
        keys.update({f"{pr}.input_proj.weight": (256, transformer_in, 1, 1), f"{pr}.input_proj.bias": (256,)})
    for i in range(dec_layers):
        p = f"{pr}.transformer.decoder.layers.{i}"
        _attention(keys, f"{p}.self_attn")
        _attention(keys, f"{p}.multihead_attn")
        keys.update({f"{p}.linear1.weight": (2048, 256), f"{p}.linear1.bias": (2048,),
                     f"{p}.linear2.weight": (256, 2048), f"{p}.linear2.bias": (256,)})
        for n in (1, 2, 3):
            keys.update({f"{p}.norm{n}.weight": (256,), f"{p}.norm{n}.bias": (256,)})
    keys.update({f"{pr}.transformer.decoder.norm.weight": (256,), f"{pr}.transformer.decoder.norm.bias": (256,),
                 f"{pr}.class_embed.weight": (num_classes + 1, 256), f"{pr}.class_embed.bias": (num_classes + 1,)})
    for i in range(3):
        keys.update({f"{pr}.mask_embed.layers.{i}.weight": (256, 256), f"{pr}.mask_embed.layers.{i}.bias": (256,)})
    keys["criterion.empty_weight"] = (num_classes + 1,)
    return keys


def random_checkpoint(keys: Dict[str, Shape], seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randint(0, 100, s, generator=g) if k.endswith("relative_position_index")
                else torch.randn(s, generator=g)) for k, s in keys.items()}


def save_pth(path, state: Dict[str, torch.Tensor]):
    torch.save({"model": state, "iteration": 159999}, path)  # Detectron2 Checkpointer layout
    return path


def save_pkl(path, state: Dict[str, torch.Tensor]):
    with open(path, "wb") as f:  # Detectron2 model-zoo layout
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test"}, f)
    return path


# ------------------------------------------------------------------ checks
def fingerprints(tensors) -> Counter:
    """Multiset of (shape, exact sum, exact sum of squares): random tensors never collide."""
    return Counter((tuple(t.shape), t.double().sum().item(), t.double().square().sum().item()) for t in tensors)


def assert_loaded(model, ckpt: Dict[str, torch.Tensor], expected_pairs: Dict[str, str]) -> None:
    """Every tensor of ours holds exactly one checkpoint tensor (Swin qkv/decoder in_proj are
    already fused officially), and the named pairs (ours -> official) agree by value."""
    own = model.state_dict()
    used = {k: v for k, v in ckpt.items() if not k.endswith("relative_position_index")}
    assert fingerprints(own.values()) == fingerprints(used.values())
    for ours, official in expected_pairs.items():
        assert torch.equal(own[ours], ckpt[official].to(own[ours].dtype)), f"{ours} != {official}"


RESNET_PAIRS = {
    "backbone.layer1.0.downsample.0.weight": "backbone.res2.0.shortcut.weight",
    "backbone.layer1.0.downsample.1.running_var": "backbone.res2.0.shortcut.norm.running_var",
    "backbone.layer3.5.conv2.weight": "backbone.res4.5.conv2.weight",
    "backbone.layer3.5.bn2.running_mean": "backbone.res4.5.conv2.norm.running_mean",
    "backbone.layer4.2.bn3.bias": "backbone.res5.2.conv3.norm.bias",
    "predictor.transformer.decoder.layers.1.multihead_attn.in_proj_weight":
        "sem_seg_head.predictor.transformer.decoder.layers.1.multihead_attn.in_proj_weight",
    "predictor.transformer.decoder.layers.0.norm3.weight":
        "sem_seg_head.predictor.transformer.decoder.layers.0.norm3.weight",
    "predictor.input_proj.weight": "sem_seg_head.predictor.input_proj.weight",
    "predictor.mask_embed.layers.2.bias": "sem_seg_head.predictor.mask_embed.layers.2.bias",
    "criterion.empty_weight": "criterion.empty_weight",
}


@pytest.fixture(scope="module")
def r50_model():
    return mf.build_model(mf.get_config("maskformer_r50_ade20k", num_decoder_layers=2))


@pytest.fixture(scope="module")
def r50_ckpt():
    return random_checkpoint({**d2_resnet_keys(50, deeplab_stem=False),
                              **head_keys([256, 512, 1024, 2048], num_classes=150, dec_layers=2)})


@pytest.mark.parametrize("fmt", ["pth", "pkl"])
def test_r50_official_checkpoint_loads_every_tensor(r50_model, r50_ckpt, tmp_path, fmt):
    path = (save_pth if fmt == "pth" else save_pkl)(tmp_path / f"model_final.{fmt}", r50_ckpt)
    assert load_official_checkpoint(r50_model, path) is r50_model
    pairs = dict(RESNET_PAIRS, **{"backbone.conv1.weight": "backbone.stem.conv1.weight",
                                  "backbone.bn1.weight": "backbone.stem.conv1.norm.weight",
                                  "pixel_decoder.adapter_3.weight": "sem_seg_head.pixel_decoder.adapter_3.weight",
                                  "pixel_decoder.layer_4.norm.bias": "sem_seg_head.pixel_decoder.layer_4.norm.bias"})
    assert_loaded(r50_model, r50_ckpt, pairs)


def test_released_keys_without_pixel_decoder_level(r50_model, tmp_path):
    """Released model-zoo files name the pixel decoder sem_seg_head.adapter_1 ... (MaskFormerHead v1)."""
    ckpt = random_checkpoint({**d2_resnet_keys(50, deeplab_stem=False),
                              **head_keys([256, 512, 1024, 2048], 150, 2, pixel_decoder_prefix=False)}, seed=1)
    assert "sem_seg_head.adapter_1.weight" in ckpt
    load_official_checkpoint(r50_model, save_pkl(tmp_path / "released.pkl", ckpt))
    assert_loaded(r50_model, ckpt, {"pixel_decoder.adapter_1.weight": "sem_seg_head.adapter_1.weight",
                                    "pixel_decoder.mask_features.bias": "sem_seg_head.mask_features.bias",
                                    "pixel_decoder.layer_2.norm.weight": "sem_seg_head.layer_2.norm.weight"})


def test_r101c_deeplab_stem(tmp_path):
    model = mf.build_model(mf.get_config("maskformer_r101c_ade20k", num_decoder_layers=1))
    ckpt = random_checkpoint({**d2_resnet_keys(101, deeplab_stem=True),
                              **head_keys([256, 512, 1024, 2048], 150, 1)}, seed=2)
    load_official_checkpoint(model, save_pth(tmp_path / "r101c.pth", ckpt))
    assert_loaded(model, ckpt, {
        "backbone.conv1.0.weight": "backbone.stem.conv1.weight",
        "backbone.conv1.1.running_var": "backbone.stem.conv1.norm.running_var",
        "backbone.conv1.3.weight": "backbone.stem.conv2.weight",
        "backbone.conv1.4.bias": "backbone.stem.conv2.norm.bias",
        "backbone.conv1.6.weight": "backbone.stem.conv3.weight",
        "backbone.bn1.weight": "backbone.stem.conv3.norm.weight",
        "backbone.layer3.22.conv1.weight": "backbone.res4.22.conv1.weight",
        "backbone.layer1.0.downsample.0.weight": "backbone.res2.0.shortcut.weight",
    })


def test_swin_tiny_official_checkpoint(tmp_path):
    model = mf.build_model(mf.get_config("maskformer_swin_t_ade20k", num_decoder_layers=1))
    ckpt = random_checkpoint({**d2_swin_keys(96, (2, 2, 6, 2), (3, 6, 12, 24), window=7),
                              **head_keys([96, 192, 384, 768], 150, 1)}, seed=3)
    load_official_checkpoint(model, save_pkl(tmp_path / "swin_t.pkl", ckpt))
    assert_loaded(model, ckpt, {
        "backbone.patch_embed.proj.weight": "backbone.patch_embed.proj.weight",
        "backbone.layers.2.blocks.5.attn.qkv.weight": "backbone.layers.2.blocks.5.attn.qkv.weight",
        "backbone.layers.3.blocks.1.attn.relative_position_bias_table":
            "backbone.layers.3.blocks.1.attn.relative_position_bias_table",
        # patch merging: end of official stage i == start of timm stage i+1
        "backbone.layers.1.downsample.reduction.weight": "backbone.layers.0.downsample.reduction.weight",
        "backbone.layers.3.downsample.norm.bias": "backbone.layers.2.downsample.norm.bias",
        "backbone.norm3.weight": "backbone.norm3.weight",
        "pixel_decoder.layer_4.weight": "sem_seg_head.pixel_decoder.layer_4.weight",
    })


def test_coco_r50_6enc_pixel_decoder(tmp_path):
    model = mf.build_model(mf.get_config("maskformer_r50_coco_panoptic", num_decoder_layers=1,
                                         pixel_decoder_encoder_layers=2))
    ckpt = random_checkpoint({**d2_resnet_keys(50, deeplab_stem=False),
                              **head_keys([256, 512, 1024, 2048], 133, 1, enc_layers=2)}, seed=4)
    load_official_checkpoint(model, save_pth(tmp_path / "coco.pth", ckpt))
    enc = "sem_seg_head.pixel_decoder.transformer.encoder.layers.1"
    assert_loaded(model, ckpt, {
        "pixel_decoder.input_proj.weight": "sem_seg_head.pixel_decoder.input_proj.weight",
        "pixel_decoder.transformer.encoder.layers.1.self_attn.in_proj_weight": f"{enc}.self_attn.in_proj_weight",
        "pixel_decoder.transformer.encoder.layers.1.norm2.bias": f"{enc}.norm2.bias",
    })


# ------------------------------------------------------------------ errors
def test_missing_file_names_the_path(r50_model, tmp_path):
    path = tmp_path / "nowhere" / "model_final_abc.pkl"
    with pytest.raises(FileNotFoundError, match="model_final_abc.pkl"):
        load_official_checkpoint(r50_model, path)


def test_other_class_count_names_the_class_head(r50_model, r50_ckpt, tmp_path):
    """A checkpoint for 171 classes (COCO-Stuff) into a 150-class model: the class-head tensors and
    both counts are named."""
    ckpt = dict(r50_ckpt)
    ckpt["sem_seg_head.predictor.class_embed.weight"] = torch.randn(172, 256)
    ckpt["sem_seg_head.predictor.class_embed.bias"] = torch.randn(172)
    ckpt["criterion.empty_weight"] = torch.ones(172)
    with pytest.raises(ValueError, match=r"is for 171 classes \(predictor\.class_embed\.weight \(172, 256\), "
                                         r"predictor\.class_embed\.bias \(172,\), criterion\.empty_weight \(172,\)\) "
                                         r"but the model has 150 \(num_classes=150\)"):
        load_official_checkpoint(r50_model, save_pth(tmp_path / "stuff.pth", ckpt))


def test_wrong_shape_is_reported(r50_model, r50_ckpt, tmp_path):
    ckpt = dict(r50_ckpt)
    ckpt["sem_seg_head.predictor.mask_embed.layers.0.weight"] = torch.randn(256, 128)
    with pytest.raises(ValueError, match=r"wrong shape.*predictor\.mask_embed\.layers\.0\.weight: checkpoint "
                                         r"\(256, 128\) vs model \(256, 256\)"):
        load_official_checkpoint(r50_model, save_pth(tmp_path / "odd.pth", ckpt))


def test_empty_weight_is_optional(r50_model, r50_ckpt, tmp_path):
    """Files converted for inference drop criterion.empty_weight, a constant of the config: they
    load, and the model keeps its own (no_object_weight 0.1); a file with it loads it."""
    ckpt = {k: v for k, v in r50_ckpt.items() if k != "criterion.empty_weight"}
    assert len(ckpt) == len(r50_ckpt) - 1
    expected = torch.ones(151)
    expected[-1] = 0.1
    r50_model.criterion.empty_weight.copy_(expected)  # the module-wide model may hold a loaded one
    model = load_official_checkpoint(r50_model, save_pth(tmp_path / "inference.pth", ckpt))
    assert torch.equal(model.criterion.empty_weight, expected)
    torch.testing.assert_close(model.predictor.class_embed.bias, ckpt["sem_seg_head.predictor.class_embed.bias"])
    with_it = dict(r50_ckpt, **{"criterion.empty_weight": torch.full((151,), 0.5)})
    model = load_official_checkpoint(r50_model, save_pth(tmp_path / "train.pth", with_it))
    assert torch.equal(model.criterion.empty_weight, torch.full((151,), 0.5))


def test_missing_and_unknown_tensors(r50_model, r50_ckpt, tmp_path):
    ckpt = dict(r50_ckpt)
    del ckpt["backbone.res3.2.conv2.weight"]
    path = save_pth(tmp_path / "partial.pth", ckpt)
    with pytest.raises(ValueError, match=r"1 model tensors missing.*backbone\.layer2\.2\.conv2\.weight"):
        load_official_checkpoint(r50_model, path)
    with pytest.warns(UserWarning, match=r"backbone\.layer2\.2\.conv2\.weight"):
        load_official_checkpoint(r50_model, path, strict=False)
    assert torch.equal(r50_model.state_dict()["backbone.layer2.1.conv2.weight"], ckpt["backbone.res3.1.conv2.weight"])

    ckpt = dict(r50_ckpt, **{"backbone.res6.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"no mapping.*backbone\.res6\.0\.conv1\.weight"):
        load_official_checkpoint(r50_model, save_pth(tmp_path / "extra.pth", ckpt))


def test_non_finite_weights_are_refused(r50_model, r50_ckpt, tmp_path):
    ckpt = dict(r50_ckpt)
    ckpt["sem_seg_head.predictor.query_embed.weight"] = torch.full((100, 256), float("nan"))
    with pytest.raises(ValueError, match=r"NaN or infinite.*predictor\.query_embed\.weight"):
        load_official_checkpoint(r50_model, save_pkl(tmp_path / "nan.pkl", ckpt))


def test_pickle_with_foreign_objects_is_refused(r50_model, tmp_path):
    path = tmp_path / "odd.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": Counter(a=1)}, f)
    with pytest.raises(ValueError, match="collections.Counter"):
        load_official_checkpoint(r50_model, path)


def test_swin_checkpoint_into_resnet_model_is_refused(r50_model, tmp_path):
    ckpt = random_checkpoint(d2_swin_keys(96, (2, 2, 6, 2), (3, 6, 12, 24), window=7), seed=5)
    with pytest.raises(ValueError, match=r"no mapping.*backbone\.layers\.0\.blocks"):
        load_official_checkpoint(r50_model, save_pth(tmp_path / "swin.pth", ckpt))


def test_fuzzed_and_hostile_checkpoints_give_one_clear_value_error(tmp_path):
    import random
    import numpy as np
    from maskformer_fast.convert import read_checkpoint
    base = pickle.dumps({"model": {"a.weight": np.ones((3, 4), np.float32), "b": np.zeros(5)}}, protocol=4)
    rng = random.Random(0)
    path = tmp_path / "fuzz.pkl"
    for _ in range(300):  # unpatched, about 1 in 10 of these escaped as MemoryError/OverflowError/TypeError/...
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            read_checkpoint(str(path))
        except ValueError as e:
            assert "fuzz.pkl" in str(e)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pth.*not a complete torch file"):
        read_checkpoint(str(tmp_path / "empty.pth"))

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))
    torch.save({"model": {"w": Evil()}}, tmp_path / "evil.pth")
    with pytest.raises(ValueError) as e:
        read_checkpoint(str(tmp_path / "evil.pth"))
    assert "evil.pth" in str(e.value) and "weights_only=False" not in str(e.value).replace(" ", "")
