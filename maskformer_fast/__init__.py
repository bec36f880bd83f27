"""maskformer-fast: MaskFormer (Cheng et al., NeurIPS 2021) with fused kernels.

Public API::

    import maskformer_fast as mf
    cfg = mf.get_config("maskformer_r50_ade20k", num_decoder_layers=2)
    model = mf.build_model(cfg)
    out = model(images)
    losses = model.criterion(out, targets)
    sem = mf.semantic_inference(out, image_sizes, output_sizes)

Names resolve lazily so that ``import maskformer_fast`` stays cheap (timm, scipy and Triton
are imported by the modules that need them, when first used).
"""
import importlib

__version__ = "0.1.0"

_API = {
    "MaskFormerConfig": "config",
    "get_config": "config",
    "list_presets": "config",
    "build_model": "model",
    "optimize": "fast",
    "MaskFormer": "model",
    "from_hf": "convert",
    "load_official_checkpoint": "convert",
    "load_backbone_weights": "backbone_weights",
    "init_from_checkpoint": "weights",
    "semantic_inference": "inference",
    "semantic_inference_tta": "inference",
    "panoptic_inference": "inference",
    "instance_inference": "inference",
    "PanopticMetadata": "inference",
    "Predictor": "predictor",
    "read_image": "preprocessing",
    "read_weights": "weights",
    "load_weights": "weights",
    "dataset_metadata": "visualize",
    "DatasetSpec": "dataset_specs",
    "get_dataset_spec": "dataset_specs",
    "DatasetMetadata": "visualize",
    "draw_semantic_overlay": "visualize",
    "draw_panoptic_overlay": "visualize",
    "draw_instance_overlay": "visualize",
    "export_onnx": "onnx_export",  # needs the [onnx] extra when called, not on import
    "OnnxModel": "onnx_export",
}
_SUBMODULES = ("ops", "matching", "evaluation", "reference", "kernels", "criterion", "inference",
               "config", "model", "fast", "convert", "backbone_weights", "predict", "parity", "predictor", "preprocessing",
               "weights", "visualize", "onnx_export", "dataset_specs")

__all__ = sorted(_API) + list(_SUBMODULES)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'maskformer_fast' has no attribute {name!r}")


def __dir__():
    return __all__
