"""ONNX export of a MaskFormer, and an onnxruntime runner that answers like the model.

    path = mf.export_onnx(model, "maskformer.onnx")          # dynamic batch, height and width
    runner = mf.OnnxModel(path, cfg)                           # onnxruntime, CPU (or CUDA)
    out = runner(images)   # {"pred_logits", "pred_masks", "input_size", "padded_size"}, as model(images)

The graph is the whole eval-mode forward, final decoder layer only: the padding to
``size_divisibility``, backbone, pixel decoder and transformer predictor, with the hot ops
forced to their eager references (the Triton kernels are not exportable). It is traced by
``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript): the pad amounts
``(d - H % d) % d``, Swin's window padding and the convolutions' ceil arithmetic stay symbolic,
so one dynamic export gives the eager model's mask grid at every size (see NOTES.md, "ONNX
export"). The weights are stored inside the one .onnx file (no external-data file), which
ONNX's protobuf limit caps at 2 GB (Swin-L, the largest preset, is ~0.85 GB).
"""
import contextlib
import importlib
import os
import tempfile
from typing import Dict, Iterator, Optional

import numpy as np
import torch
from torch import nn

from . import ops
from .model import padded_hw

__all__ = ["export_onnx", "OnnxModel", "require_onnx", "ONNX_INSTALL_HINT"]

ONNX_INSTALL_HINT = "pip install 'maskformer-fast[onnx]' (onnx==1.23.2 onnxruntime==1.32.0 onnxscript==0.7.2)"
INPUT_NAME = "images"
OUTPUT_NAMES = ("pred_logits", "pred_masks")
# Example size traced when a dimension is dynamic: not a multiple of 32 (so the padding is
# exercised), height != width, and large enough that every Swin stage has 2+ windows per side
# (at one window torch.export specialises the size to the example).
EXAMPLE_SIZE = (300, 360)
EXAMPLE_BATCH = 2  # torch.export specialises a dimension it sees as 1
# Nominal lower bound of a dynamic side: the smallest with 2+ Swin windows in every stage
# (ceil(ceil(H / 32) / 7) >= 2). The graph has no check and is tested below it (64 x 64).
MIN_SIDE = 225
MAX_SIDE = 16384


def require_onnx(*modules: str):
    """The named modules (default: onnx, onnxscript), or an ImportError of one line saying what to install."""
    loaded = []
    for name in modules or ("onnx", "onnxscript"):
        try:
            loaded.append(importlib.import_module(name))
        except ImportError:
            raise ImportError(f"ONNX export/inference needs the {name} package, not installed here: "
                              f"{ONNX_INSTALL_HINT}") from None
    return loaded[0] if len(loaded) == 1 else loaded


class FinalOutputs(nn.Module):
    """model(images) -> (pred_logits, pred_masks): the traced function (tensors in, tensors out)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        out = self.model(images)
        return out["pred_logits"], out["pred_masks"]


@contextlib.contextmanager
def final_layer_only(model: nn.Module) -> Iterator[None]:
    """Eval mode without aux outputs while exporting (``predictor.eval_aux_outputs``, the switch the
    fast engine sets too): the graph computes the class and mask heads of the last decoder layer
    only (the auxiliary outputs are for training)."""
    saved = model.predictor.eval_aux_outputs, model.training
    model.predictor.eval_aux_outputs = False
    model.eval()
    try:
        yield
    finally:
        model.predictor.eval_aux_outputs = saved[0]
        model.train(saved[1])


def _check_size(name: str, value: Optional[int]) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"export_onnx: {name} must be a positive int or None (dynamic), got {value!r}")


def _example_and_dynamic_shapes(model: nn.Module, batch, height, width):
    """The traced example input and torch.export's dynamic_shapes for the None dimensions."""
    Dim = torch.export.Dim
    sizes = (batch or EXAMPLE_BATCH, 3, height or EXAMPLE_SIZE[0], width or EXAMPLE_SIZE[1])
    device = next(model.parameters()).device
    example = torch.randn(sizes, generator=torch.Generator().manual_seed(0)).to(device)
    dims = {}
    if batch is None:
        dims[0] = Dim("batch", min=1, max=1024)
    if height is None:
        dims[2] = Dim("height", min=MIN_SIDE, max=MAX_SIDE)
    if width is None:
        dims[3] = Dim("width", min=MIN_SIDE, max=MAX_SIDE)
    return example, ({"images": dims} if dims else None)


def _refuse_existing(path: str, overwrite: bool) -> None:
    if os.path.isdir(path):
        raise IsADirectoryError(f"export_onnx: {path} is a folder; give the .onnx file's path")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"export_onnx: {path} exists; pass overwrite=True or another path")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"export_onnx: folder {folder} does not exist")


def _onnx_program(model: nn.Module, example: torch.Tensor, dynamic_shapes, opset: Optional[int]):
    """torch.export, then torch.onnx. Deferred runtime asserts: with dynamic sizes, Swin's window
    padding yields guards that hold for every size but that the symbolic solver cannot prove
    (e.g. 8q <= 7 * ((8q + 6) // 7)); as guards they would fail the export, as asserts they are
    checks the ONNX graph drops."""
    with final_layer_only(model), ops.use("eager"), torch.no_grad():
        exported = torch.export.export(FinalOutputs(model).eval(), (example,), dynamic_shapes=dynamic_shapes,
                                       strict=False, prefer_deferred_runtime_asserts_over_guards=True)
        return torch.onnx.export(exported, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                 output_names=list(OUTPUT_NAMES), verbose=False)


def export_onnx(model: nn.Module, path: str, height: Optional[int] = None, width: Optional[int] = None, *,
                batch: Optional[int] = None, opset: Optional[int] = None, overwrite: bool = False) -> str:
    """Export ``model`` (a MaskFormer) to the ONNX file ``path``; returns ``path``.

    Input ``images`` float32 [B, 3, H, W] (normalised, unpadded, as the model takes them);
    outputs ``pred_logits`` [B, Q, C+1] and ``pred_masks`` [B, Q, h, w] of the final decoder
    layer. ``height``/``width``/``batch`` fix that dimension; None (default) leaves it dynamic.
    ``opset``: the ONNX opset (default: the exporter's). An existing file is refused unless
    ``overwrite``; the file is written next to ``path`` under a temporary name and renamed into
    place, so ``path`` is never left half-written. The model is left as it was (mode, flags).
    """
    from .model import MaskFormer
    if not isinstance(model, MaskFormer):
        raise ValueError(f"export_onnx expects a MaskFormer (mf.build_model), got {type(model).__name__}")
    for name, value in (("height", height), ("width", width), ("batch", batch)):
        _check_size(name, value)
    path = os.fspath(path)
    _refuse_existing(path, overwrite)
    require_onnx("onnx", "onnxscript")
    example, dynamic_shapes = _example_and_dynamic_shapes(model, batch, height, width)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        program = _onnx_program(model, example, dynamic_shapes, opset)
        program.save(tmp, external_data=False)
        if not overwrite and os.path.lexists(path):  # appeared while exporting: still never replaced
            raise FileExistsError(f"export_onnx: {path} exists; pass overwrite=True or another path")
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
    return path


class OnnxModel:
    """An exported MaskFormer in onnxruntime, called like the model: images [B, 3, H, W]
    (torch, normalised) -> {"pred_logits", "pred_masks", "input_size", "padded_size"} (torch
    tensors on ``device``), so ``Predictor`` and the inference functions take it unchanged.

    Args:
        path: the .onnx file (from :func:`export_onnx`).
        size_divisibility: the model's (cfg.size_divisibility), for "padded_size".
        device: "cpu" (CPUExecutionProvider) or "cuda" (CUDAExecutionProvider where onnxruntime
            has it, else the CPU).
        threads: intra-op threads (default torch.get_num_threads()).
    """

    def __init__(self, path: str, size_divisibility: int, device: str = "cpu", threads: Optional[int] = None):
        ort = require_onnx("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.path = os.fspath(path)
        self.device = torch.device(device)
        self.providers = self._providers(ort, self.device)
        try:
            self.session = ort.InferenceSession(self.path, options, providers=self.providers)
        except Exception as e:  # onnxruntime raises its own (Fail, InvalidProtobuf ...) for unreadable files
            reason = " ".join(str(e).split())[:300]
            raise ValueError(f"cannot load ONNX model {path}: {reason}") from None
        names = [o.name for o in self.session.get_outputs()]
        if names != list(OUTPUT_NAMES) or [i.name for i in self.session.get_inputs()] != [INPUT_NAME]:
            raise ValueError(f"{path} is not a MaskFormer export (inputs/outputs {names}; expected "
                             f"{INPUT_NAME} -> {', '.join(OUTPUT_NAMES)})")
        self.size_divisibility = size_divisibility

    @staticmethod
    def _providers(ort, device: torch.device):
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def __call__(self, images: torch.Tensor) -> Dict[str, object]:
        from .model import MaskFormer
        MaskFormer.check_images(images)
        feed = {INPUT_NAME: np.ascontiguousarray(images.detach().float().cpu().numpy())}
        logits, masks = self.session.run(list(OUTPUT_NAMES), feed)
        input_size = tuple(images.shape[-2:])
        return {"pred_logits": torch.from_numpy(logits).to(self.device),
                "pred_masks": torch.from_numpy(masks).to(self.device),
                "input_size": input_size, "padded_size": padded_hw(*input_size, self.size_divisibility)}
