"""Train and evaluate MaskFormer on any dataset of maskformer_fast.dataset_specs (ADE20K, ADE20K-Full,
ADE20K panoptic, COCO panoptic, COCO-Stuff, Cityscapes, Mapillary Vistas) or on custom data
(``--dataset semantic_folder`` or ``coco_panoptic_custom``, see train/datasets.py).

    python train/train.py --preset maskformer_r50_ade20k --dataset ade20k --data-root DIR \
        --output out/r50_ade [--max-iter N] [--batch-size B] [--crop S] [--engine eager|fast|auto] \
        [--compile] [--amp none|bf16|fp16] [--seed S] [--deterministic] [--device DEV] \
        [--num-workers N] [--checkpoint-period N] [--keep-checkpoints N] [--eval-period N] \
        [--eval-split train|val] [--tta] [--no-progress] [--resume] \
        [--backbone-weights FILE | --init-weights FILE] [--eval-only --weights FILE] [KEY=VALUE ...]
    torchrun --nproc_per_node 8 train/train.py ...   # data parallel, same arguments

Without ``--data-root`` it writes a small synthetic dataset of the chosen format under
OUTPUT/synthetic_data and trains a CPU-sized model on it: the preset (default
maskformer_r50_<dataset>) with ``SYNTHETIC_OVERRIDES`` (trainable BN, heads 64 wide, 4 heads,
FFN 128, 2 decoder layers, 16 queries; 64x64 crops at scales 0.75-1.25, batch 4, 300
iterations, lr 5e-4 poly, backbone x1.0; the preset's classes and dropout stay).
``python train/train.py`` alone: R50 on 16 + 4 synthetic ADE20K images (64x85), 150 classes,
dropout 0.1, a few minutes on two cores, then prints the mIoU of the 4 validation images.

A new run starts from ``--backbone-weights FILE`` (ImageNet-pretrained backbone in a released
format: Detectron2 ``.pkl``, torchvision/timm/Swin ``.pth``/``.safetensors``, HF folder; the rest
random), ``--init-weights FILE`` (a whole MaskFormer checkpoint to fine-tune; another number of
classes re-initialises the class head), or random weights; ``--resume`` takes everything from
its checkpoint instead.
Custom data names its own classes (classes.json, or the panoptic json's categories): num_classes,
the class names and colours (and panoptic things) are taken from the data, said so at start-up,
and recorded in the checkpoints' config, where predict finds them. A custom dataset trains the
recipe of ``maskformer_r50_ade20k`` (semantic_folder) or ``maskformer_r50_coco_panoptic``
(coco_panoptic_custom) unless ``--preset`` names another.

SIGTERM / SIGINT / SIGUSR1 stop training at the end of the current iteration with a
checkpoint of it; the process then exits with 128 + the signal number (``--resume`` goes on).

Reproducibility: the sample order of epoch e is DistributedSampler's permutation for
(seed, e), and a sample's augmentation draws from a generator seeded by (seed, epoch,
rank, position), so the data stream depends on nothing but the seed and the position,
which checkpoints record together with every RNG state. A run killed and resumed with
``--resume`` therefore repeats the losses of an uninterrupted run (exactly on CPU).
"""
import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import signal
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import maskformer_fast as mf  # noqa: E402
from maskformer_fast import ops  # noqa: E402
from maskformer_fast.cli_errors import run_cli  # noqa: E402
from maskformer_fast.dataset_specs import get_dataset_spec  # noqa: E402
from maskformer_fast.predictor import resolve_device  # noqa: E402
from maskformer_fast.weights import Weights, config_for_weights, load_weights, read_weights  # noqa: E402
from train.checkpoint import (CheckpointManager, atomic_write_text,  # noqa: E402
                              remove_stale_temporaries, rng_state, set_rng_state)
from train.check_data import QUICK_SCAN_MAX, require_clean  # noqa: E402
from train.datasets import DATASETS, DatasetInfo, SegmentationDataset, build_dataset  # noqa: E402
from train.make_synthetic import make_synthetic  # noqa: E402
from train.preemption import StopRequest, ignore_stop_signals  # noqa: E402
from train.resume import check_resume, restore  # noqa: E402
from train.run_dir import OutputLock, check_fresh_output, default_output  # noqa: E402
from train.solver import build_optimizer, build_scheduler  # noqa: E402
from train.evaluate import evaluate  # noqa: E402
from train.metrics_log import MetricsLog  # noqa: E402
from train.transforms import PanopticTrainMapper, SemanticTrainMapper, collate  # noqa: E402

DEFAULT_OUTPUT = os.path.join("output", "default")
# A model and recipe small enough for a CPU: used when no --data-root is given (synthetic data).
# ResNet-50 stays; the heads are narrowed, BatchNorm trains (random init: no pretrained weights
# offline), and the lr is raised for a short schedule.
SYNTHETIC_OVERRIDES = dict(
    num_decoder_layers=2, hidden_dim=64, conv_dim=64, mask_dim=64, dim_feedforward=128, num_queries=16,
    nheads=4, frozen_bn=False, crop_size=(64, 64), min_scale=0.75, max_scale=1.25, batch_size=4,
    max_iter=300, base_lr=5e-4, backbone_lr_multiplier=1.0, warmup_iters=0, lr_schedule="poly",
    test_short_side=64, test_max_size=256)
SYNTHETIC_IMAGES, SYNTHETIC_SIZE = 16, 64


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train / evaluate MaskFormer (see the module docstring).")
    p.add_argument("--preset", default=None,
                   help="config preset (default: with --eval-only the --weights checkpoint's config, else "
                        "maskformer_r50_<dataset>)")
    p.add_argument("--dataset", default=None, choices=DATASETS,
                   help="default: the preset's dataset (ade20k without --preset); another dataset than the "
                        "preset's needs num_classes=N, except semantic_folder / coco_panoptic_custom, whose "
                        "classes come from the data")
    p.add_argument("--data-root", default=None,
                   help="dataset folder; without it a synthetic dataset is written under OUTPUT/synthetic_data")
    p.add_argument("--output", default=None,
                   help=f"output folder (default {DEFAULT_OUTPUT}; when that holds a run, the first free "
                        f"{DEFAULT_OUTPUT}_N)")
    p.add_argument("--max-iter", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="total over all processes")
    p.add_argument("--crop", type=int, default=None, help="square crop size")
    ops.add_engine_argument(p, "--eval-only with a non-eager engine evaluates mf.optimize(model), as predict does.")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-period", type=int, default=5000, help="iterations (default 5000)")
    p.add_argument("--keep-checkpoints", type=int, default=3, help="newest checkpoints kept (default 3)")
    p.add_argument("--eval-period", type=int, default=0, help="0: evaluate at the end only")
    p.add_argument("--eval-split", default="val", choices=("train", "val"))
    p.add_argument("--tta", action="store_true", help="multi-scale + flip semantic evaluation")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last_checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="let a new run write into an OUTPUT that holds another run (its same-named files are "
                        "replaced; its other checkpoints stay)")
    p.add_argument("--check-data", action="store_true",
                   help="open every image/annotation pair of the train and eval splits, list the bad ones, stop")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--weights", default=None,
                   help="model weights for --eval-only: a train.py checkpoint (its config is used unless --preset "
                        "is given), a bare state dict, or an official .pkl/.pth")
    p.add_argument("--backbone-weights", default=None, metavar="FILE",
                   help="start from these ImageNet-pretrained backbone weights (Detectron2 R-50/R-101/R-103 .pkl, "
                        "Swin .pkl/.pth, torchvision/timm .pth/.safetensors, HF file or folder; each preset's "
                        "official file: its config's pretrained_backbone)")
    p.add_argument("--init-weights", default=None, metavar="FILE",
                   help="fine-tune from a whole MaskFormer checkpoint (train.py, official .pkl/.pth, HF folder or "
                        "state dict); with another number of classes the class head is re-initialised")
    p.add_argument("--num-workers", type=int, default=None,
                   help="data loader processes (default: 4 on CUDA, 0 on CPU where they compete with training)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--deterministic", action="store_true", help="torch deterministic algorithms")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config field overrides")
    args = p.parse_args(argv)
    if args.eval_only and not args.weights:
        p.error("--eval-only needs --weights FILE")
    if args.resume and args.overwrite:
        p.error("--resume continues the run in --output, --overwrite replaces it: choose one")
    if args.backbone_weights and args.init_weights:
        p.error("--init-weights loads the whole model, backbone included: give it or --backbone-weights, not both")
    if args.eval_only and (args.backbone_weights or args.init_weights):
        p.error("--eval-only evaluates --weights FILE; --backbone-weights/--init-weights start a training run")
    for name, low in (("max_iter", 1), ("batch_size", 1), ("crop", 1), ("checkpoint_period", 1),
                      ("keep_checkpoints", 1), ("eval_period", 0), ("num_workers", 0)):
        value = getattr(args, name)
        if value is not None and value < low:
            p.error(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    if args.output is None:
        args.output = default_output(DEFAULT_OUTPUT, args.resume or args.eval_only or args.check_data)
        if args.output != DEFAULT_OUTPUT and int(os.environ.get("RANK", "0")) == 0:
            print(f"note: {DEFAULT_OUTPUT} holds an earlier run; this one writes to {args.output}")
    return args


# --------------------------------------------------------------------------- distributed


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_arg: Optional[str]) -> Tuple[Dist, torch.device]:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device_arg).type == "cuda"  # a GPU that is not there: one line, exit 2
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return Dist(dist.get_rank(), dist.get_world_size(), local_rank), device
    return Dist(), device


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter, to check that data-parallel ranks agree (buffers such as
    BatchNorm running statistics are per rank between DDP's broadcasts, so they are left out)."""
    h = hashlib.sha256()
    for name, tensor in model.named_parameters():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def all_reduce_mean(values: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= d.world
    return values


# --------------------------------------------------------------------------- data


class TrainStream(torch.utils.data.Sampler):
    """Endless per-rank stream of (dataset index, epoch, position), starting at a saved position.

    Epoch e's order is ``DistributedSampler(shuffle=True, seed).set_epoch(e)`` for this rank;
    positions count samples within the rank's share of that epoch.
    """

    def __init__(self, dataset: SegmentationDataset, seed: int, d: Dist, epoch: int = 0, position: int = 0):
        self.sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=d.world, rank=d.rank,
                                                           shuffle=True, seed=seed)
        self.epoch, self.position = epoch, position

    def __iter__(self) -> Iterator[Tuple[int, int, int]]:
        epoch, start = self.epoch, self.position
        while True:
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)
            for pos in range(start, len(order)):
                yield order[pos], epoch, pos
            epoch, start = epoch + 1, 0


class MappedDataset(torch.utils.data.Dataset):
    """Loads and augments a sample from a (index, epoch, position) key with its own seeded RNG."""

    def __init__(self, dataset: SegmentationDataset, mapper, seed: int, rank: int, num_classes: int):
        self.dataset, self.mapper, self.seed, self.rank = dataset, mapper, seed, rank
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int, int]) -> Dict:
        index, epoch, pos = key
        rng = np.random.default_rng([self.seed, epoch, self.rank, pos])
        sample = self.mapper(self.dataset.load(index), rng)
        if len(sample["labels"]) and int(sample["labels"].max()) >= self.num_classes:
            raise ValueError(f"{self.dataset.records[index]['file_name']}: class {int(sample['labels'].max())} "
                             f"is out of range for the model's num_classes={self.num_classes}")
        sample["position"] = (epoch, pos)
        return sample


def collate_train(batch: List[Dict], pixel_mean, pixel_std):
    images, targets, _ = collate(batch, pixel_mean, pixel_std)
    return images, targets, batch[-1]["position"]


# DatasetSpec.train_mapper -> the mapper: COCO panoptic trains with the DETR mapper, the others
# (ADE20K panoptic too) with the semantic one
TRAIN_MAPPERS = {"semantic": SemanticTrainMapper, "detr_panoptic": PanopticTrainMapper}


def build_train_loader(dataset: SegmentationDataset, cfg, seed: int, d: Dist, per_rank_batch: int,
                       num_workers: int, position: Dict) -> Iterator:
    mapper = TRAIN_MAPPERS[get_dataset_spec(dataset.info.name).train_mapper].from_config(cfg)
    loader = torch.utils.data.DataLoader(
        MappedDataset(dataset, mapper, seed, d.rank, cfg.num_classes),
        sampler=TrainStream(dataset, seed, d, position["epoch"], position["index"]),
        batch_size=per_rank_batch, num_workers=num_workers,
        collate_fn=functools.partial(collate_train, pixel_mean=cfg.pixel_mean, pixel_std=cfg.pixel_std),
        # its own generator: creating the iterator must not consume the global torch RNG
        generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0,
        worker_init_fn=ignore_stop_signals)
    return iter(loader)


def synthetic_root(args) -> str:
    """Write (once) the synthetic dataset used when no --data-root is given."""
    root = os.path.join(args.output, "synthetic_data", args.dataset)
    done = os.path.join(root, ".complete")
    if not os.path.exists(done):
        if int(os.environ.get("RANK", "0")) == 0:
            # train.py's own folder (a write killed before .complete is redone)
            make_synthetic(args.dataset, root, SYNTHETIC_IMAGES, SYNTHETIC_SIZE, args.seed, overwrite=True)
            open(done, "w").close()
        else:
            while not os.path.exists(done):
                time.sleep(0.2)
    return root


# --------------------------------------------------------------------------- config


def build_config(args, weights: Optional[Weights] = None) -> "mf.MaskFormerConfig":
    """--preset, else the saved config of an --eval-only checkpoint, else maskformer_r50_<dataset>
    (with ``SYNTHETIC_OVERRIDES`` on synthetic data); then the command line's overrides. Sets
    ``args.dataset`` to the config's dataset when it was not given, and refuses a dataset other
    than the preset's unless num_classes is overridden (the preset's recipe is then kept)."""
    saved = weights is not None and weights.config is not None and args.preset is None
    overrides = dict(SYNTHETIC_OVERRIDES) if args.data_root is None and not saved else {}
    cli = {}
    for item in args.overrides:
        if "=" not in item:
            raise ValueError(f"config override {item!r} is not KEY=VALUE")
        key, value = item.split("=", 1)
        cli[key.strip()] = value
    for key, value in (("max_iter", args.max_iter), ("batch_size", args.batch_size)):
        if value is not None:
            cli[key] = value
    if args.crop is not None:
        cli["crop_size"] = (args.crop, args.crop)
    spec = get_dataset_spec(args.dataset or "ade20k")
    cfg = config_for_weights(weights, args.preset, f"maskformer_r50_{spec.recipe_of or spec.name}", {**overrides, **cli})
    if args.dataset is None:
        args.dataset = cfg.dataset
    elif args.dataset != cfg.dataset:
        if "num_classes" not in cli and not spec.classes_from_data:
            raise ValueError(f"--dataset {args.dataset} does not match preset {cfg.name} (dataset {cfg.dataset}, "
                             f"{cfg.num_classes} classes): use a {args.dataset} preset, or override num_classes=N "
                             f"to train this preset's recipe on {args.dataset}")
        cfg = dataclasses.replace(cfg, dataset=args.dataset, ignore_value=spec.ignore_label, class_names=(),
                                  class_colors=(), thing_class_ids=())
    return cfg


def config_from_data(cfg, info: DatasetInfo, log: Callable[..., None]) -> "mf.MaskFormerConfig":
    """A dataset that names its own classes (custom data) sets num_classes, the names, colours and
    things of the config (so checkpoints record them); the others leave it as it is."""
    if not get_dataset_spec(info.name).classes_from_data:
        return cfg
    names = info.class_names
    new = dataclasses.replace(cfg, num_classes=len(names), class_names=tuple(names),
                              class_colors=tuple(v for color in info.class_colors for v in color),
                              thing_class_ids=tuple(info.thing_classes))
    source = info.panoptic_json or "classes.json"
    change = f" (the config said {cfg.num_classes})" if cfg.num_classes != new.num_classes else ""
    log(f"note: {new.num_classes} classes from the data ({source}){change}: "
        + ", ".join(names[:8]) + (", ..." if len(names) > 8 else ""))
    return new


# --------------------------------------------------------------------------- training


def amp_context(amp: str, device: torch.device):
    if amp == "none":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return functools.partial(torch.autocast, device_type=device.type, dtype=dtype)


@dataclasses.dataclass
class Job:
    """What every kind of run shares: the arguments, where it runs, its config, data and model."""
    args: argparse.Namespace
    d: Dist
    device: torch.device
    cfg: "mf.MaskFormerConfig"
    root: str
    eval_set: SegmentationDataset
    log: Callable[..., None]
    metrics: Optional[MetricsLog] = None
    model: Optional[torch.nn.Module] = None


@dataclasses.dataclass
class TrainState:
    """Everything one training step changes. ``forward`` is the module the step calls: the model,
    or its DDP / compiled wrapper (the state dict always comes from ``model``)."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    iteration: int = 0
    forward: Optional[Callable] = None
    autocast: Callable = contextlib.nullcontext
    clip_grad_norm: float = 0.0


def train_step(state: TrainState, batch: Tuple[torch.Tensor, List[Dict]]) -> Dict[str, torch.Tensor]:
    """One optimizer step on (images, targets) already on the model's device; the losses it took.
    A non-finite loss raises FloatingPointError before any weight changes."""
    images, targets = batch
    with state.autocast():
        out = (state.forward or state.model)(images)
        losses = state.model.criterion(out, targets)
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at iteration {state.iteration + 1}: "
                                 + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items()))
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.unscale_(state.optimizer)
    if state.clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), state.clip_grad_norm)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    state.iteration += 1
    return losses


def run(args) -> Dict[str, float]:
    d, device = init_distributed(args.device)
    try:
        with ops.use(args.engine), output_folder(args, d):
            job, weights = prepare(args, d, device)
            if args.check_data:
                return check_data(job)
            return evaluate_only(job, weights) if args.eval_only else train(job)
    finally:
        if d.world > 1:
            dist.destroy_process_group()


@contextlib.contextmanager
def output_folder(args, d: Dist):
    """Rank 0 holds OUTPUT's lock for the run; a new training run refuses a folder holding another
    run (unless --overwrite); temporary files of killed writes are removed."""
    if not d.main:
        yield
        return
    if not (args.resume or args.eval_only or args.check_data):
        check_fresh_output(args.output, args.overwrite)
    os.makedirs(args.output, exist_ok=True)
    with OutputLock(args.output) as lock:
        if lock.stale:
            print(f"note: took over the lock of a process that is gone ({lock.stale})")
        removed = remove_stale_temporaries(args.output)
        if removed:
            print(f"note: removed {len(removed)} temporary file(s) of an interrupted write: {', '.join(removed)}")
        yield


def run_header(args, cfg, model, root: str, device: torch.device, d: Dist) -> str:
    """What this run is about to do, printed before the progress bar."""
    params = sum(p.numel() for p in model.parameters())
    where = f"{device}" + (f" x{d.world} processes" if d.world > 1 else "")
    if device.type == "cpu":
        where += f", {torch.get_num_threads()} threads"
    job = (f"evaluate {args.weights}" if args.eval_only else
           f"train {cfg.max_iter} iterations, batch {cfg.batch_size}, crop {'x'.join(map(str, cfg.crop_size))}")
    return (f"{cfg.name}: {params / 1e6:.1f} M parameters, {cfg.num_classes} classes | {job} | device {where}, "
            f"engine {args.engine}, amp {args.amp}\n  data: {args.dataset} at {root} | output: {args.output}")


def prepare(args, d: Dist, device: torch.device) -> Tuple[Job, Optional[Weights]]:
    """Config, data and (unless --check-data) the seeded model; the --eval-only weights as read."""
    os.makedirs(args.output, exist_ok=True)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    weights = read_weights(args.weights) if args.eval_only else None
    cfg = build_config(args, weights)
    root = args.data_root if args.data_root is not None else synthetic_root(args)
    eval_set = build_dataset(args.dataset, root, args.eval_split)
    log = print if d.main else (lambda *a, **k: None)
    cfg = config_from_data(cfg, eval_set.info, log)
    job = Job(args, d, device, cfg, root, eval_set, log=log)
    if not args.check_data:
        job.metrics = MetricsLog(args.output, d.main)
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        job.model = mf.build_model(cfg).to(device)
        job.log(run_header(args, cfg, job.model, root, device, d))
        if not args.eval_only:
            load_start_weights(job)
    return job, weights


def load_start_weights(job: Job) -> None:
    """--init-weights or --backbone-weights into the new model, and a line saying what training
    starts from. A --resume run takes every weight from its checkpoint (Detectron2's resume_or_load)."""
    args, cfg = job.args, job.cfg
    flag, given = (("--init-weights", args.init_weights) if args.init_weights else
                   ("--backbone-weights", args.backbone_weights))
    if args.resume:
        if given:
            job.log(f"note: --resume takes the weights from the checkpoint in {args.output}; {flag} {given} is not loaded")
        return
    if args.init_weights:
        job.log("weights: " + mf.init_from_checkpoint(job.model, args.init_weights).summary())
    elif args.backbone_weights:
        job.log("weights: " + mf.load_backbone_weights(job.model, args.backbone_weights).summary())
    else:
        job.log("weights: random initialisation (no --backbone-weights or --init-weights)")
        if args.data_root is not None and job.d.main:  # a real run that cannot reach the paper's numbers
            print(f"train.py: warning: {cfg.name} trains from a random backbone; its official config starts from "
                  f"{cfg.pretrained_backbone} (pass it with --backbone-weights FILE; README 'Train from ImageNet "
                  f"weights')", file=sys.stderr)


def evaluate_only(job: Job, weights: Weights) -> Dict[str, float]:
    """--eval-only: the --weights checkpoint on the eval split; label maps saved as predict writes them."""
    args, model = job.args, job.model
    load_weights(model, args.weights, weights)
    if args.engine != "eager":  # the model predict runs (same label maps)
        model = mf.optimize(model, compile=False, amp="none")
    results = evaluate(model, job.eval_set, job.cfg, job.device, job.d, args.amp, os.path.join(args.output, "eval"),
                       args.tta, save_semantic=True)
    job.metrics.write({"iter": 0, **results, "weights": args.weights}, "eval")
    job.log("evaluation: " + ", ".join(f"{k} {v:.2f}" for k, v in results.items()))
    job.metrics.close()
    return results


def train(job: Job) -> Dict[str, float]:
    """Train from iteration 0 or the --resume checkpoint to max_iter; the last evaluation's metrics."""
    args, cfg, d = job.args, job.cfg, job.d
    train_set = build_dataset(args.dataset, job.root, "train")
    require_same_classes(train_set.info, job.eval_set.info)
    scan = [(s, ds) for s, ds in ((args.eval_split, job.eval_set), ("train", train_set)) if len(ds) <= QUICK_SCAN_MAX]
    if d.main and scan:
        require_clean(scan, cfg.num_classes)  # small datasets: find bad files before the first iteration
    if cfg.batch_size % d.world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {d.world} processes")
    state = new_train_state(job)
    checkpoints = CheckpointManager(args.output, args.keep_checkpoints)
    position = resume_into(job, state, checkpoints) if args.resume else {"epoch": 0, "index": 0}
    if position is None:  # finished already
        job.metrics.close()
        return {}
    if d.main:  # after the resume checks: a refused resume leaves the run's config.json alone
        atomic_write_text(json.dumps(dataclasses.asdict(cfg), indent=1), os.path.join(args.output, "config.json"))
    job.metrics.truncate_after(state.iteration)  # a fresh run starts a fresh log; a resumed one drops later records
    state.forward = training_forward(job)
    num_workers = args.num_workers if args.num_workers is not None else (4 if job.device.type == "cuda" else 0)
    data = build_train_loader(train_set, cfg, args.seed, d, cfg.batch_size // d.world, num_workers, position)
    results, stop = train_loop(job, state, data, checkpoints)
    if d.world > 1:
        check_ranks_in_sync(job)
    if d.main and results:
        print("final " + ", ".join(f"{k} {v:.2f}" for k, v in results.items())
              + f" after {cfg.max_iter} iterations; output in {args.output}")
    job.metrics.close()
    if stop is not None:  # not finished: 128 + signal number, as if the signal had ended it
        raise SystemExit(128 + (stop.signum or signal.SIGTERM))
    return results


def require_same_classes(train: DatasetInfo, evaluated: DatasetInfo) -> None:
    """The splits of a dataset that names its own classes must name the same ones."""
    if (train.class_names, train.thing_classes) != (evaluated.class_names, evaluated.thing_classes):
        where = f"{train.panoptic_json} and {evaluated.panoptic_json}" if train.panoptic_json else "the splits"
        raise ValueError(f"{train.name}: {where} list different classes ({len(train.class_names)} vs "
                         f"{len(evaluated.class_names)}, or other names or things)")


def new_train_state(job: Job) -> TrainState:
    optimizer = build_optimizer(job.model, job.cfg)
    return TrainState(job.model, optimizer, build_scheduler(optimizer, job.cfg),
                      torch.amp.GradScaler(job.device.type, enabled=job.args.amp == "fp16"),
                      autocast=amp_context(job.args.amp, job.device), clip_grad_norm=job.cfg.clip_grad_norm)


def resume_into(job: Job, state: TrainState, checkpoints: CheckpointManager) -> Optional[Dict]:
    """--resume: restore the newest checkpoint into ``state`` and the RNGs; its data position, or
    None when the run already reached max_iter."""
    latest, saved = check_resume(job.args.output, checkpoints, job.cfg, job.log)
    if saved["iter"] >= job.cfg.max_iter:
        job.log(f"{job.args.output}: the run is finished (iteration {saved['iter']} of max_iter {job.cfg.max_iter}); "
                "nothing to do (raise --max-iter to train longer)")
        return None
    restore(latest, saved, state.model, state.optimizer, state.scheduler, state.scaler)
    checkpoints.adopt(saved, latest)
    state.iteration = saved["iter"]
    rank = job.d.rank
    set_rng_state(saved["rng"][rank] if rank < len(saved["rng"]) else saved["rng"][0])
    job.log(f"resumed from {latest} at iteration {state.iteration}")
    return saved["data_position"]


def training_forward(job: Job) -> torch.nn.Module:
    """The module a training step calls: the model, wrapped in DDP over several processes, compiled
    with --compile."""
    forward = job.model
    if job.d.world > 1:
        forward = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[job.device.index] if job.device.type == "cuda" else None)
    return torch.compile(forward) if job.args.compile else forward


def save_checkpoint(job: Job, state: TrainState, checkpoints: CheckpointManager, data_position: Dict) -> None:
    """Every rank's RNG state is gathered (a resume restores each); rank 0 writes the file."""
    states = [rng_state()]
    if job.d.world > 1:
        gathered: List[Optional[Dict]] = [None] * job.d.world
        dist.all_gather_object(gathered, states[0])
        states = gathered
    if job.d.main:
        checkpoints.save({"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                          "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict(),
                          "iter": state.iteration, "data_position": data_position, "rng": states,
                          "config": dataclasses.asdict(job.cfg), "engine": job.args.engine}, state.iteration)


def evaluate_during_training(job: Job, iteration: int) -> Dict[str, float]:
    saved = rng_state()  # evaluation must not shift the training random stream
    results = evaluate(job.model, job.eval_set, job.cfg, job.device, job.d, job.args.amp,
                       os.path.join(job.args.output, "eval"), job.args.tta)
    set_rng_state(saved)
    if job.d.main:
        job.metrics.write({"iter": iteration, **results}, "eval")
        job.log(f"iter {iteration}: " + ", ".join(f"{k} {v:.2f}" for k, v in results.items()))
    return results


def reduce_step_record(job: Job, losses: Dict[str, torch.Tensor], stop_requested: bool) -> Tuple[Dict, bool]:
    """The step's losses averaged over ranks, and whether any rank asked to stop: the stop flag
    rides on the loss all-reduce, so every rank stops after the same iteration."""
    names = sorted(losses)
    flags = torch.tensor([float(stop_requested)], device=job.device)
    reduced = all_reduce_mean(torch.cat([torch.stack([losses[k].detach().float() for k in names]), flags]),
                              job.d).tolist()
    stopping = reduced.pop() > 0
    return {"loss": float(sum(reduced)), **dict(zip(names, reduced))}, stopping


@dataclasses.dataclass
class Schedule:
    """When to checkpoint and evaluate: every period, and always at max_iter."""
    max_iter: int
    checkpoint_period: int
    eval_period: int

    def checkpoint_at(self, done: int) -> bool:
        return done % self.checkpoint_period == 0 or done == self.max_iter

    def evaluate_at(self, done: int) -> bool:
        return (self.eval_period > 0 and done % self.eval_period == 0) or done == self.max_iter


def train_loop(job: Job, state: TrainState, data: Iterator, checkpoints: CheckpointManager):
    """Steps until max_iter or a stop signal: (last evaluation's metrics, the StopRequest if it stopped us)."""
    args, cfg = job.args, job.cfg
    schedule = Schedule(cfg.max_iter, args.checkpoint_period, args.eval_period)
    progress = None
    if job.d.main and not args.no_progress:
        from tqdm import tqdm
        progress = tqdm(total=cfg.max_iter, initial=state.iteration, desc="train", unit="it", dynamic_ncols=True)
        job.log = progress.write
    state.model.train()
    results: Dict[str, float] = {}
    with StopRequest() as stop:  # SIGTERM / SIGINT / SIGUSR1: checkpoint at the end of the iteration, exit
        while state.iteration < cfg.max_iter:
            t0 = time.perf_counter()
            images, targets, (epoch, pos) = next(data)
            batch = (images.to(job.device, non_blocking=True),
                     [{k: v.to(job.device, non_blocking=True) for k, v in t.items()} for t in targets])
            lr = state.optimizer.param_groups[-1]["lr"]
            losses = train_step(state, batch)
            done, data_position = state.iteration, {"epoch": epoch, "index": pos + 1}
            record, stopping = reduce_step_record(job, losses, stop.requested)
            job.metrics.write({"iter": done, **record, "lr": lr, "time": time.perf_counter() - t0}, "train")
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}")
            if schedule.checkpoint_at(done) or (stopping and done < cfg.max_iter):
                save_checkpoint(job, state, checkpoints, data_position)
            if schedule.evaluate_at(done):
                results = evaluate_during_training(job, done)
            if stopping and done < cfg.max_iter:
                stopped_by = stop.name or "a signal on another rank"
                job.metrics.write({"iter": done, "stopped_by": stopped_by}, "stop")
                job.log(f"stopped by {stopped_by} after iteration {done}: checkpoint saved, continue with --resume")
                break
    if progress is not None:
        progress.close()
    return results, (stop if state.iteration < cfg.max_iter else None)


def check_ranks_in_sync(job: Job) -> None:
    """DDP keeps replicas identical; verified once at the end (a digest per rank, in metrics.jsonl)."""
    digests: List[Optional[str]] = [None] * job.d.world
    dist.all_gather_object(digests, weights_digest(job.model))
    job.metrics.write({"iter": job.cfg.max_iter, "ranks_in_sync": len(set(digests)) == 1,
                       "weights_sha256": digests}, "sync")
    if len(set(digests)) != 1:
        job.log(f"warning: the {job.d.world} ranks ended with different weights")


def check_data(job: Job) -> Dict[str, float]:
    """--check-data: every file of both splits opened once; ValueError (exit 2) listing the bad ones."""
    args = job.args
    splits = [(args.eval_split, job.eval_set)]
    if args.eval_split != "train":
        splits.append(("train", build_dataset(args.dataset, job.root, "train")))
    require_clean(splits, job.cfg.num_classes)
    total = sum(len(ds) for _, ds in splits)
    print(f"{args.dataset} at {job.root}: all {total} image/annotation pairs of {', '.join(n for n, _ in splits)} load")
    return {"checked": float(total)}


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    run_cli("train.py", lambda: run(args), args.debug)


if __name__ == "__main__":
    main()
