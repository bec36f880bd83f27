"""Whole-model benchmark: eager reference vs fast engine, side by side in one run.

    python benchmarks/bench_model.py [--preset maskformer_r50_ade20k] [--batch 8] [--size 512]
                                     [--amp bf16|fp16|none] [--compile] [--no-profile] [--json PATH]

Times inference (forward) and a training step (forward + criterion + backward) with
ops.use("eager") and with the fast engine, reports peak memory and how far the fast outputs are
from the eager ones. Both run under the same autocast (bf16 by default on CUDA, as training
with ``--amp bf16``). ``--compile`` adds the fast engine with the model under torch.compile
(inductor; its compilation, a minute or more, is warm-up and not timed).

The fast engine runs under ops.use("triton"), not "auto": "auto" falls back to the eager
references when the kernels do not import, and would time eager twice and call it 1.00x. Each
engine's rows record which implementation every hot op ran (counted through ops.resolve), and a
speedup is only reported when every op ran its kernel. A torch.profiler pass over one training
step per engine lists the top kernels by device time (section "profile" of the JSON).

Without CUDA it runs a tiny configuration through the eager path only and writes the fast rows
untimed, saying why: the kernels would run in the Triton interpreter, which is no speed reference.
"""
import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import maskformer_fast as mf  # noqa: E402
from benchmarks.common import Row, measure, report  # noqa: E402

HOT_OPS = ("group_norm_act", "attention", "mask_costs", "mask_losses")
NO_CUDA = "no CUDA: the kernels would run in the Triton interpreter (no speed reference)"


def random_targets(batch, size, num_classes, masks_per_image, generator):
    targets = []
    for _ in range(batch):
        labels = torch.randperm(num_classes, generator=generator)[:masks_per_image]
        owner = torch.randint(0, masks_per_image, (size // 16, size // 16), generator=generator)
        owner = owner.repeat_interleave(16, 0).repeat_interleave(16, 1)
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


def top_kernels(step, engine, cuda, top=15):
    """The top `top` kernels (CUDA) or CPU ops by self time in one profiled call of step."""
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
    p.add_argument("--preset", default="maskformer_r50_ade20k")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--masks-per-image", type=int, default=20)
    p.add_argument("--amp", choices=("bf16", "fp16", "none"), default=None, help="default: bf16 on CUDA, none on CPU")
    p.add_argument("--compile", action="store_true", help="also time the fast engine under torch.compile (CUDA)")
    p.add_argument("--no-profile", action="store_true", help="skip the torch.profiler pass")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


class Workload:
    """The model, one batch and the two timed calls (forward; forward + criterion + backward)."""

    def __init__(self, args, cuda):
        self.device = "cuda" if cuda else "cpu"
        self.amp = args.amp or ("bf16" if cuda else "none")
        overrides = {} if cuda else {"num_decoder_layers": 2, "dim_feedforward": 256}
        batch, size = (args.batch, args.size) if cuda else (1, 64)
        cfg = mf.get_config(args.preset, **overrides)
        self.model = mf.build_model(cfg).to(self.device)
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(batch, 3, size, size, generator=g).to(self.device)
        masks = min(args.masks_per_image, 100 if cuda else 5)
        self.targets = [{k: v.to(self.device) for k, v in t.items()}
                        for t in random_targets(batch, size, cfg.num_classes, masks, g)]
        self.shape = f"{args.preset} {batch}x3x{size}x{size} amp={self.amp}"

    def autocast(self):
        if self.amp == "none":
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)

    def train_step(self, net):
        with self.autocast():
            out = net(self.images)
            loss = sum(self.model.criterion(out, self.targets).values())
        loss.backward()
        self.model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer(self, net):
        with self.autocast():
            return net(self.images)


def run_engine(work, name, mode, net, profile):
    """(forward row, train-step row, forward outputs, dispatch counts, profile records) of one engine."""
    counts = {}
    # counted on the uncompiled model only: under torch.compile, resolve runs once per trace
    record = recording_dispatch(counts) if net is work.model else contextlib.nullcontext()
    with mf.ops.use(mode):
        with record:  # also the warm-up: kernel compilation, allocator
            work.model.eval()
            outputs = work.infer(net)
            work.model.train()
            work.train_step(net)
        work.model.eval()
        forward = measure("model_forward", name, work.shape, lambda: work.infer(net))
        work.model.train()
        torch.manual_seed(0)
        step = measure("model_train_step", name, work.shape, lambda: work.train_step(net))
        prof = top_kernels(lambda: work.train_step(net), name, work.device == "cuda") if profile else []
    return forward, step, outputs, counts, prof


def compare_with_eager(rows, outputs, dispatch):
    """Output differences and speedups of every timed fast row; no speedup where an op never
    ran its kernel (that row would be timing the reference)."""
    eager_forward, eager_step = rows[0], rows[1]
    for forward, step in zip(rows[2::2], rows[3::2]):
        if forward.ms is None:
            continue
        name = forward.impl
        for key in ("pred_logits", "pred_masks"):
            diff = (outputs[name][key].float() - outputs["eager"][key].float()).abs().max().item()
            forward.extra[f"max|{name}-eager| {key}"] = f"{diff:.2e}"
        missing = [op for op in HOT_OPS if dispatch[name].get(op, {}).get("kernel", 0) == 0]
        for row, base in ((forward, eager_forward), (step, eager_step)):
            row.extra["speedup"] = (f"n/a: never ran its kernel: {', '.join(missing)}" if missing
                                    else f"{base.ms / row.ms:.2f}x")


def main(argv=None):
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    work = Workload(args, cuda)
    engines = [("eager", "eager", work.model)]
    if cuda:
        engines.append(("fast", "triton", work.model))
    if cuda and args.compile:
        engines.append(("fast+compile", "triton", torch.compile(work.model)))
    rows, outputs, dispatch, profile = [], {}, {}, []
    for name, mode, net in engines:
        forward, step, outputs[name], counts, prof = run_engine(work, name, mode, net, not args.no_profile)
        dispatch[name] = counts or dispatch["fast"]  # the compiled model makes the fast engine's choices
        forward.extra["ran"] = dispatch_summary(dispatch[name])
        rows += [forward, step]
        profile += prof
    if not cuda:
        rows += [Row(op, "fast", work.shape, None, None, None, extra={"skipped": NO_CUDA})
                 for op in ("model_forward", "model_train_step")]
    compare_with_eager(rows, outputs, dispatch)
    matcher = mf.matching.resolve_backend(work.model.criterion.matcher_backend, torch.device(work.device))
    for row in rows[1::2]:
        row.extra["matcher"] = matcher
    records = [{"engine": e, "op": op, **c} for e, per_op in dispatch.items() for op, c in sorted(per_op.items())]
    report(rows, args.json, sections={"dispatch": records, "profile": profile})


if __name__ == "__main__":
    main()
