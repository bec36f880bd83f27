"""Whole-model benchmark: eager reference vs fast engine, side by side in one run.

    python benchmarks/bench_model.py [--preset maskformer_r50_ade20k] [--batch 8] [--size 512]
                                     [--json PATH]

Times inference (forward) and a training step (forward + criterion + backward) with
ops.use("eager") and with the fast engine (ops "auto": Triton kernels on CUDA), reports
peak memory and how far the fast outputs are from the eager ones. Without CUDA it runs a
tiny configuration through the eager path only (the interpreter is no speed reference).
"""
import argparse
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
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    overrides = {} if cuda else {"num_decoder_layers": 2, "dim_feedforward": 256}
    batch, size = (args.batch, args.size) if cuda else (1, 64)
    cfg = mf.get_config(args.preset, **overrides)
    model = mf.build_model(cfg).to(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    targets = [{k: v.to(device) for k, v in t.items()}
               for t in random_targets(batch, size, cfg.num_classes, min(args.masks_per_image, 5 if not cuda else 100), g)]

    def train_step():
        out = model(images)
        loss = sum(model.criterion(out, targets).values())
        loss.backward()
        model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer():
        return model(images)

    engines = [("eager", "eager")] + ([("fast", "auto")] if cuda else [])
    rows, outputs = [], {}
    shape = f"{args.preset} {batch}x3x{size}x{size}"
    for name, mode in engines:
        with mf.ops.use(mode):
            model.eval()
            outputs[name] = infer()
            rows.append(measure("model_forward", name, shape, infer))
            model.train()
            torch.manual_seed(0)
            rows.append(measure("model_train_step", name, shape, train_step))
    if "fast" in outputs:
        for key in ("pred_logits", "pred_masks"):
            diff = (outputs["fast"][key].float() - outputs["eager"][key].float()).abs().max().item()
            rows[2].extra[f"max|fast-eager| {key}"] = f"{diff:.2e}"
        for i in (2, 3):
            rows[i].extra["speedup"] = f"{rows[i - 2].ms / rows[i].ms:.2f}x"
    report(rows, args.json)


if __name__ == "__main__":
    main()
