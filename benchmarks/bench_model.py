"""Whole-model benchmark: eager reference vs fast engine, side by side in one run.

    python benchmarks/bench_model.py [--preset maskformer_r50_ade20k] [--batch 8] [--size 512]
                                     [--amp bf16|fp16|none] [--compile] [--json PATH]

Times inference (forward) and a training step (forward + criterion + backward) with
ops.use("eager") and with the fast engine (ops "auto": Triton kernels on CUDA), reports
peak memory and how far the fast outputs are from the eager ones. Both run under the same
autocast (bf16 by default on CUDA, as training with ``--amp bf16``). ``--compile`` adds the
fast engine with the model under torch.compile (inductor; its compilation, a minute or more,
is warm-up and not timed). Without CUDA it runs a tiny configuration through the eager path
only (the interpreter is no speed reference).
"""
import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import maskformer_fast as mf  # noqa: E402
from benchmarks.common import measure, report  # noqa: E402


def random_targets(batch, size, num_classes, masks_per_image, generator):
    targets = []
    for _ in range(batch):
        labels = torch.randperm(num_classes, generator=generator)[:masks_per_image]
        owner = torch.randint(0, masks_per_image, (size // 16, size // 16), generator=generator)
        owner = owner.repeat_interleave(16, 0).repeat_interleave(16, 1)
        masks = owner[None] == torch.arange(masks_per_image)[:, None, None]
        targets.append({"labels": labels, "masks": masks})
    return targets


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="maskformer_r50_ade20k")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--masks-per-image", type=int, default=20)
    p.add_argument("--amp", choices=("bf16", "fp16", "none"), default=None, help="default: bf16 on CUDA, none on CPU")
    p.add_argument("--compile", action="store_true", help="also time the fast engine under torch.compile (CUDA)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    amp = args.amp or ("bf16" if cuda else "none")
    autocast = (contextlib.nullcontext if amp == "none" else
                lambda: torch.autocast(device, dtype=torch.bfloat16 if amp == "bf16" else torch.float16))
    overrides = {} if cuda else {"num_decoder_layers": 2, "dim_feedforward": 256}
    batch, size = (args.batch, args.size) if cuda else (1, 64)
    cfg = mf.get_config(args.preset, **overrides)
    model = mf.build_model(cfg).to(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    targets = [{k: v.to(device) for k, v in t.items()}
               for t in random_targets(batch, size, cfg.num_classes, min(args.masks_per_image, 5 if not cuda else 100), g)]

    compiled = torch.compile(model) if args.compile and cuda else None

    def train_step(net):
        with autocast():
            out = net(images)
            loss = sum(model.criterion(out, targets).values())
        loss.backward()
        model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer(net):
        with autocast():
            return net(images)

    engines = [("eager", "eager", model)]
    if cuda:
        engines.append(("fast", "auto", model))
    if compiled is not None:
        engines.append(("fast+compile", "auto", compiled))
    rows, outputs = [], {}
    shape = f"{args.preset} {batch}x3x{size}x{size} amp={amp}"
    for name, mode, net in engines:
        with mf.ops.use(mode):
            model.eval()
            outputs[name] = infer(net)
            rows.append(measure("model_forward", name, shape, lambda: infer(net)))
            model.train()
            torch.manual_seed(0)
            rows.append(measure("model_train_step", name, shape, lambda: train_step(net)))
    eager_forward, eager_step = rows[0], rows[1]
    for name, forward, step in zip([e[0] for e in engines[1:]], rows[2::2], rows[3::2]):
        for key in ("pred_logits", "pred_masks"):
            diff = (outputs[name][key].float() - outputs["eager"][key].float()).abs().max().item()
            forward.extra[f"max|{name}-eager| {key}"] = f"{diff:.2e}"
        forward.extra["speedup"] = f"{eager_forward.ms / forward.ms:.2f}x"
        step.extra["speedup"] = f"{eager_step.ms / step.ms:.2f}x"
    report(rows, args.json)


if __name__ == "__main__":
    main()
