"""Whole-model benchmark: every engine side by side in one run, same weights, same inputs.

    python benchmarks/bench_model.py [--preset maskformer_r50_ade20k] [--size 512] [--batches 1 4]
        [--train-batch 2] [--train-size 256] [--threads N] [--amp bf16|fp16|none] [--no-compile]
        [--no-profile] [--out DIR | --json PATH] [--tiny]

Engines (rows "impl"):
  eager         the reference model, ``ops.use("eager")``
  fast          ``mf.optimize(model, compile=False)`` (inference) / ``build_model(cfg, fast=True)``
                (training): folded frozen norms, final-layer masks, channels_last, kernels on CUDA
  fast+compile  ``mf.optimize(model)``: the same under inductor (freezing for inference); its
                compilation is warm-up, not timed. Training compiled on CUDA only (minutes on a CPU).
  hf            HF transformers ``MaskFormerForInstanceSegmentation``; our models are built from
                it with ``from_hf``, so every engine runs the same weights (ResNet-50 and Swin only)
  onnxruntime   ``mf.export_onnx`` of the eager model, run by onnxruntime (inference only)
Inference is timed at each of ``--batches`` (default 1 and 4 on a CPU, 1 and 16 on CUDA) at
``--size``; the training step (forward + criterion + backward) at ``--train-batch`` x
``--train-size``. Each row gives img/s, the speedup over eager (and over HF), peak memory (CUDA
allocator; on a CPU the process's resident high-water mark) and how far the final outputs are
from eager's. On a CPU the engines take turns, call by call, for ``--repeats`` rounds (machine
drift reaches all alike); on CUDA each row is triton's do_bench. On CUDA the fast engines run ``ops.use("fast")`` and a speedup is only written
where every hot op ran its kernel ("auto" would fall back to the references if the kernels did
not import, and time eager twice); the rows record which implementation each op ran.

Writes ``bench_model-<preset>.{json,md,png}`` under ``--out`` (default
``benchmarks/results/<machine>-<date>/``; an existing file is never replaced: a new folder
``...-2`` is used), or only the JSON at ``--json`` (benchmarks/gpu_suite.sh). ``--tiny``: the
small configuration the tests run (2 decoder layers, 64x64, batch 1 and 2).
"""
import argparse
import contextlib
import copy
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import maskformer_fast as mf  # noqa: E402
from benchmarks import common  # noqa: E402
from benchmarks.common import (Row, device_name, new_file, peak_memory_mib, positive_int, preset_name,  # noqa: E402
                               report, time_fn)
from benchmarks.table import dict_table, markdown_table  # noqa: E402

HOT_OPS = tuple(mf.ops.OPS)
OUTPUTS = (("pred_logits", "class_queries_logits"), ("pred_masks", "masks_queries_logits"))


def progress(message: str) -> None:
    common.progress("bench_model", message)


def random_targets(batch, size, num_classes, masks_per_image, generator):
    targets = []
    cell = max(size // 16, 1)
    for _ in range(batch):
        labels = torch.randperm(num_classes, generator=generator)[:masks_per_image]
        owner = torch.randint(0, masks_per_image, (size // cell, size // cell), generator=generator)
        owner = owner.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
        masks = owner[None] == torch.arange(masks_per_image)[:, None, None]
        targets.append({"labels": labels, "masks": masks})
    return targets


@contextlib.contextmanager
def recording_dispatch(counts):
    """Counts, per op, the calls that ops.resolve sent to the kernel and to the reference."""
    original = mf.ops.resolve

    def resolve(op, *tensors, **kwargs):
        fn = original(op, *tensors, **kwargs)
        impl = "reference" if fn is getattr(mf.reference, op) else "kernel"
        counts.setdefault(op, {"kernel": 0, "reference": 0})[impl] += 1
        return fn

    mf.ops.resolve = resolve
    try:
        yield
    finally:
        mf.ops.resolve = original


def dispatch_summary(counts):
    return "; ".join(f"{op}: kernel x{c['kernel']}, reference x{c['reference']}" for op, c in sorted(counts.items()))


def top_ops(step, engine, cuda, top=15):
    """The top `top` CUDA kernels (or CPU ops) by self time in one profiled call of step."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    kind, attr = (DeviceType.CUDA, "self_device_time_total") if cuda else (DeviceType.CPU, "self_cpu_time_total")
    events = sorted((e for e in prof.key_averages() if e.device_type == kind and getattr(e, attr) > 0),
                    key=lambda e: -getattr(e, attr))
    total = sum(getattr(e, attr) for e in events) or 1
    return [{"engine": engine, "rank": i + 1, "kernel": e.key[:90], "calls": e.count,
             "self_ms": getattr(e, attr) / 1e3, "pct": round(100 * getattr(e, attr) / total, 1)}
            for i, e in enumerate(events[:top])]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", type=preset_name, default="maskformer_r50_ade20k")
    p.add_argument("--size", type=positive_int, default=None, help="inference side (default 512; --tiny 64)")
    p.add_argument("--batches", type=positive_int, nargs="+", default=None, help="inference batches (CPU 1 4, CUDA 1 16)")
    p.add_argument("--train-batch", type=positive_int, default=None, help="default: 2 on a CPU, 8 on CUDA")
    p.add_argument("--train-size", type=positive_int, default=None, help="default: 256 on a CPU, 512 on CUDA")
    p.add_argument("--masks-per-image", type=positive_int, default=20)
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed calls per CPU row (CUDA: triton do_bench)")
    p.add_argument("--amp", choices=("bf16", "fp16", "none"), default=None, help="default: bf16 on CUDA, none on CPU")
    p.add_argument("--engines", nargs="+", default=None, help=f"subset of {', '.join(ENGINE_NAMES)}")
    p.add_argument("--no-compile", action="store_true", help="leave out fast+compile")
    p.add_argument("--no-profile", action="store_true", help="skip the torch.profiler pass")
    p.add_argument("--tiny", action="store_true", help="the small configuration the tests run")
    p.add_argument("--out", default=None, help="folder for the json, md and png")
    p.add_argument("--json", type=new_file, default=None, help="write only this JSON (the GPU suite)")
    args = p.parse_args(argv)
    unknown = set(args.engines or ()) - set(ENGINE_NAMES)
    if unknown:
        p.error(f"unknown engines {sorted(unknown)}; known: {', '.join(ENGINE_NAMES)}")
    return args


@dataclass
class Engine:
    """How one engine runs inference (images -> our output dict) and a training step."""

    name: str
    infer: Optional[Callable]
    train_step: Optional[Callable]
    ops_mode: Optional[str]          # the ops.use mode it runs under (None: not our ops)
    skipped: Dict[str, str] = field(default_factory=dict)  # "inference"/"train_step" -> why
    ran: str = ""


class Workload:
    """The shared weights (an HF model where HF has the backbone, and our eager model made
    from it), the inputs and the autocast."""

    def __init__(self, args, cuda):
        self.cuda = cuda
        self.device = "cuda" if cuda else "cpu"
        self.amp = args.amp or ("bf16" if cuda else "none")
        self.tiny = args.tiny
        self.size = args.size or (64 if args.tiny else 512)
        self.batches = args.batches or ([1, 2] if args.tiny else [1, 16] if cuda else [1, 4])
        self.train_batch = args.train_batch or (1 if args.tiny else 8 if cuda else 2)
        self.train_size = args.train_size or (64 if args.tiny else 512 if cuda else 256)
        overrides = dict(num_decoder_layers=2, dim_feedforward=256) if args.tiny else {}
        self.cfg = mf.get_config(args.preset, **overrides)
        self.hf, self.hf_reason = build_hf(self.cfg)
        if self.hf is not None:
            self.model = mf.from_hf(self.hf).to(self.device)
            self.hf.to(self.device)
        else:
            torch.manual_seed(0)
            self.model = mf.build_model(self.cfg).to(self.device)
        g = torch.Generator().manual_seed(0)
        self.images = {b: torch.randn(b, 3, self.size, self.size, generator=g).to(self.device) for b in self.batches}
        self.train_images = torch.randn(self.train_batch, 3, self.train_size, self.train_size, generator=g)
        self.train_images = self.train_images.to(self.device)
        masks = min(args.masks_per_image, self.cfg.num_classes, 5 if args.tiny else 100)
        self.targets = [{k: v.to(self.device) for k, v in t.items()}
                        for t in random_targets(self.train_batch, self.train_size, self.cfg.num_classes, masks, g)]
        self.label = f"{args.preset}{' (tiny)' if args.tiny else ''} amp={self.amp}"

    def autocast(self):
        if self.amp == "none":
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)

    def our_train_step(self, net):
        def step():
            with self.autocast():
                out = net(self.train_images)
                loss = sum(net.criterion(out, self.targets).values())
            loss.backward()
            net.zero_grad(set_to_none=True)
        return step


def build_hf(cfg):
    """(random-init HF MaskFormerForInstanceSegmentation shaped as cfg, None) or (None, why not).
    Its BatchNorm statistics are moved off 0/1 so that folding them is not a no-op."""
    try:
        import transformers
    except ImportError:
        return None, "transformers is not installed"
    if cfg.backbone == "resnet50":
        backbone = transformers.ResNetConfig(depths=[3, 4, 6, 3], out_features=["stage1", "stage2", "stage3", "stage4"])
    elif cfg.backbone.startswith("swin"):
        from maskformer_fast.backbone import SWIN_SPECS
        embed_dim, depths, heads = SWIN_SPECS[cfg.backbone]
        backbone = transformers.SwinConfig(embed_dim=embed_dim, depths=list(depths), num_heads=list(heads),
                                           window_size=cfg.window_size, out_features=["stage1", "stage2", "stage3", "stage4"])
    else:
        return None, f"HF transformers has no {cfg.backbone} MaskFormer backbone"
    if cfg.pixel_decoder_encoder_layers:
        return None, "HF MaskFormer has no +6Enc pixel decoder"
    decoder = dict(model_type="detr", num_queries=cfg.num_queries, decoder_layers=cfg.num_decoder_layers,
                   decoder_ffn_dim=cfg.dim_feedforward, encoder_ffn_dim=cfg.dim_feedforward, dropout=cfg.dropout)
    hf_cfg = transformers.MaskFormerConfig(backbone_config=backbone, num_labels=cfg.num_classes, decoder_config=decoder)
    torch.manual_seed(0)
    hf = transformers.MaskFormerForInstanceSegmentation(hf_cfg).eval()
    with torch.no_grad():
        for name, buf in hf.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    return hf, None


def eager_engine(work):
    return Engine("eager", work.model, work.our_train_step(work.model), "eager")


def fast_engine(work, compile=False):
    name = "fast+compile" if compile else "fast"
    infer = mf.optimize(copy.deepcopy(work.model), compile=compile, amp=work.amp)
    trainable = not compile or work.cuda
    train = mf.optimize(copy.deepcopy(work.model).train(), compile=compile, inference=False) if trainable else None
    engine = Engine(name, infer, work.our_train_step(train) if train is not None else None,
                    "fast" if work.cuda else "auto")
    if not trainable:
        engine.skipped["train_step"] = "compiling the training graph takes minutes on a CPU: CUDA only"
    return engine


def hf_engine(work):
    if work.hf is None:
        return Engine("hf", None, None, None, skipped={"inference": work.hf_reason, "train_step": work.hf_reason})
    hf = work.hf
    train_hf = copy.deepcopy(hf).train()
    mask_labels = [t["masks"].float() for t in work.targets]
    class_labels = [t["labels"] for t in work.targets]

    def infer(images):
        out = hf(pixel_values=images)
        return {"pred_logits": out.class_queries_logits, "pred_masks": out.masks_queries_logits}

    def step():
        with work.autocast():
            loss = train_hf(pixel_values=work.train_images, mask_labels=mask_labels, class_labels=class_labels).loss
        loss.backward()
        train_hf.zero_grad(set_to_none=True)
    return Engine("hf", infer, step, None, ran="transformers MaskFormerForInstanceSegmentation")


def onnx_engine(work):
    why = {"train_step": "inference only"}
    try:
        path = os.path.join(tempfile.mkdtemp(prefix="bench_model_onnx_"), "model.onnx")
        mf.export_onnx(copy.deepcopy(work.model).cpu().eval(), path)
        runner = mf.OnnxModel(path, work.cfg.size_divisibility, device=work.device)
    except (ImportError, AttributeError, RuntimeError, ValueError) as e:
        reason = f"onnx export/runtime unavailable: {str(e).splitlines()[0][:120]}"
        return Engine("onnxruntime", None, None, None, skipped={"inference": reason, **why})
    return Engine("onnxruntime", runner, None, None, skipped=why, ran="onnxruntime " + runner.providers[0])


ENGINES = {"eager": eager_engine, "fast": fast_engine, "fast+compile": lambda w: fast_engine(w, compile=True),
           "hf": hf_engine, "onnxruntime": onnx_engine}
ENGINE_NAMES = tuple(ENGINES)


def rss_mib() -> float:
    """The process's resident-memory high-water mark (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ops_mode(engine):
    return contextlib.nullcontext() if engine.ops_mode is None else mf.ops.use(engine.ops_mode)


def warm_up(work, engine) -> tuple:
    """The engine's timed calls {(op, shape, batch): fn}, after one warm-up call of each (its
    compilation, allocator), with the final outputs at the first batch and what the ops ran."""
    calls, counts, outputs = {}, {}, None
    compiled = engine.name.endswith("compile")
    for b in work.batches if engine.infer is not None else ():
        def infer(images=work.images[b]):
            with ops_mode(engine), torch.no_grad(), work.autocast():
                return engine.infer(images)
        if compiled and b == work.batches[0]:
            progress(f"{engine.name}: compiling (warm-up, not timed)")
        with recording(engine, counts, first=b == work.batches[0]):
            first = infer()
        outputs = first if outputs is None else outputs
        calls["inference", f"{b}x3x{work.size}x{work.size}", b] = infer
    if engine.train_step is not None:
        def step():
            with ops_mode(engine):
                engine.train_step()
        if compiled:
            progress(f"{engine.name}: compiling the training step (warm-up, not timed)")
        with recording(engine, counts, first=True):
            step()
        b, s = work.train_batch, work.train_size
        calls["train_step", f"{b}x3x{s}x{s}", b] = step
    return calls, outputs, counts


def time_calls(calls: Dict[tuple, Callable], cuda: bool, repeats: int) -> Dict[tuple, tuple]:
    """(median, min, max) ms per call. On CUDA each through triton's do_bench; on a CPU the calls
    take turns, `repeats` rounds (A B C A B C ...), so that a machine's drift reaches every
    engine alike and the ratios of one run hold."""
    if cuda:
        return {key: time_fn(fn) for key, fn in calls.items()}
    times = {key: [] for key in calls}
    for round_ in range(repeats):
        progress(f"timing round {round_ + 1}/{repeats}")
        for key, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - start) * 1e3)
    return {key: (statistics.median(t), min(t), max(t)) for key, t in times.items()}


def engine_rows(work, engine, calls, timings) -> list:
    rows = []
    for (op, shape, batch), fn in calls.items():
        ms, low, high = timings[engine.name, op, shape, batch]
        row = Row(op, engine.name, shape, ms, low, high, peak_mib=peak_memory_mib(fn) if work.cuda else None,
                  extra={"img/s": round(batch * 1e3 / ms, 3)})
        progress(f"{engine.name:>12} {op:<10} {shape:<14} {ms:9.1f} ms  {batch * 1e3 / ms:8.2f} img/s")
        rows.append(row)
    for op, why in engine.skipped.items():
        rows.append(Row(op, engine.name, "-", None, None, None, extra={"skipped": why}))
    return rows


def recording(engine, counts, first):
    """Dispatch recording around an engine's first call of each kind (not under torch.compile,
    where ops.resolve runs once per trace: the compiled engine makes the fast engine's choices)."""
    if first and engine.ops_mode and not engine.name.endswith("compile"):
        return recording_dispatch(counts)
    return contextlib.nullcontext()


def relative_difference(outputs, reference):
    """max |a - b| / max |b| per final output (HF's tensors under our names)."""
    diffs = {}
    for ours, _ in OUTPUTS:
        a, b = outputs[ours].float(), reference[ours].float()
        diffs[ours] = (a - b).abs().max().item() / b.abs().max().clamp_min(1e-30).item()
    return diffs


def add_speedups(rows, outputs, dispatch, cuda):
    """Speedup over eager and HF on every timed row of the same op and shape; none where a fast
    engine on CUDA never ran one of its kernels (it would be timing the references)."""
    base = {(r.op, r.shape, r.impl): r.ms for r in rows if r.ms is not None}
    for row in rows:
        if row.ms is None:
            continue
        missing = [op for op in HOT_OPS if dispatch.get(row.impl, {}).get(op, {}).get("kernel", 0) == 0]
        if cuda and row.impl.startswith("fast") and missing:
            row.extra["speedup"] = f"n/a: never ran its kernel: {', '.join(missing)}"
            continue
        for ref in ("eager", "hf"):
            if ref != row.impl and (row.op, row.shape, ref) in base:
                row.extra[f"vs {ref}"] = f"{base[row.op, row.shape, ref] / row.ms:.2f}x"
        if row.op == "inference" and row.impl != "eager" and row.impl in outputs and "eager" in outputs:
            for key, diff in relative_difference(outputs[row.impl], outputs["eager"]).items():
                row.extra[f"rel diff {key}"] = f"{diff:.1e}"


def machine_slug() -> str:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = "cpu"
        with contextlib.suppress(OSError):
            with open("/proc/cpuinfo") as f:
                name = next((line.split(":", 1)[1] for line in f if line.startswith("model name")), name)
        name = f"cpu {name} {os.cpu_count()}c"
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def output_folder(args) -> Path:
    """--out, refused if it holds this preset's results; by default a new dated folder."""
    name = f"bench_model-{args.preset}"
    if args.out:
        out = Path(args.out)
        if any((out / f"{name}{ext}").exists() for ext in (".json", ".md", ".png")):
            print(f"bench_model: {out} already holds {name} results: choose another --out", file=sys.stderr)
            raise SystemExit(2)
        return out
    root = Path(__file__).resolve().parent / "results" / f"{machine_slug()}-{time.strftime('%Y-%m-%d')}"
    out, n = root, 1
    while (out / f"{name}.json").exists():
        n += 1
        out = root.with_name(f"{root.name}-{n}")
    return out


def plot(rows, path: Path, title: str) -> None:
    """img/s per engine, grouped by op and batch, each bar labelled with its speedup over eager."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r.ms is not None]
    groups = list(dict.fromkeys(f"{r.op}\n{r.shape}" for r in timed))
    engines = list(dict.fromkeys(r.impl for r in timed))
    width = 0.8 / max(len(engines), 1)
    fig, ax = plt.subplots(figsize=(2.2 + 2.4 * len(groups), 4.2))
    for i, engine in enumerate(engines):
        for j, group in enumerate(groups):
            row = next((r for r in timed if r.impl == engine and f"{r.op}\n{r.shape}" == group), None)
            if row is None:
                continue
            x = j + (i - (len(engines) - 1) / 2) * width
            ax.bar(x, row.extra["img/s"], width, color=f"C{i}", label=engine if j == 0 or engine not in
                   ax.get_legend_handles_labels()[1] else None)
            label = "1.00x" if engine == "eager" else row.extra.get("vs eager", "")
            ax.text(x, row.extra["img/s"], label, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("images / s (higher is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(rows, sections, meta, args, out: Optional[Path]) -> None:
    if args.json:
        report(rows, args.json, sections=sections)
        return
    out.mkdir(parents=True, exist_ok=True)
    name = f"bench_model-{args.preset}"
    report(rows, str(out / f"{name}.json"), sections={"settings": meta, **sections})
    title = (f"{meta['workload']} - {meta['device']}, {meta['threads']} threads, {meta['date']}")
    md = [f"# bench_model: {title}", "", markdown_table(rows), "", "## What each op ran", "",
          dict_table(sections["dispatch"]) if sections["dispatch"] else "(no ops recorded)"]
    if sections["profile"]:
        md += ["", "## Top ops by self time (profile)", "", dict_table(sections["profile"])]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    plot(rows, out / f"{name}.png", title)
    progress(f"wrote {out}/{name}.json, .md, .png")


def main(argv=None):
    args = parse_args(argv)
    out = None if args.json else output_folder(args)  # refused before minutes of timing, not after
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    progress(f"building {args.preset} and its HF twin on {device_name()}, {torch.get_num_threads()} threads")
    work = Workload(args, cuda)
    names = args.engines or [n for n in ENGINE_NAMES if not (args.no_compile and n == "fast+compile")]
    engines, calls, outputs, dispatch, rss = [], {}, {}, {}, {}
    for name in names:
        progress(f"engine {name}: building and warming up")
        engine = ENGINES[name](work)
        try:
            engine_calls, first_outputs, counts = warm_up(work, engine)
        except Exception as e:  # noqa: BLE001 -- e.g. an inductor codegen failure: a row saying so, not a lost run
            reason = f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
            progress(f"{name}: {reason}")
            engine.skipped = {op: reason for op in ("inference", "train_step")}
            engine_calls, first_outputs, counts = {}, None, {}
        engines.append((engine, engine_calls))
        calls.update({(name, *key): fn for key, fn in engine_calls.items()})
        if first_outputs is not None:
            outputs[name] = first_outputs
        dispatch[name] = counts or dispatch.get("fast", {}) if name == "fast+compile" else counts
        rss[name] = round(rss_mib())  # after building and warming this engine up
    timings = time_calls(calls, cuda, args.repeats)
    rows, profile = [], []
    for engine, engine_calls in engines:
        for row in engine_rows(work, engine, engine_calls, timings):
            row.extra["ran"] = dispatch_summary(dispatch[engine.name]) if dispatch[engine.name] else engine.ran or "-"
            if not cuda:
                row.extra["rss_high_water_mib"] = rss[engine.name]
            rows.append(row)
        if not args.no_profile and engine.name in ("eager", "fast") and engine_calls:
            key = next(k for k in engine_calls if k[0] == ("train_step" if cuda else "inference"))
            profile += top_ops(engine_calls[key], engine.name, cuda)
    add_speedups(rows, outputs, dispatch, cuda)
    records = [{"engine": e, "op": op, **c} for e, per_op in dispatch.items() for op, c in sorted(per_op.items())]
    meta = {"workload": work.label, "device": device_name(), "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"), "hf": work.hf_reason or "same weights through from_hf"}
    write_results(rows, {"dispatch": records, "profile": profile}, meta, args, out)


if __name__ == "__main__":
    main()
