"""Run a MaskFormer on image files: semantic, panoptic or instance maps written to disk.

    python -m maskformer_fast.predict                        # no input: one generated image, random weights
    python -m maskformer_fast.predict --weights model_final.pth --input img.jpg photos/ --output out/
    python -m maskformer_fast.predict --preset maskformer_r50_coco_panoptic --task panoptic \\
        --weights model_final_xxx.pkl --input photos/ --output out/ [--device cuda --amp bf16]
    python -m maskformer_fast.predict num_queries=50 --input img.jpg   # KEY=VALUE overrides before --input

Each image is read as RGB (EXIF orientation applied), resized as the official test-time
``ResizeShortestEdge`` (short side ``--short-side``, default ``cfg.test_short_side``, long side
<= ``cfg.test_max_size``), normalised with ``cfg.pixel_mean``/``pixel_std`` (0-255 RGB), run
through the model and post-processed back to its original size. Outputs per image NAME:

* semantic: ``NAME.png``, the label map: pixel values are the class ids, stored as a palette
  (mode "P") PNG carrying the dataset's colours, so that any viewer shows them; with more than
  255 classes (ADE20K-Full's 847) a uint16 PNG without colours, as mode "P" holds 256 entries;
* panoptic: ``NAME.png``, segment ids as COCO panoptic RGB (id = R + 256 G + 256^2 B, 0 = void),
  and ``NAME.json`` with the segments_info (id, category_id, isthing, area, name);
* instance: ``NAME.json`` with the scores and labels, best first, and ``NAME_masks.npz`` holding
  ``masks`` (bool [k, H, W]), ``scores`` and ``labels`` in the same order;
* every task: ``NAME_overlay.png`` (unless ``--no-overlay``), the image at its original size
  blended with the class colours, segments outlined, a legend of the classes present; panoptic
  things in shades of their class colour; instance masks with score >= ``--overlay-score``
  labelled "NAME SCORE" (see :mod:`maskformer_fast.visualize`).

Class names and colours are the dataset's (``cfg.dataset``, shipped with the package); a custom
dataset names its classes with ``--class-names FILE`` (one name a line, or a JSON list).

``--weights`` takes a ``train/train.py`` checkpoint (its saved config is used unless ``--preset``
is given), a bare state dict, or an official model-zoo ``.pkl``/``.pth`` (Detectron2 names).
Files are read without running pickled code (``torch.load(weights_only=True)``).

Nothing is overwritten by accident: an output that would replace one of the inputs is refused
(always), an existing output file unless ``--overwrite``. Images above ``--max-pixels``
(default 120 M, about 11000 x 11000) are refused before decoding (PIL's decompression-bomb
guard). Errors are one line on stderr with exit status 2 (``--debug``: the traceback).
"""
import argparse
import contextlib
import json
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from . import ops, visualize
from .predictor import TASKS, Predictor, resolve_device
from .preprocessing import id_to_rgb, preprocess, read_image, resize_image, resized_shape, save_label_map
from .weights import Weights, config_for_weights, load_weights, read_weights

__all__ = ["resized_shape", "resize_image", "preprocess", "read_image", "read_weights", "load_weights",
           "Predictor", "main"]

DEFAULT_PRESET = "maskformer_r50_ade20k"
DEFAULT_MAX_PIXELS = 120_000_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------- images


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


OUTPUT_SUFFIXES = {"semantic": (".png",), "panoptic": (".png", ".json"), "instance": (".json", "_masks.npz")}
OVERLAY_SUFFIX = "_overlay.png"


@dataclass(frozen=True)
class OverlayOptions:
    """What NAME_overlay.png shows of an instance prediction (--overlay-score, --top-k)."""

    score_threshold: float = 0.5
    top_k: int = 100


def output_paths(task: str, output: str, name: str, overlay: bool = True) -> List[str]:
    """The files :func:`write_result` (and, with ``overlay``, :func:`write_overlay`) write for ``name``."""
    suffixes = OUTPUT_SUFFIXES[task] + ((OVERLAY_SUFFIX,) if overlay else ())
    return [os.path.join(output, name + suffix) for suffix in suffixes]


def check_outputs(task: str, output: str, inputs: Sequence[str], overwrite: bool, overlay: bool = True,
                  other_inputs: Sequence[Optional[str]] = ()) -> None:
    """Refuse outputs that would replace an input image or one of ``other_inputs`` (weights, class
    names; FileExistsError, always) or an existing file (unless ``overwrite``), before anything is
    written."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise FileExistsError(f"--output {output} is a file, not a folder: choose a folder")
    sources = {os.path.realpath(p): p for p in list(inputs) + list(other_inputs) if p}
    existing = []
    for path in inputs:
        name = os.path.splitext(os.path.basename(path))[0] if path else "synthetic"
        for target in output_paths(task, output, name, overlay):
            if os.path.realpath(target) in sources:
                raise FileExistsError(f"output {target} would overwrite the input {sources[os.path.realpath(target)]}: "
                                      f"choose another --output")
            if os.path.lexists(target):
                existing.append(target)
    if existing and not overwrite:
        raise FileExistsError(f"output {existing[0]} exists" + (f" (and {len(existing) - 1} more)" if len(existing) > 1
                                                                 else "") + ": pass --overwrite or another --output")


def read_input(path: str, max_pixels: int) -> np.ndarray:
    """:func:`read_image` refusing images above ``max_pixels`` (ValueError naming the file and limit)."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return read_image(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        size = re.search(r"\((\d+) pixels\)", str(e))
        raise ValueError(f"image {path} has {size.group(1) + ' ' if size else 'more '}pixels, above --max-pixels "
                         f"{max_pixels} (a decompression-bomb guard): raise --max-pixels for a trusted file") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _write(task: str, result, image: np.ndarray, output: str, name: str, metadata: visualize.DatasetMetadata,
           overlay: Optional[OverlayOptions]) -> List[str]:
    """:func:`write_result` and :func:`write_overlay` (unless ``overlay`` is None), an OSError (read-only
    or full folder) naming the folder and image."""
    try:
        written = write_result(task, result, output, name, metadata.num_classes, metadata)
        if overlay is not None:
            written.append(write_overlay(task, result, image, os.path.join(output, name + OVERLAY_SUFFIX),
                                         metadata, overlay))
        return written
    except OSError as e:
        raise OSError(f"cannot write the prediction of {name} into {output}: {e.strerror or e}") from None


def write_overlay(task: str, result, image: np.ndarray, path: str, metadata: visualize.DatasetMetadata,
                  options: OverlayOptions = OverlayOptions()) -> str:
    """Draw one image's prediction over the image (:mod:`maskformer_fast.visualize`) into ``path``."""
    if task == "semantic":
        drawing = visualize.draw_semantic_overlay(image, result.numpy(), metadata)
    elif task == "panoptic":
        ids, segments = result
        drawing = visualize.draw_panoptic_overlay(image, ids.numpy(), segments, metadata)
    else:
        drawing = visualize.draw_instance_overlay(image, result["masks"].numpy(), result["scores"].float().numpy(),
                                                  result["labels"].numpy(), metadata, options.score_threshold,
                                                  options.top_k)
    drawing.save(path)
    return path


def _named(entry: Dict, class_id: int, metadata: Optional[visualize.DatasetMetadata]) -> Dict:
    """``entry`` with its class name (``name``) when the names are known."""
    return entry if metadata is None else dict(entry, name=metadata.names[class_id])


def write_result(task: str, result, output: str, name: str, num_classes: int,
                 metadata: Optional[visualize.DatasetMetadata] = None) -> List[str]:
    """Write one image's prediction under ``output`` (see the module docstring); returns the paths.
    ``metadata`` gives a semantic label map its palette, panoptic segments and instances their names."""
    base = os.path.join(output, name)
    if task == "semantic":
        palette = visualize.label_palette(metadata) if metadata is not None else None
        save_label_map(result.numpy(), num_classes, base + ".png", palette)
        return [base + ".png"]
    if task == "panoptic":
        ids, segments = result
        Image.fromarray(id_to_rgb(ids.numpy())).save(base + ".png")
        info = [_named({"id": s["id"], "category_id": s["category_id"], "isthing": bool(s["isthing"]),
                        "area": int(s["area"])}, s["category_id"], metadata) for s in segments]
        with open(base + ".json", "w") as f:
            json.dump({"file_name": name + ".png", "segments_info": info}, f, indent=1)
        return [base + ".png", base + ".json"]
    with open(base + ".json", "w") as f:
        json.dump({"masks_file": name + "_masks.npz",
                   "instances": [_named({"score": float(s), "label": int(c)}, int(c), metadata)
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
    ops.add_engine_argument(p, "fast and auto run mf.optimize(model, compile=False) (--backend torch).")
    p.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"),
                   help="onnxruntime: the model exported to ONNX (mf.export_onnx) run by onnxruntime; "
                        "needs pip install 'maskformer-fast[onnx]'")
    p.add_argument("--onnx", default=None, metavar="FILE",
                   help="--backend onnxruntime: use this exported model, or export to it when it does not "
                        "exist (default: a temporary file)")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--thing-classes", type=parse_thing_classes, default=None,
                   help="panoptic: contiguous thing ids, e.g. 0-79 (default: the dataset's, for coco_panoptic "
                        "and ade20k_panoptic; none otherwise)")
    p.add_argument("--top-k", type=int, default=100, help="instance: instances kept per image")
    p.add_argument("--class-names", default=None, metavar="FILE",
                   help="names of a custom dataset's classes: one a line, or a JSON list (default: the dataset's)")
    p.add_argument("--no-overlay", action="store_true", help="do not write NAME_overlay.png")
    p.add_argument("--overlay-score", type=float, default=0.5,
                   help="instance: masks drawn in the overlay score at least this (default 0.5)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images read at a time; those with equal resized shapes share one forward")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (never an input)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images before decoding them (default {DEFAULT_MAX_PIXELS:,})")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config field overrides")
    args = p.parse_intermixed_args(argv)  # KEY=VALUE may sit between options
    if args.tta and args.task != "semantic":
        p.error("--tta works with --task semantic only")
    if args.short_side is not None and args.short_side < 1:
        p.error(f"--short-side must be >= 1, got {args.short_side}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_pixels < 1:
        p.error(f"--max-pixels must be >= 1, got {args.max_pixels}")
    if args.top_k < 1:
        p.error(f"--top-k must be >= 1, got {args.top_k}")
    if not 0.0 <= args.overlay_score <= 1.0:
        p.error(f"--overlay-score must be in [0, 1], got {args.overlay_score}")
    if args.backend == "onnxruntime" and (args.tta or args.amp != "none"):
        p.error("--backend onnxruntime runs the float32 export without TTA: drop --tta / --amp")
    if args.onnx is not None and args.backend != "onnxruntime":
        p.error("--onnx needs --backend onnxruntime")
    for item in args.overrides:
        if "=" not in item:
            p.error(f"config override {item!r} is not KEY=VALUE")
    return args


def build_config(args, weights: Optional[Weights]):
    """--preset, else the checkpoint's config, else the default preset; then the overrides."""
    overrides = dict(item.split("=", 1) for item in args.overrides)
    overrides = {k.strip(): v for k, v in overrides.items()}
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    return config_for_weights(weights, args.preset, DEFAULT_PRESET, overrides)


def build_metadata(args, cfg) -> visualize.DatasetMetadata:
    """The classes' names and colours (the dataset's, or those its data recorded in the checkpoint's
    config), the names replaced by --class-names FILE."""
    class_names = visualize.read_class_names(args.class_names) if args.class_names else None
    if class_names is not None and len(class_names) != cfg.num_classes:
        raise ValueError(f"--class-names {args.class_names} lists {len(class_names)} names but the model has "
                         f"{cfg.num_classes} classes")
    return visualize.config_metadata(cfg, class_names)


def onnx_runner(model, cfg, onnx_path: Optional[str], device: str, stack: contextlib.ExitStack):
    """The model as an onnxruntime session: ``onnx_path`` when it exists (an earlier export of this
    model: its weights are the file's), else ``model`` exported to it (or to a temporary file,
    removed when ``stack`` closes)."""
    from .cli_errors import CliError
    from .onnx_export import OnnxModel, export_onnx, require_onnx
    try:
        require_onnx("onnxruntime", "onnx", "onnxscript")
    except ImportError as e:  # bad set-up, not a bug: one line, status 2
        raise CliError(str(e)) from None
    if onnx_path is None:
        onnx_path = os.path.join(stack.enter_context(tempfile.TemporaryDirectory()), "model.onnx")
    if not os.path.exists(onnx_path):
        start = time.perf_counter()
        export_onnx(model, onnx_path)
        print(f"exported to ONNX in {time.perf_counter() - start:.1f} s: {onnx_path}")
    elif not os.path.isfile(onnx_path) or not os.access(onnx_path, os.R_OK):
        raise OSError(f"--onnx {onnx_path} is not a readable file")
    return OnnxModel(onnx_path, cfg.size_divisibility, device)


def run(args) -> List[Dict]:
    """Predict every input (or the generated image); returns one record per image."""
    with contextlib.ExitStack() as stack:
        return _run(args, stack)


def _run(args, stack: contextlib.ExitStack) -> List[Dict]:
    import maskformer_fast as mf
    weights = read_weights(args.weights) if args.weights else None
    cfg = build_config(args, weights)
    metadata = build_metadata(args, cfg)
    device = str(resolve_device(args.device))
    model = mf.build_model(cfg).eval()
    if weights is not None:
        load_weights(model, args.weights, weights)
    model.to(device)
    if args.engine != "eager" and args.backend == "torch":  # folded norms, final-layer masks, channels_last;
        # --amp stays the Predictor's
        model = mf.optimize(model, compile=False, amp="none")
    num_params = sum(p.numel() for p in model.parameters())
    thing_classes = args.thing_classes
    if thing_classes is None:
        from .config import thing_classes as dataset_thing_classes
        thing_classes = cfg.thing_class_ids or dataset_thing_classes(cfg.dataset)  # the data's, else the preset's
        if thing_classes and max(thing_classes) >= cfg.num_classes:
            raise ValueError(f"the {cfg.dataset} thing classes go up to {max(thing_classes)}, beyond "
                             f"num_classes={cfg.num_classes}: pass --thing-classes for this model")
        if args.task == "panoptic" and not thing_classes:
            print(f"note: no --thing-classes for dataset {cfg.dataset}: every class is stuff")
    runner = model
    if args.backend == "onnxruntime":
        runner = onnx_runner(model, cfg, args.onnx, device, stack)
    predictor = Predictor(runner, cfg, args.task, device, args.short_side, args.tta, args.amp, thing_classes,
                          args.top_k)

    if args.input:
        files = collect_inputs(args.input)
        output = args.output or os.path.join("output", "predict")
    else:
        files, output = [None], args.output
    if output:
        check_outputs(args.task, output, files, args.overwrite, not args.no_overlay, (args.weights, args.class_names))
        os.makedirs(output, exist_ok=True)
    print(f"{cfg.name}: {num_params:,} parameters ({num_params / 1e6:.1f} M), {cfg.num_classes} classes, "
          f"task {args.task}, device {device}, engine {args.engine}, amp {args.amp}, backend {args.backend}"
          + (f", weights {args.weights}" if args.weights else ", random weights"))
    overlay = None if args.no_overlay else OverlayOptions(args.overlay_score, args.top_k)
    records, total = [], 0.0
    with mf.ops.use(args.engine):
        for first in range(0, len(files), args.batch_size):
            paths = files[first:first + args.batch_size]
            images = [read_input(path, args.max_pixels) if path else synthetic_image() for path in paths]
            start = time.perf_counter()
            results = predictor.predict_batch(images)
            if predictor.device.type == "cuda":
                torch.cuda.synchronize(predictor.device)
            seconds = (time.perf_counter() - start) / len(paths)  # per image, the batch's share
            total += seconds * len(paths)
            for path, image, result in zip(paths, images, results):
                name = os.path.splitext(os.path.basename(path))[0] if path else "synthetic"
                written = _write(args.task, result, image, output, name, metadata, overlay) if output else []
                print(f"{path or name}: {image.shape[1]}x{image.shape[0]} -> {describe(args.task, result)}, "
                      f"{seconds * 1000:.0f} ms" + (f" -> {', '.join(written)}" if written else ""))
                records.append({"name": name, "size": image.shape[:2], "seconds": seconds, "files": written})
    print(f"{len(files)} image(s) in {total:.2f} s: {len(files) / total:.2f} images/s; "
          f"model {num_params:,} parameters")
    return records


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    from .cli_errors import run_cli
    args = parse_args(argv)
    return run_cli("predict", lambda: run(args), args.debug)


if __name__ == "__main__":
    main()
