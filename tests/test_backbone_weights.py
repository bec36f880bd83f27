"""mf.load_backbone_weights against the source libraries' own forwards, and fine-tuning.

Each source model is built by its own library (torchvision, timm, HF transformers) with random
weights, perturbed BatchNorm statistics and norm affines, saved in its released format (the
Detectron2 ``.pkl`` through the official converters' renaming, written out below), loaded into our
backbone, and res2..res5 are compared with the source's own intermediate outputs at a non-square
size (ResNet 64x96; Swin at multiples of 32 x window so that no padding rule matters, before our
per-output norms). Then the hostile cases and ``--init-weights`` fine-tuning 150 -> 19 classes.
"""
import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import maskformer_fast as mf
from maskformer_fast.backbone import ResNetBackbone, SwinBackbone, build_backbone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEATURES = ("res2", "res3", "res4", "res5")


# ----------------------------------------------------------------------------- helpers
def perturb(model: nn.Module, seed: int) -> nn.Module:
    """Every norm's affine and running statistics away from their init (BN running stats 0/1 and
    affines 1/0 would make a wrong mapping of them invisible); relative-position tables too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.copy_(torch.randn(p.shape, generator=g))
    return model.eval()


def assert_features(ours: dict, reference, names=FEATURES):
    for name, ref in zip(names, reference):
        got = ours[name]
        assert got.shape == ref.shape, (name, got.shape, ref.shape)
        err = ((got - ref).abs().max() / ref.abs().max()).item()
        assert err < 1e-5, f"{name}: max relative error {err:.3g}"


def torchvision_features(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        out.append(x)
    return out


def d2_resnet_names(state: dict) -> dict:
    """tools/convert-torchvision-to-d2.py's renaming (facebookresearch/MaskFormer), as numpy."""
    out = {}
    for k, v in state.items():
        if "layer" not in k:
            k = "stem." + k
        for t in [1, 2, 3, 4]:
            k = k.replace(f"layer{t}", f"res{t + 1}")
        for t in [1, 2, 3]:
            k = k.replace(f"bn{t}", f"conv{t}.norm")
        k = k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[k] = v.detach().numpy()
    return out


def d2_deeplab_names(state: dict) -> dict:
    """A timm deep-stem ResNet in Detectron2 DeepLab names (R-103.pkl): stem.conv{1,2,3}(.norm)."""
    stem = {"conv1.0": "stem.conv1", "conv1.1": "stem.conv1.norm", "conv1.3": "stem.conv2",
            "conv1.4": "stem.conv2.norm", "conv1.6": "stem.conv3", "bn1": "stem.conv3.norm"}
    out = {}
    for k, v in state.items():
        prefix, _, leaf = k.rpartition(".")
        out.update({f"{stem[prefix]}.{leaf}": v.detach().numpy()} if prefix in stem else d2_resnet_names({k: v}))
    return out


def save_pkl(path, obj) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return str(path)


def timm_to_original_swin(model) -> dict:
    from timm.models.swin_transformer import SwinTransformerBlock
    """A timm Swin's state dict in the original Swin release layout: patch merging at the end of
    stage i (timm: start of stage i+1), ``head.*``, and the index / mask buffers the release has."""
    out = {}
    for k, v in model.state_dict().items():
        if ".downsample." in k:
            i = int(k.split(".")[1])
            k = k.replace(f"layers.{i}.", f"layers.{i - 1}.", 1)
        out[k.replace("head.fc.", "head.")] = v
    for name, module in model.named_modules():
        if hasattr(module, "relative_position_index"):
            out[f"{name}.relative_position_index"] = module.relative_position_index
        if isinstance(module, SwinTransformerBlock) and any(module.shift_size):
            out[f"{name}.attn_mask"] = torch.zeros(4, module.window_area, module.window_area)
    return out


def without_output_norms(backbone: SwinBackbone) -> SwinBackbone:
    for i in range(4):
        setattr(backbone, f"norm{i}", nn.Identity())
    return backbone


# ----------------------------------------------------------------------------- ResNet
@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=[50, 101])
def torchvision_resnet(request, image):
    import torchvision
    torch.manual_seed(request.param)
    model = perturb(getattr(torchvision.models, f"resnet{request.param}")(), request.param)
    with torch.no_grad():
        return request.param, model, torchvision_features(model, image)


@pytest.mark.parametrize("fmt", ["torchvision .pth", "detectron2 .pkl"])
def test_torchvision_resnet(torchvision_resnet, fmt, image, tmp_path):
    depth, source, reference = torchvision_resnet
    if fmt == "torchvision .pth":
        path = tmp_path / f"resnet{depth}.pth"
        torch.save(source.state_dict(), path)
    else:  # R-50.pkl / R-101.pkl as the model zoo has them
        path = save_pkl(tmp_path / f"R-{depth}.pkl", {"model": d2_resnet_names(source.state_dict()),
                                                      "__author__": "torchvision", "matching_heuristics": True})
    ours = ResNetBackbone(depth, frozen_bn=True).eval()
    report = mf.load_backbone_weights(ours, path)
    assert report.format.startswith("Detectron2 ResNet" if fmt.endswith("pkl") else "torchvision")
    assert sorted(report.loaded) == sorted(ours.state_dict()) and not report.initialised
    assert {k for k, why in report.skipped.items() if "classifier" in why} == (
        {"stem.fc.weight", "stem.fc.bias"} if fmt.endswith("pkl") else {"fc.weight", "fc.bias"})
    with torch.no_grad():
        assert_features(ours(image), reference)


@pytest.fixture(scope="module")
def timm_resnet50(image):
    import timm
    torch.manual_seed(1)
    source = perturb(timm.create_model("resnet50", pretrained=False), 1)
    with torch.no_grad():
        return source, source.forward_intermediates(image, intermediates_only=True)[1:]


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_timm_resnet(timm_resnet50, fmt, image, tmp_path):
    from safetensors.torch import save_file
    source, reference = timm_resnet50
    path = tmp_path / f"resnet50.{fmt}"
    save_file(source.state_dict(), path) if fmt == "safetensors" else torch.save(source.state_dict(), path)
    ours = build_backbone("resnet50", frozen_bn=False).eval()  # trainable BN loads the same statistics
    mf.load_backbone_weights(ours, path)
    with torch.no_grad():
        assert_features(ours(image), reference)


def test_detectron2_deeplab_r103(image, tmp_path):
    """R-103.pkl (the R101c stem) into the r101c backbone; the source gets the same res5 multi-grid."""
    import timm
    torch.manual_seed(2)
    source = perturb(timm.create_model("resnet101", stem_type="deep", stem_width=64), 2)
    for block, dilation in zip(source.layer4, (1, 2, 4)):
        block.conv2.dilation, block.conv2.padding = (dilation, dilation), (dilation, dilation)
    path = save_pkl(tmp_path / "R-103.pkl", {"model": d2_deeplab_names(source.state_dict())})
    ours = build_backbone("resnet101c").eval()
    report = mf.load_backbone_weights(ours, path)
    assert report.format.startswith("Detectron2 DeepLab") and sorted(report.loaded) == sorted(ours.state_dict())
    with torch.no_grad():
        assert_features(ours(image), source.forward_intermediates(image, intermediates_only=True)[1:])


@pytest.fixture(scope="module")
def hf_resnet(image, tmp_path_factory):
    from transformers import ResNetConfig, ResNetModel
    torch.manual_seed(3)
    source = perturb(ResNetModel(ResNetConfig(depths=[3, 4, 6, 3])), 3)
    folder = tmp_path_factory.mktemp("hf_resnet")
    source.save_pretrained(folder)
    with torch.no_grad():
        return source, folder, source(image, output_hidden_states=True).hidden_states[1:]


@pytest.mark.parametrize("fmt", ["save_pretrained folder", "state dict .bin"])
def test_hf_resnet(hf_resnet, fmt, image, tmp_path):
    source, folder, reference = hf_resnet
    path = folder
    if fmt == "state dict .bin":
        path = tmp_path / "pytorch_model.bin"
        torch.save({"resnet." + k: v for k, v in source.state_dict().items()}, path)  # ResNetForImageClassification
    ours = ResNetBackbone(50).eval()
    report = mf.load_backbone_weights(ours, path)
    assert report.format == "HF transformers ResNet"
    with torch.no_grad():
        assert_features(ours(image), reference)


def test_hf_sharded_folder(hf_resnet, image, tmp_path):
    """save_pretrained with a small max_shard_size writes model.safetensors.index.json + shards."""
    source, _, reference = hf_resnet
    folder = tmp_path / "sharded"
    source.save_pretrained(folder, max_shard_size="20MB")
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert (folder / "model.safetensors.index.json").is_file() and len(shards) > 1, shards
    ours = ResNetBackbone(50).eval()
    report = mf.load_backbone_weights(ours, folder)
    assert report.format == "HF transformers ResNet" and sorted(report.loaded) == sorted(ours.state_dict())
    with torch.no_grad():
        assert_features(ours(image), reference)
    # an index naming a shard outside the folder, or tensors no shard holds: one line naming the index
    index = folder / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    index.write_text(json.dumps({"weight_map": {**weight_map, "extra.weight": shards[0]}}))
    with pytest.raises(ValueError, match=r"index\.json: 1 tensors of the index are in none of its shards"):
        mf.load_backbone_weights(ours, folder)
    index.write_text(json.dumps({"weight_map": {name: "../" + shard for name, shard in weight_map.items()}}))
    with pytest.raises(ValueError, match=r"is not a file name inside"):
        mf.load_backbone_weights(ours, folder)


def test_hf_folder_config_with_other_forward_is_refused(hf_resnet, tmp_path):
    """downsample_in_bottleneck strides in the 1x1 conv: same shapes, other outputs."""
    _, folder, _ = hf_resnet
    copy = shutil.copytree(folder, tmp_path / "hf")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "downsample_in_bottleneck": True}))
    with pytest.raises(ValueError, match=r"config\.json.*downsample_in_bottleneck"):
        mf.load_backbone_weights(ResNetBackbone(50), copy)


# ----------------------------------------------------------------------------- Swin
SWIN_CASES = {  # timm name -> (our variant, window, input size: multiples of 32 x window, non-square)
    "swin_tiny_patch4_window7_224": ("swin_tiny", 7, (224, 448)),
    "swin_base_patch4_window12_384": ("swin_base", 12, (384, 768)),
    "swin_large_patch4_window12_384": ("swin_large", 12, (384, 768)),
}


def timm_swin(name: str, seed: int):
    """The source, with the official window rule (always_partition: shift windows at every size)."""
    import timm
    torch.manual_seed(seed)
    return perturb(timm.create_model(name, pretrained=False, always_partition=True, strict_img_size=False), seed)


@pytest.fixture(scope="module")
def swin_sources():
    """timm Swin name -> (source, input, its res2..res5), built once per module."""
    cache = {}

    def get(name: str):
        if name not in cache:
            source = timm_swin(name, 4)
            x = torch.randn(1, 3, *SWIN_CASES[name][2], generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                cache[name] = source, x, source.forward_intermediates(x, intermediates_only=True)
        return cache[name]
    return get


TINY_SWIN = "swin_tiny_patch4_window7_224"


@pytest.mark.parametrize("name, fmt", [
    (TINY_SWIN, "timm .safetensors"), (TINY_SWIN, "Swin release .pth"), (TINY_SWIN, "detectron2 .pkl"),
    ("swin_base_patch4_window12_384", "detectron2 .pkl"),
    pytest.param("swin_large_patch4_window12_384", "detectron2 .pkl", marks=pytest.mark.slow)])
def test_timm_and_original_swin(swin_sources, name, fmt, tmp_path):
    source, x, reference = swin_sources(name)
    variant, window, _ = SWIN_CASES[name]
    if fmt == "timm .safetensors":
        from safetensors.torch import save_file
        path = tmp_path / f"{name}.safetensors"
        save_file(source.state_dict(), path)
    elif fmt == "Swin release .pth":
        path = tmp_path / f"{name}.pth"
        torch.save({"model": timm_to_original_swin(source)}, path)
    else:  # tools/convert-pretrained-swin-model-to-d2.py: torch tensors in a plain pickle
        path = save_pkl(tmp_path / f"{name}.pkl", {"model": timm_to_original_swin(source), "__author__": "third_party",
                                                   "matching_heuristics": True})
    ours = SwinBackbone(variant, window_size=window, pretrain_img_size=224 if window == 7 else 384).eval()
    report = mf.load_backbone_weights(ours, path)
    assert report.format.startswith("Swin, timm" if fmt.startswith("timm") else "Swin, original")
    assert sorted(report.initialised) == sorted(f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    assert sorted(report.loaded + list(report.initialised)) == sorted(ours.state_dict())
    assert "final classification norm" in report.summary() and not report.resized
    with torch.no_grad():
        assert_features(without_output_norms(ours)(x), reference)


def test_hf_swin_folder(tmp_path):
    from transformers import SwinConfig, SwinModel
    torch.manual_seed(5)
    source = perturb(SwinModel(SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7)), 5)
    source.save_pretrained(tmp_path / "hf_swin")
    x = torch.randn(1, 3, 224, 448, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # the encoder's own stage outputs before patch merging, windows kept at every size
        embeddings, dims = source.embeddings(x)
        out = source.encoder(embeddings, dims, always_partition=True, output_hidden_states=True,
                             output_hidden_states_before_downsampling=True)
        reference = out.reshaped_hidden_states[1:]
    ours = SwinBackbone("swin_tiny").eval()
    report = mf.load_backbone_weights(ours, tmp_path / "hf_swin")
    assert report.format == "HF transformers Swin" and len(report.initialised) == 8
    with torch.no_grad():
        assert_features(without_output_norms(ours)(x), reference)


def test_window7_table_into_window12_is_resized_as_timm(swin_sources, tmp_path):
    from timm.layers import resize_rel_pos_bias_table
    source = swin_sources(TINY_SWIN)[0]
    torch.save(source.state_dict(), tmp_path / "swin_tiny.pth")
    ours = SwinBackbone("swin_tiny", window_size=12)
    report = mf.load_backbone_weights(ours, tmp_path / "swin_tiny.pth")
    tables = [k for k in ours.state_dict() if k.endswith("relative_position_bias_table")]
    assert sorted(report.resized) == sorted(tables) and len(tables) == 12
    assert "12 relative-position tables resized" in report.summary()
    for k in tables:
        src = source.state_dict()[k]
        want = resize_rel_pos_bias_table(src, new_window_size=(12, 12), new_bias_shape=(23 * 23, src.shape[1]))
        assert report.resized[k] == f"{(169, src.shape[1])} -> {(529, src.shape[1])}"
        torch.testing.assert_close(ours.state_dict()[k], want, rtol=0, atol=0)
    torch.testing.assert_close(ours.layers[2].blocks[3].mlp.fc1.weight, source.layers[2].blocks[3].mlp.fc1.weight)


# ----------------------------------------------------------------------------- hostile files
@pytest.fixture(scope="module")
def r50_d2(tmp_path_factory):
    """R-50.pkl names, a folder, and an R50 backbone (each refused load leaves it untouched)."""
    import torchvision
    state = torchvision.models.resnet50().state_dict()
    return d2_resnet_names(state), tmp_path_factory.mktemp("hostile"), ResNetBackbone(50)


def test_shape_mismatch_and_unknown_names_are_errors_naming_tensors(r50_d2):
    names, folder, r50 = r50_d2
    bad = dict(names, **{"res3.0.conv2.weight": names["res3.0.conv2.weight"][:, :64]})
    with pytest.raises(ValueError, match=r"wrong shape.*layer2\.0\.conv2\.weight: checkpoint \(128, 64, 3, 3\)"):
        mf.load_backbone_weights(r50, save_pkl(folder / "shape.pkl", {"model": bad}))
    extra = dict(names, **{"res2.0.conv4.extra": names["stem.conv1.weight"]})
    with pytest.raises(ValueError, match=r"no mapping.*res2\.0\.conv4\.extra"):
        mf.load_backbone_weights(r50, save_pkl(folder / "extra.pkl", {"model": extra}))
    nan = dict(names, **{"res4.1.conv1.norm.running_var": np.full_like(names["res4.1.conv1.norm.running_var"], np.nan)})
    with pytest.raises(ValueError, match=r"nan\.pkl: 1 tensors contain NaN.*layer3\.1\.bn1\.running_var"):
        mf.load_backbone_weights(r50, save_pkl(folder / "nan.pkl", {"model": nan}))
    missing = {k: v for k, v in names.items() if not k.startswith("res5.2.")}
    with pytest.raises(ValueError, match=r"missing from the checkpoint.*layer4\.2\.bn1\.bias"):
        mf.load_backbone_weights(r50, save_pkl(folder / "missing.pkl", {"model": missing}))


def test_wrong_files_are_refused(r50_d2):
    names, folder, r50 = r50_d2
    pkl = save_pkl(folder / "R-50.pkl", {"model": names})
    with pytest.raises(ValueError, match=r"R-50\.pkl holds a Detectron2 ResNet.*DeepLab stem \(R-103\.pkl\)"):
        mf.load_backbone_weights(build_backbone("resnet101c"), pkl)
    with pytest.raises(ValueError, match=r"R-50\.pkl holds a Detectron2 ResNet.*SwinBackbone"):
        mf.load_backbone_weights(SwinBackbone("swin_tiny"), pkl)
    msra = {"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "res_conv1_bn_s": np.ones(64, np.float32)}
    with pytest.raises(ValueError, match=r"MSRA.*torchvision/R-50\.pkl"):
        mf.load_backbone_weights(r50, save_pkl(folder / "msra.pkl", {"model": msra}))
    (folder / "notes.txt").write_text("not weights\n")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        mf.load_backbone_weights(r50, folder / "notes.txt")
    whole = mf.build_model(mf.get_config(num_decoder_layers=1, hidden_dim=32, conv_dim=32, mask_dim=32,
                                         dim_feedforward=32, nheads=2))
    torch.save(whole.state_dict(), folder / "model_final.pth")
    with pytest.raises(ValueError, match=r"whole MaskFormer checkpoint.*--init-weights"):
        mf.load_backbone_weights(whole, folder / "model_final.pth")
    with pytest.raises(FileNotFoundError, match="nowhere.pkl"):
        mf.load_backbone_weights(whole, folder / "nowhere.pkl")
    with pytest.raises(ValueError, match="expects a MaskFormer"):
        mf.load_backbone_weights(nn.Linear(2, 2), pkl)


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))
    with pytest.raises(ValueError, match=r"evil\.pkl.*posix\.system|evil\.pkl.*os\.system"):
        mf.load_backbone_weights(ResNetBackbone(50), save_pkl(tmp_path / "evil.pkl", {"model": {"w": Evil()}}))


# ----------------------------------------------------------------------------- fine-tuning
TINY = dict(num_decoder_layers=2, hidden_dim=32, conv_dim=32, mask_dim=32, dim_feedforward=64, num_queries=10,
            nheads=2, frozen_bn=False)


def test_150_class_checkpoint_fine_tunes_into_19_classes(tmp_path):
    torch.manual_seed(0)
    ade = perturb(mf.build_model(mf.get_config("maskformer_r50_ade20k", **TINY)), 7)
    cfg = mf.get_config("maskformer_r50_cityscapes", **TINY)
    path = tmp_path / "model_0001000.pth"
    torch.save({"model": ade.state_dict(), "config": dataclasses.asdict(ade.cfg), "iter": 1000}, path)
    torch.manual_seed(1)
    fresh = mf.build_model(cfg)
    torch.manual_seed(1)
    city = mf.build_model(cfg)
    report = mf.init_from_checkpoint(city, str(path))
    head = ["predictor.class_embed.weight", "predictor.class_embed.bias", "criterion.empty_weight"]
    assert report.reinitialised == head and report.checkpoint_classes == 150 and report.model_classes == 19
    assert "class head re-initialised for 19 classes (checkpoint: 150)" in report.summary()
    source, got, init = ade.state_dict(), city.state_dict(), fresh.state_dict()
    assert sorted(report.loaded) == sorted(k for k in got if k not in head)
    for k in report.loaded:
        torch.testing.assert_close(got[k], source[k], rtol=0, atol=0, msg=k)
    for k in head:
        torch.testing.assert_close(got[k], init[k], rtol=0, atol=0, msg=k)
    assert got["predictor.class_embed.weight"].shape == (20, 32)
    assert got["criterion.empty_weight"].tolist() == [1.0] * 19 + [pytest.approx(0.1)]

    same = mf.build_model(mf.get_config("maskformer_r50_ade20k", **TINY))
    report = mf.init_from_checkpoint(same, str(path))  # same classes: everything, head included
    assert not report.reinitialised
    torch.testing.assert_close(same.state_dict()["predictor.class_embed.weight"], source["predictor.class_embed.weight"])
    wide = mf.build_model(mf.get_config("maskformer_r50_cityscapes", **dict(TINY, hidden_dim=64)))
    with pytest.raises(ValueError, match=r"wrong shape.*predictor\.query_embed\.weight"):
        mf.init_from_checkpoint(wide, str(path))


@pytest.mark.parametrize("source", ["official .pkl", "HF folder"])
def test_official_and_hf_checkpoints_fine_tune_into_19_classes(source, tmp_path):
    """The other whole-model formats go through their converters, then the same head rule."""
    from maskformer_fast.convert import hf_to_state_dict, official_to_state_dict
    if source == "official .pkl":
        from tests.test_convert import d2_resnet_keys, head_keys, random_checkpoint
        official = random_checkpoint({**d2_resnet_keys(50, False), **head_keys([256, 512, 1024, 2048], 150, 1)})
        path = save_pkl(tmp_path / "model_final.pkl", {"model": {k: v.numpy() for k, v in official.items()}})
        expected = official_to_state_dict(official, "resnet50")[0]
        cfg = mf.get_config("maskformer_r50_cityscapes", num_decoder_layers=1)
    else:
        import transformers
        hf = transformers.MaskFormerForInstanceSegmentation(transformers.MaskFormerConfig(
            backbone_config=transformers.ResNetConfig(depths=[3, 4, 6, 3], out_features=["stage1", "stage2", "stage3",
                                                                                         "stage4"]),
            num_labels=150, decoder_config=dict(model_type="detr", num_queries=20, decoder_layers=1)))
        hf.save_pretrained(tmp_path / "hf_maskformer")
        path, expected = str(tmp_path / "hf_maskformer"), hf_to_state_dict(hf)[0]
        cfg = mf.convert.config_from_hf(hf.config, num_classes=19)
    model = mf.build_model(cfg)
    report = mf.init_from_checkpoint(model, path)
    assert report.checkpoint_classes == 150 and len(report.reinitialised) == 3
    got = model.state_dict()
    assert set(report.loaded) == {k for k in expected if not k.startswith(("predictor.class_embed", "criterion."))}
    for k in report.loaded:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0, msg=k)
    assert got["predictor.class_embed.bias"].shape == (20,)
    if source == "HF folder":  # --weights (predict, --eval-only) reads the same folder, all 150 classes
        same = mf.load_weights(mf.build_model(mf.convert.config_from_hf(hf.config)), path).state_dict()
        torch.testing.assert_close(same["predictor.class_embed.weight"], expected["predictor.class_embed.weight"])


def train_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    env.pop("TRITON_INTERPRET", None)
    return env


def test_train_py_init_weights_and_backbone_weights(tmp_path, capsys):
    from train.make_synthetic import make_synthetic
    data = tmp_path / "city"
    make_synthetic("cityscapes", str(data), num_images=2, size=32, seed=0)
    torch.manual_seed(0)
    ade = mf.build_model(mf.get_config("maskformer_r50_ade20k", **TINY))
    torch.save(ade.state_dict(), tmp_path / "ade_tiny.pth")
    overrides = [f"{k}={v}" for k, v in TINY.items()] + ["test_short_side=32", "test_max_size=64"]
    cmd = [sys.executable, os.path.join(REPO, "train", "train.py"), "--preset", "maskformer_r50_cityscapes",
           "--data-root", str(data), "--max-iter", "2", "--batch-size", "2", "--crop", "32", "--no-progress",
           "--num-workers", "0", "--engine", "eager", "--device", "cpu", *overrides]
    run = subprocess.run(cmd + ["--output", str(tmp_path / "ft"), "--init-weights", str(tmp_path / "ade_tiny.pth")],
                         capture_output=True, text=True, env=train_env(), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "class head re-initialised for 19 classes (checkpoint: 150)" in run.stdout
    assert "random backbone" not in run.stderr
    saved = mf.read_weights(str(tmp_path / "ft" / "model_0000002.pth"))
    assert saved.state["predictor.class_embed.weight"].shape == (20, 32)

    from train.train import main  # a refused file: one line, exit 2 (in this process: no second start-up)
    with pytest.raises(SystemExit) as stop:
        main(cmd[2:] + ["--output", str(tmp_path / "bad"), "--backbone-weights", str(tmp_path / "ade_tiny.pth")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.strip().splitlines()[-1].startswith("train.py: error: ")
    assert "whole MaskFormer checkpoint" in err and "Traceback" not in err


def test_train_py_says_what_it_starts_from(tmp_path, capsys):
    """load_start_weights: the line it prints, the random-backbone warning, --resume winning."""
    import types
    from train.train import load_start_weights
    import torchvision
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "resnet50.pth")
    model = mf.build_model(mf.get_config("maskformer_r50_ade20k", **TINY))

    def job(**args):
        defaults = dict(init_weights=None, backbone_weights=None, resume=False, data_root="datasets/ADE", output="o")
        return types.SimpleNamespace(args=types.SimpleNamespace(**{**defaults, **args}), cfg=model.cfg, model=model,
                                     d=types.SimpleNamespace(main=True), log=print)
    load_start_weights(job())
    out = capsys.readouterr()
    assert "weights: random initialisation" in out.out
    assert out.err.count("\n") == 1 and "warning: maskformer_r50_ade20k trains from a random backbone" in out.err
    assert "detectron2://ImageNetPretrained/torchvision/R-50.pkl" in out.err
    load_start_weights(job(data_root=None))  # synthetic data: no warning
    assert capsys.readouterr().err == ""
    load_start_weights(job(backbone_weights=str(tmp_path / "resnet50.pth")))
    out = capsys.readouterr()
    assert "weights: backbone weights" in out.out and "265 tensors loaded" in out.out and out.err == ""
    before = model.backbone.conv1.weight.clone()
    load_start_weights(job(backbone_weights="missing.pth", resume=True))  # the checkpoint wins: nothing read
    assert "--resume takes the weights from the checkpoint" in capsys.readouterr().out
    assert torch.equal(model.backbone.conv1.weight, before)


def test_presets_record_the_official_pretrained_weights():
    """MODEL.WEIGHTS of the official configs (configs/*/maskformer_*.yaml), by backbone."""
    expected = {"resnet50": "detectron2://ImageNetPretrained/torchvision/R-50.pkl", "resnet101": "R-101.pkl",
                "resnet101c": "detectron2://DeepLab/R-103.pkl", "swin_tiny": "swin_tiny_patch4_window7_224.pkl",
                "swin_small": "swin_small_patch4_window7_224.pkl",
                "swin_base": "swin_base_patch4_window12_384_22k.pkl",
                "swin_large": "swin_large_patch4_window12_384_22k.pkl"}
    for name in mf.list_presets():
        cfg = mf.get_config(name)
        assert cfg.pretrained_backbone == expected[cfg.backbone], name
