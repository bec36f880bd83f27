"""The fast engine as a drop-in model: ``optimize(model)`` and ``build_model(cfg, fast=True)``.

    model = mf.build_model(cfg)                 # the eager reference
    mf.load_weights(model, "model.pth")
    mf.optimize(model)                          # in place: same object, parameters and state_dict keys
    out = model(images)                         # same call, same final outputs (up to rounding)

What changes (none of it adds or renames a parameter or buffer, so checkpoints load both ways):

- every FrozenBatchNorm2d that follows a conv (the ResNets) is folded into that conv: the conv
  runs with weight * scale and bias - mean * scale, the norm becomes the identity. Two passes
  over every activation map saved; the folded tensors are cached and rebuilt when a weight changes.
- eval-mode forwards compute the masks of the final decoder layer only (the official model
  computes all six and keeps the last), with the mask embeddings folded into the mask_features
  conv (one conv to Q channels instead of a conv and an einsum), under no_grad, autocast bf16
  on CUDA (``amp``).
- channels_last memory format (what mkldnn and cuDNN convolutions prefer), by default for
  inference only: on a CPU, mkldnn's channels_last backward is measurably less accurate (worst
  weight gradient 6.7e-3 relative to float64 against 4.5e-4 in NCHW, R50, 2026-12-02), so
  training asks for it explicitly (on CUDA, where cuDNN's NHWC kernels pay).
- ``compile``: ``torch.compile`` of the forward after the input check (which stays eager: NaN
  inputs are still refused), with inductor freezing for inference (weights become constants,
  conv weights are pre-packed) and CUDA graphs for fixed-shape GPU inference (``cuda_graphs``).
  Frozen weights cannot change afterwards: forward refuses a model whose weights were edited or
  reloaded after ``optimize`` (optimize a fresh model instead) rather than run stale constants.
Training keeps the fused kernels (``maskformer_fast.ops``, "auto") and the batched matcher;
eval-mode aux outputs come back when ``predictor.eval_aux_outputs`` is set.
"""
import contextlib
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Tuple

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from .config import MaskFormerConfig
from .model import MaskFormer

__all__ = ["FastSettings", "FastMaskFormer", "FoldedConv2d", "optimize", "fold_frozen_batchnorm", "AMP_DTYPES"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


class FoldedConv2d(nn.Conv2d):
    """A Conv2d followed by a FrozenBatchNorm2d, run as one conv with the norm folded in.

    Holds no new state: the norm stays where it was (its buffers keep their state_dict names)
    and is only referenced here, outside the module tree."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.folded_weight_and_bias()
        return self._conv_forward(x, weight, bias)

    def folded_weight_and_bias(self) -> Tuple[torch.Tensor, torch.Tensor]:
        norm = self.__dict__["folded_norm"]
        sources = (self.weight, self.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var)
        # Cache only outside autograd and tracing: a trained conv weight must stay differentiable,
        # and torch.compile folds the arithmetic into constants itself.
        cacheable = not torch.compiler.is_compiling() and not (torch.is_grad_enabled() and self.weight.requires_grad)
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources if t is not None)
        cached = self.__dict__.get("folded_cache")
        if cacheable and cached is not None and cached[0] == key:
            return cached[1]
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        bias = norm.bias - norm.running_mean * scale
        if self.bias is not None:
            bias = bias + self.bias * scale
        folded = (self.weight * scale.reshape(-1, 1, 1, 1).to(self.weight.dtype), bias.to(self.weight.dtype))
        if cacheable:
            self.__dict__["folded_cache"] = (key, folded)
        return folded


class IdentityFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A FrozenBatchNorm2d whose affine map is applied by the FoldedConv2d before it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _last_conv(module: nn.Module) -> Optional[nn.Conv2d]:
    """module if it is a Conv2d, the last child of a Sequential ending in one, else None."""
    if isinstance(module, nn.Sequential) and len(module):
        module = module[-1]
    return module if type(module) is nn.Conv2d else None


def _conv_norm_pairs(module: nn.Module) -> Iterator[Tuple[nn.Conv2d, FrozenBatchNorm2d]]:
    """(conv, norm) siblings registered one after the other: how timm's ResNet stem, bottlenecks
    (conv1/bn1 .. conv3/bn3) and downsample Sequentials apply them (the parity tests check it)."""
    for parent in module.modules():
        children = list(parent.children())
        for first, second in zip(children, children[1:]):
            conv = _last_conv(first)
            if conv is not None and type(second) is FrozenBatchNorm2d and conv.out_channels == second.weight.numel():
                yield conv, second


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Fold every FrozenBatchNorm2d that follows a conv inside ``module`` into that conv (in place,
    same state_dict); returns how many were folded."""
    pairs = list(_conv_norm_pairs(module))
    for conv, norm in pairs:
        conv.__class__ = FoldedConv2d
        conv.__dict__["folded_norm"] = norm  # a plain attribute: not a second path to the buffers
        norm.__class__ = IdentityFrozenBatchNorm2d
    return len(pairs)


def masks_through_folded_conv(conv: nn.Conv2d, fpn: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """einsum("bqc,bchw->bqhw", embeddings, conv(fpn)) as one conv per image with the embeddings
    folded into its weights: both are linear, so sum_c e[q,c] (W[c] * x + b[c]) = (e[q] W) * x + e[q] b.
    A 3x3 conv of C_in -> Q channels instead of C_in -> mask_dim plus the einsum (R50 at 512x512:
    7.5 instead of 20.2 GFLOP, 23 instead of 62 ms on 2 cores; same result up to rounding).

    conv: the mask_features conv [mask_dim, C_in, k, k] (with bias); fpn [B, C_in, h, w];
    embeddings [B, Q, mask_dim] -> masks [B, Q, h, w]."""
    weight = torch.einsum("bqc,cikl->bqikl", embeddings, conv.weight.to(embeddings.dtype))
    bias = embeddings @ conv.bias.to(embeddings.dtype)
    masks = [conv._conv_forward(fpn[i:i + 1], weight[i].to(fpn.dtype), bias[i].to(fpn.dtype))
             for i in range(fpn.shape[0])]
    return torch.cat(masks)


@dataclass(frozen=True)
class FastSettings:
    """What :func:`optimize` turned on (``model.fast``)."""

    compile: bool = False
    amp: Optional[str] = None          # "bf16" | "fp16" | "none"; None: bf16 on CUDA, none on CPU
    channels_last: bool = True
    cuda_graphs: bool = False
    inference: bool = True
    folded_norms: int = 0


def _weights_version(model: nn.Module) -> int:
    return sum(t._version for t in model.parameters()) + sum(t._version for t in model.buffers())


class FastMaskFormer(MaskFormer):
    """A MaskFormer after :func:`optimize` (the class is swapped in place; no state is added)."""

    fast: FastSettings

    def forward(self, images: torch.Tensor) -> Dict[str, object]:
        self.check_images(images)
        if self.fast.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        run = self.__dict__.get("compiled_forward") or self.forward_checked
        if self.training:
            return run(images)
        if self.fast.compile and self.fast.inference:
            self._check_frozen_weights()
        with torch.no_grad(), self._autocast(images.device):
            out = run(images)
        return self._float_outputs(out, images.dtype)

    def forward_checked(self, images: torch.Tensor) -> Dict[str, object]:
        """Eval without aux outputs: the mask embeddings folded into the mask_features conv
        (:func:`masks_through_folded_conv`); otherwise MaskFormer's forward."""
        predictor = self.predictor
        if self.training or (predictor.deep_supervision and predictor.eval_aux_outputs):
            return super().forward_checked(images)
        input_size = tuple(images.shape[-2:])
        images = self.pad_images(images)
        features = self.backbone(images)
        fpn, encoder_features = self.pixel_decoder.fpn(features)
        queries = predictor.decode(encoder_features if encoder_features is not None else features["res5"])[-1]
        masks = masks_through_folded_conv(self.pixel_decoder.mask_features, fpn, predictor.mask_embed(queries))
        return {"pred_logits": predictor.class_embed(queries), "pred_masks": masks, "input_size": input_size,
                "padded_size": tuple(images.shape[-2:])}

    def _check_frozen_weights(self) -> None:
        """The first compiled eval forward freezes the weights into constants; refuse to run that
        graph once they have changed (loaded, edited or trained) instead of using stale ones."""
        version = _weights_version(self)
        frozen = self.__dict__.setdefault("frozen_version", version)
        if version != frozen:
            raise RuntimeError("the weights changed after optimize(compile=True) froze them into the compiled graph: "
                               "load weights first, then optimize a freshly built model")

    def _autocast(self, device: torch.device):
        amp = self.fast.amp or ("bf16" if device.type == "cuda" else "none")
        if AMP_DTYPES[amp] is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=AMP_DTYPES[amp])

    def _float_outputs(self, out: Dict[str, object], dtype: torch.dtype) -> Dict[str, object]:
        """Final outputs in the input's dtype, copied out of CUDA-graph memory (the next replay
        overwrites it)."""
        for key in ("pred_logits", "pred_masks"):
            value = out[key].to(dtype)
            out[key] = value.clone() if self.fast.cuda_graphs and value is out[key] else value
        return out


def _compile_options(settings: FastSettings) -> Dict[str, bool]:
    options = {}
    if settings.inference:
        options["freezing"] = True  # applies to the no_grad eval forwards only
    if settings.cuda_graphs:
        options["triton.cudagraphs"] = True
    return options


def optimize(model: MaskFormer, *, compile: bool = True, amp: Optional[str] = None, channels_last: Optional[bool] = None,
             cuda_graphs: bool = False, inference: bool = True) -> FastMaskFormer:
    """Turn ``model`` into the fast engine in place (see the module docstring) and return it.

    Args:
        compile: torch.compile the forward (inductor; the first call of each input shape
            compiles, a minute or more on a CPU).
        amp: autocast of eval forwards: "bf16", "fp16", "none", or None (bf16 on CUDA, none on CPU).
        channels_last: convert the weights and each input to channels_last (None: for inference).
        cuda_graphs: CUDA graphs for fixed-shape GPU inference (needs compile and CUDA).
        inference: put the model in eval mode (final-layer masks, no_grad, frozen compiled weights);
            False keeps its mode, for training with the kernels (and compile, without freezing).
    """
    if not isinstance(model, MaskFormer):
        raise ValueError(f"optimize expects a MaskFormer (build_model), got {type(model).__name__}")
    if isinstance(model, FastMaskFormer):
        raise ValueError("optimize: this model is already optimized (optimize a freshly built model)")
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"optimize: amp must be one of {sorted(AMP_DTYPES)} or None, got {amp!r}")
    if cuda_graphs and not (compile and torch.cuda.is_available()):
        raise ValueError("optimize: cuda_graphs needs compile=True and a CUDA GPU")
    folded = fold_frozen_batchnorm(model.backbone)
    channels_last = inference if channels_last is None else channels_last
    model.predictor.eval_aux_outputs = False
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if inference:
        model.eval()
    model.__class__ = FastMaskFormer
    model.fast = FastSettings(compile=compile, amp=amp, channels_last=channels_last, cuda_graphs=cuda_graphs,
                              inference=inference, folded_norms=folded)
    if compile:
        model.__dict__["compiled_forward"] = torch.compile(model.forward_checked,
                                                           options=_compile_options(model.fast))
    return model


def build_fast_model(cfg: MaskFormerConfig) -> FastMaskFormer:
    """``build_model(cfg, fast=True)``: a trainable fast model (kernels, folded norms,
    channels_last; final-layer masks in eval), not compiled: call :func:`optimize` on a model
    for compiled serving instead."""
    return optimize(MaskFormer(cfg), compile=False, inference=False)
