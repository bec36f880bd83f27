"""Run a MaskFormer on image files: semantic, panoptic or instance maps written to disk.

    python -m maskformer_fast.predict                        # no input: one generated image, random weights
    python -m maskformer_fast.predict --weights model_final.pth --input img.jpg photos/ --output out/
    python -m maskformer_fast.predict --preset maskformer_r50_coco_panoptic --task panoptic \\
        --weights model_final_xxx.pkl --input photos/ --output out/ [--device cuda --engine fast --amp bf16]
    python -m maskformer_fast.predict num_queries=50 --input img.jpg   # KEY=VALUE overrides before --input

Each image is read as RGB (EXIF orientation applied), resized as the official test-time
``ResizeShortestEdge`` (short side ``--short-side``, default ``cfg.test_short_side``, long side
<= ``cfg.test_max_size``), normalised with ``cfg.pixel_mean``/``pixel_std`` (0-255 RGB), run
through the model and post-processed back to its original size. Outputs per image NAME:

* semantic: ``NAME.png``, the label map (uint8; uint16 PNG when there are more than 255 classes);
* panoptic: ``NAME.png``, segment ids as COCO panoptic RGB (id = R + 256 G + 256^2 B, 0 = void),
  and ``NAME.json`` with the segments_info (id, category_id, isthing, area);
* instance: ``NAME.json`` with the scores and labels, best first, and ``NAME_masks.npz`` holding
  ``masks`` (bool [k, H, W]), ``scores`` and ``labels`` in the same order.

``--weights`` takes a ``train/train.py`` checkpoint (its saved config is used unless ``--preset``
is given), a bare state dict, or an official model-zoo ``.pkl``/``.pth`` (Detectron2 names).
Files are read without running pickled code (``torch.load(weights_only=True)``).
"""
import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from contextlib import nullcontext
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["resized_shape", "resize_image", "preprocess", "read_image", "read_weights", "load_weights",
           "Predictor", "main"]

DEFAULT_PRESET = "maskformer_r50_ade20k"
TASKS = ("semantic", "panoptic", "instance")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------- images


def resized_shape(height: int, width: int, short: float, max_size: float) -> Tuple[int, int]:
    """Detectron2's ResizeShortestEdge output shape: short side -> ``short``, long side <= ``max_size``."""
    scale = short / min(height, width)
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_image(image: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """[H,W,3] uint8 -> bilinear resize to ``shape`` (h, w), as Detectron2 does with PIL."""
    if image.shape[:2] == tuple(shape):
        return image
    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.BILINEAR))


def preprocess(image: np.ndarray, pixel_mean: Sequence[float], pixel_std: Sequence[float], short_side: int,
               max_size: int) -> torch.Tensor:
    """[H,W,3] uint8 RGB -> resized (test-time ResizeShortestEdge), normalised float32 [3, h, w]."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}")
    resized = resize_image(image, resized_shape(*image.shape[:2], float(short_side), max_size))
    chw = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    mean = torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1)
    return (chw.float() - mean) / std


def read_image(path: str) -> np.ndarray:
    """[H,W,3] uint8 RGB of an image file, EXIF orientation applied (as Detectron2's read_image)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input image not found: {path}")
    try:
        with Image.open(path) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


def synthetic_image(height: int = 384, width: int = 512) -> np.ndarray:
    """A fixed [H,W,3] uint8 test scene: a sky/ground gradient, a striped block and a disc."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    horizon = ys < 0.4 * height
    image[horizon] = (110, 160, 230)
    image[~horizon] = (90, 140, 60)
    image += (ys / height * 40)[..., None]
    block = (xs > 0.1 * width) & (xs < 0.4 * width) & (ys > 0.3 * height) & (ys < 0.8 * height)
    image[block] = (170, 60, 50)
    image[block] += (30 * np.sin(xs[block] / 3))[:, None]
    disc = (ys - 0.6 * height) ** 2 + (xs - 0.7 * width) ** 2 < (0.15 * height) ** 2
    image[disc] = (230, 210, 80)
    return np.clip(image, 0, 255).astype(np.uint8)


def collect_inputs(paths: Sequence[str]) -> List[str]:
    """Image files named directly or found (by extension, sorted) directly inside folders."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ValueError(f"input folder {path} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        elif os.path.isfile(path):
            files.append(path)
        else:
            hint = " (config overrides KEY=VALUE go before --input)" if "=" in path else ""
            raise FileNotFoundError(f"input not found: {path}{hint}")
    stems: Dict[str, str] = {}
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            raise ValueError(f"inputs {stems[stem]} and {path} would write the same output name {stem!r}")
        stems[stem] = path
    return files


# --------------------------------------------------------------------------- weights


@dataclasses.dataclass
class Weights:
    """A weights file's model tensors and, for a train.py checkpoint, the config it trained."""
    state: Dict[str, torch.Tensor]
    config: Optional[Dict] = None

    @property
    def is_official(self) -> bool:
        """Detectron2 names (the official MaskFormer head lives under ``sem_seg_head.``)."""
        return any(k.startswith("sem_seg_head.") for k in self.state)


def _rng_state_globals() -> List:
    """The numpy objects a train.py checkpoint's saved RNG state pickles, under numpy 1 and 2 names."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from numpy.core.multiarray import _reconstruct
    allowed = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    return allowed + [(_reconstruct, f"{m}._reconstruct") for m in ("numpy.core.multiarray", "numpy._core.multiarray")]


def read_weights(path: str) -> Weights:
    """The model tensors of a train.py checkpoint (``{"model": ..., "config": ...}``), a bare state
    dict or an official ``.pkl``/``.pth``. FileNotFoundError / ValueError name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".pkl"):
        from .convert import read_checkpoint
        return Weights(read_checkpoint(path))
    try:
        with torch.serialization.safe_globals(_rng_state_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or pickled objects beyond tensors and RNG states
        raise ValueError(f"cannot load checkpoint {path}: {e}") from None
    config = obj.get("config") if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else None
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds neither a training checkpoint nor a model state dict")
    return Weights(state, config if isinstance(config, dict) else None)


def load_weights(model: torch.nn.Module, path: str, weights: Optional[Weights] = None) -> torch.nn.Module:
    """Load ``path`` (see :func:`read_weights`; ``weights`` if already read) into ``model``, strictly."""
    weights = read_weights(path) if weights is None else weights
    if weights.is_official:
        from .convert import load_official_checkpoint
        return load_official_checkpoint(model, path)
    try:
        model.load_state_dict(weights.state)
    except RuntimeError as e:
        raise ValueError(f"weights {path} do not fit the model: {e}") from None
    return model


# --------------------------------------------------------------------------- prediction


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
        from .inference import PanopticMetadata
        self.model, self.cfg, self.task, self.tta = model, cfg, task, tta
        self.device = torch.device(device)
        self.short_side = cfg.test_short_side if short_side is None else short_side
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.metadata = PanopticMetadata(frozenset(thing_classes))
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
        from . import inference
        inputs = [preprocess(image, self.cfg.pixel_mean, self.cfg.pixel_std, self.short_side,
                             self.cfg.test_max_size) for image in images]
        results: list = [None] * len(images)
        if self.task == "semantic" and self.tta:
            for i, (image, x) in enumerate(zip(images, inputs)):
                with self._autocast():
                    scores = inference.semantic_inference_tta(self.model, x.to(self.device), image.shape[:2],
                                                              self.cfg.tta_scales, self.cfg.tta_flip)
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
        from . import inference
        if self.task == "semantic":
            return [s.argmax(0).cpu() for s in inference.semantic_inference(out, image_sizes, output_sizes)]
        if self.task == "panoptic":
            return [(ids.cpu(), segments) for ids, segments in
                    inference.panoptic_inference(out, image_sizes, output_sizes, self.metadata,
                                                 self.cfg.object_mask_threshold, self.cfg.overlap_threshold)]
        # panoptic datasets keep thing classes only, as Mask2Former's instance inference does
        things = self.metadata if self.metadata.thing_classes else None
        return [{k: v.cpu() for k, v in r.items()} for r in
                inference.instance_inference(out, image_sizes, output_sizes, top_k=self.top_k, metadata=things)]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids [H,W] -> the COCO panoptic RGB encoding (id = R + 256 G + 256^2 B)."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 256 ** 2 % 256], axis=-1).astype(np.uint8)


def write_result(task: str, result, output: str, name: str, num_classes: int) -> List[str]:
    """Write one image's prediction under ``output`` (see the module docstring); returns the paths."""
    base = os.path.join(output, name)
    if task == "semantic":
        labels = result.numpy()
        dtype = np.uint8 if num_classes <= 255 else np.uint16
        Image.fromarray(labels.astype(dtype)).save(base + ".png")
        return [base + ".png"]
    if task == "panoptic":
        ids, segments = result
        Image.fromarray(id_to_rgb(ids.numpy())).save(base + ".png")
        info = [{"id": s["id"], "category_id": s["category_id"], "isthing": bool(s["isthing"]),
                 "area": int(s["area"])} for s in segments]
        with open(base + ".json", "w") as f:
            json.dump({"file_name": name + ".png", "segments_info": info}, f, indent=1)
        return [base + ".png", base + ".json"]
    with open(base + ".json", "w") as f:
        json.dump({"masks_file": name + "_masks.npz",
                   "instances": [{"score": float(s), "label": int(c)}
                                 for s, c in zip(result["scores"].tolist(), result["labels"].tolist())]}, f, indent=1)
    np.savez_compressed(base + "_masks.npz", masks=result["masks"].numpy(), scores=result["scores"].float().numpy(),
                        labels=result["labels"].numpy())
    return [base + ".json", base + "_masks.npz"]


def describe(task: str, result) -> str:
    """Shapes of one prediction, for the console."""
    if task == "semantic":
        return f"labels {tuple(result.shape)}, {len(torch.unique(result))} classes present"
    if task == "panoptic":
        ids, segments = result
        return f"ids {tuple(ids.shape)}, {len(segments)} segments"
    return f"masks {tuple(result['masks'].shape)}, scores {tuple(result['scores'].shape)}"


# --------------------------------------------------------------------------- command line


def parse_thing_classes(text: str) -> List[int]:
    """"0-79,90" -> [0, 1, ..., 79, 90]."""
    classes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, _, hi = part.partition("-")
        try:
            classes.extend(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"thing classes must be ids or ranges like 0-79,90, got {part!r}")
    return classes


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m maskformer_fast.predict",
                                description="MaskFormer inference on image files (see the module docstring).")
    p.add_argument("--preset", default=None,
                   help=f"config preset (default: the --weights checkpoint's config, else {DEFAULT_PRESET})")
    p.add_argument("--weights", default=None, help="train.py checkpoint, state dict, or official .pkl/.pth")
    p.add_argument("--task", default="semantic", choices=TASKS)
    p.add_argument("--input", nargs="+", default=None,
                   help="image files and/or folders; without it, one generated image is run")
    p.add_argument("--output", default=None,
                   help="output folder (default output/predict with --input; nothing written without either)")
    p.add_argument("--short-side", type=int, default=None, help="test short side (default cfg.test_short_side)")
    p.add_argument("--tta", action="store_true", help="semantic: multi-scale + flip (cfg.tta_scales, tta_flip)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--engine", default="fast", choices=("eager", "fast"),
                   help="eager: reference ops; fast (default): Triton kernels where they run (CUDA)")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--thing-classes", type=parse_thing_classes, default=None,
                   help="panoptic: contiguous thing ids, e.g. 0-79 (default: the dataset's, for coco_panoptic "
                        "and ade20k_panoptic; none otherwise)")
    p.add_argument("--top-k", type=int, default=100, help="instance: instances kept per image")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images read at a time; those with equal resized shapes share one forward")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config field overrides")
    args = p.parse_intermixed_args(argv)  # KEY=VALUE may sit between options
    if args.tta and args.task != "semantic":
        p.error("--tta works with --task semantic only")
    if args.short_side is not None and args.short_side < 1:
        p.error(f"--short-side must be >= 1, got {args.short_side}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    for item in args.overrides:
        if "=" not in item:
            p.error(f"config override {item!r} is not KEY=VALUE")
    return args


def build_config(args, weights: Optional[Weights]):
    """--preset, else the checkpoint's config, else the default preset; then the overrides."""
    from .config import get_config
    overrides = dict(item.split("=", 1) for item in args.overrides)
    overrides = {k.strip(): v for k, v in overrides.items()}
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    if args.preset is None and weights is not None and weights.config is not None:
        saved = {k: v for k, v in weights.config.items() if k != "name"}
        return get_config(weights.config["name"], **{**saved, **overrides})
    return get_config(args.preset or DEFAULT_PRESET, **overrides)


def run(args) -> List[Dict]:
    """Predict every input (or the generated image); returns one record per image."""
    import maskformer_fast as mf
    weights = read_weights(args.weights) if args.weights else None
    cfg = build_config(args, weights)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = mf.build_model(cfg).eval()
    if weights is not None:
        load_weights(model, args.weights, weights)
    model.to(device)
    num_params = sum(p.numel() for p in model.parameters())
    thing_classes = args.thing_classes
    if thing_classes is None:
        from .config import thing_classes as dataset_thing_classes
        thing_classes = dataset_thing_classes(cfg.dataset)
        if thing_classes and max(thing_classes) >= cfg.num_classes:
            raise ValueError(f"the {cfg.dataset} thing classes go up to {max(thing_classes)}, beyond "
                             f"num_classes={cfg.num_classes}: pass --thing-classes for this model")
        if args.task == "panoptic" and not thing_classes:
            print(f"note: no --thing-classes for dataset {cfg.dataset}: every class is stuff")
    predictor = Predictor(model, cfg, args.task, device, args.short_side, args.tta, args.amp, thing_classes,
                          args.top_k)

    if args.input:
        files = collect_inputs(args.input)
        output = args.output or os.path.join("output", "predict")
    else:
        files, output = [None], args.output
    if output:
        os.makedirs(output, exist_ok=True)
    print(f"{cfg.name}: {num_params:,} parameters ({num_params / 1e6:.1f} M), {cfg.num_classes} classes, "
          f"task {args.task}, device {device}, engine {args.engine}, amp {args.amp}"
          + (f", weights {args.weights}" if args.weights else ", random weights"))
    records, total = [], 0.0
    with mf.ops.use("eager" if args.engine == "eager" else "auto"):
        for first in range(0, len(files), args.batch_size):
            paths = files[first:first + args.batch_size]
            images = [read_image(path) if path else synthetic_image() for path in paths]
            start = time.perf_counter()
            results = predictor.predict_batch(images)
            if predictor.device.type == "cuda":
                torch.cuda.synchronize(predictor.device)
            seconds = (time.perf_counter() - start) / len(paths)  # per image, the batch's share
            total += seconds * len(paths)
            for path, image, result in zip(paths, images, results):
                name = os.path.splitext(os.path.basename(path))[0] if path else "synthetic"
                written = write_result(args.task, result, output, name, cfg.num_classes) if output else []
                print(f"{path or name}: {image.shape[1]}x{image.shape[0]} -> {describe(args.task, result)}, "
                      f"{seconds * 1000:.0f} ms" + (f" -> {', '.join(written)}" if written else ""))
                records.append({"name": name, "size": image.shape[:2], "seconds": seconds, "files": written})
    print(f"{len(files)} image(s) in {total:.2f} s: {len(files) / total:.2f} images/s; "
          f"model {num_params:,} parameters")
    return records


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    args = parse_args(argv)
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
