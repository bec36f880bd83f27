"""The test-time pipeline, shared by predict and by training-time evaluation: image ->
resize and normalise (:mod:`maskformer_fast.preprocessing`) -> model -> the task's results at
the image's own size (:mod:`maskformer_fast.inference`), with the config's post-processing."""
from contextlib import nullcontext
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import inference
from .preprocessing import preprocess

__all__ = ["Predictor", "TASKS"]

TASKS = ("semantic", "panoptic", "instance")
# Instance results are top_k full-size masks, which no tiling can shrink: refuse what would need
# more than this instead of failing inside an allocation. (Semantic and panoptic maps are
# post-processed in row bands and have no such limit; see inference.TILE_ELEMENTS.)
INSTANCE_BYTES_LIMIT = 8 * 2**30


def resolve_device(name: Optional[str]) -> torch.device:
    """``name`` ("cpu", "cuda", "cuda:1", ...; None: cuda when available, else cpu) as a device,
    ValueError naming the problem for a malformed name or a GPU this machine does not have."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a torch device name (cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"device {name!r}: no CUDA GPU is visible on this machine (use cpu)")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    return device


class Predictor:
    """One configured model plus the test-time pipeline: image -> task outputs at the image size.

    Args:
        model: a MaskFormer in eval mode on ``device``.
        cfg: its config (normalisation, test size, thresholds, TTA scales).
        task: "semantic", "panoptic" or "instance".
        device: where the model runs.
        short_side: test short side (default cfg.test_short_side); long side <= cfg.test_max_size.
        tta: multi-scale + flip (semantic only).
        amp: "none", "bf16" or "fp16" autocast.
        thing_classes: contiguous class ids that are things (panoptic).
        top_k: instances kept per image (instance).
    """

    def __init__(self, model: torch.nn.Module, cfg, task: str = "semantic", device: str = "cpu",
                 short_side: Optional[int] = None, tta: bool = False, amp: str = "none",
                 thing_classes: Sequence[int] = (), top_k: int = 100):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if tta and task != "semantic":
            raise ValueError(f"--tta is for the semantic task only, got task {task!r}")
        if amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"amp must be none, bf16 or fp16, got {amp!r}")
        bad = [c for c in thing_classes if not 0 <= c < cfg.num_classes]
        if bad:
            raise ValueError(f"thing classes {bad} are outside 0..{cfg.num_classes - 1}")
        self.model, self.cfg, self.task, self.tta = model, cfg, task, tta
        self.device = torch.device(device)
        self.short_side = cfg.test_short_side if short_side is None else short_side
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.metadata = inference.PanopticMetadata(frozenset(thing_classes))
        self.top_k = top_k

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @torch.no_grad()
    def __call__(self, image: np.ndarray):
        """[H,W,3] uint8 RGB -> semantic: int64 label map [H, W]; panoptic: (int32 id map [H, W],
        segments_info); instance: {"scores", "labels", "masks" bool [k, H, W]}, all on the CPU."""
        return self.predict_batch([image])[0]

    @torch.no_grad()
    def predict_batch(self, images: Sequence[np.ndarray]) -> list:
        """``__call__`` for several images, one forward per group of images whose resized shapes
        are equal: stacked without padding, so each image gets the computation it gets alone
        (bit-identical on CPU, checked; batched GPU kernels may sum in another order).
        (Padding images of other shapes into one batch would change their results: as in the
        official model, attention sees the padded pixels.) TTA runs image by image."""
        inputs = [preprocess(image, self.cfg.pixel_mean, self.cfg.pixel_std, self.short_side,
                             self.cfg.test_max_size) for image in images]
        results: list = [None] * len(images)
        if self.task == "semantic" and self.tta:
            for i, (image, x) in enumerate(zip(images, inputs)):
                with self._autocast():
                    scores = inference.semantic_inference_tta(
                        self.model, x.to(self.device), image.shape[:2], self.cfg.tta_scales, self.cfg.tta_flip,
                        self.cfg.sem_seg_postprocess_before_inference)
                results[i] = scores.argmax(0).cpu()
            return results
        groups: Dict[Tuple[int, ...], List[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(tuple(x.shape), []).append(i)
        for shape, members in groups.items():
            with self._autocast():
                out = self.model(torch.stack([inputs[i] for i in members]).to(self.device))
            image_sizes = [tuple(shape[-2:])] * len(members)
            output_sizes = [images[i].shape[:2] for i in members]
            for i, result in zip(members, self._postprocess(out, image_sizes, output_sizes)):
                results[i] = result
        return results

    def _postprocess(self, out: Dict, image_sizes: List[Tuple[int, int]], output_sizes: List[Tuple[int, int]]) -> list:
        """The task's results of a batch's outputs, on the CPU."""
        if self.task == "semantic":
            labels = inference.semantic_labels(out, image_sizes, output_sizes,
                                               self.cfg.sem_seg_postprocess_before_inference)
            return [m.cpu() for m in labels]
        if self.task == "panoptic":
            return [(ids.cpu(), segments) for ids, segments in
                    inference.panoptic_inference(out, image_sizes, output_sizes, self.metadata,
                                                 self.cfg.object_mask_threshold, self.cfg.overlap_threshold)]
        for h, w in output_sizes:  # k bool masks at full size, plus their float logits while scoring
            if self.top_k * h * w * 5 > INSTANCE_BYTES_LIMIT:
                raise ValueError(f"instance masks of a {w}x{h} image need ~{self.top_k * h * w * 5 / 2**30:.1f} GB "
                                 f"(top_k {self.top_k} x {h} x {w} x 5 bytes), over the "
                                 f"{INSTANCE_BYTES_LIMIT / 2**30:.0f} GB limit: lower --top-k or resize the image")
        # panoptic datasets keep thing classes only, as Mask2Former's instance inference does
        things = self.metadata if self.metadata.thing_classes else None
        return [{k: v.cpu() for k, v in r.items()} for r in
                inference.instance_inference(out, image_sizes, output_sizes, top_k=self.top_k, metadata=things)]
