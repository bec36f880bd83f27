"""Evaluation of a model on a dataset split, as train.py runs it (``--eval-only`` and during training).

Semantic splits give mIoU, fwIoU, mACC and pACC; panoptic splits PQ/SQ/RQ (all, things, stuff),
in percent. ``d`` is train.py's ``Dist`` (rank, world size); under data parallelism each rank
evaluates every world-th image and the results are combined.
"""
import json
import os
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from maskformer_fast.evaluation import SemanticEvaluator, pq_compute
from maskformer_fast.predictor import Predictor
from maskformer_fast.preprocessing import id_to_rgb, save_label_map
from maskformer_fast.visualize import config_metadata, label_palette
from train.datasets import SegmentationDataset

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: SegmentationDataset, cfg, device, d, amp: str,
             output_dir: str, tta: bool = False, save_semantic: bool = False) -> Dict[str, float]:
    """Semantic (mIoU, fwIoU, mACC, pACC) or panoptic (PQ/SQ/RQ, things/stuff) metrics, in percent.
    Panoptic predictions are written under ``output_dir`` (PNGs + json, for pq_compute); with
    save_semantic, semantic label maps too (``output_dir/semantic_predictions/NAME.png``, as
    predict writes them: class ids in a palette PNG of the dataset's colours).

    Images become results through the same :class:`~maskformer_fast.predictor.Predictor` that
    predict uses (one read, resize, normalisation and post-processing path). Each rank
    evaluates every world-th image; semantic confusion matrices are summed, panoptic
    predictions are gathered and scored by rank 0 with :func:`pq_compute`.
    """
    was_training = model.training
    model.eval()
    info = dataset.info
    predictor = Predictor(model, cfg, info.task, device, tta=tta and info.task == "semantic", amp=amp,
                          thing_classes=[c for c in info.thing_classes if c < cfg.num_classes])
    indices = range(d.rank, len(dataset), d.world)
    try:
        if info.task == "semantic":
            evaluator = SemanticEvaluator(cfg.num_classes, info.ignore_label)
            pred_dir = os.path.join(output_dir, "semantic_predictions")
            palette = label_palette(config_metadata(cfg))  # predict's palette PNGs
            if save_semantic:
                os.makedirs(pred_dir, exist_ok=True)
            for i in indices:
                sample = dataset.load(i)
                labels = predictor(sample["image"])
                evaluator.update(labels, sample["sem_seg"])
                if save_semantic:
                    name = os.path.splitext(os.path.basename(sample["file_name"]))[0] + ".png"
                    save_label_map(labels.numpy(), cfg.num_classes, os.path.join(pred_dir, name), palette)
            if d.world > 1:
                confusion = torch.from_numpy(evaluator.confusion).to(device)
                dist.all_reduce(confusion)
                evaluator.confusion = confusion.cpu().numpy()
            m = evaluator.compute()
            return {k: m[k] for k in ("mIoU", "fwIoU", "mACC", "pACC")}
        return _evaluate_panoptic(predictor, dataset, d, output_dir, indices)
    finally:
        model.train(was_training)


def _evaluate_panoptic(predictor: Predictor, dataset, d, output_dir, indices) -> Dict[str, float]:
    info = dataset.info
    pred_dir = os.path.join(output_dir, "panoptic_predictions")
    os.makedirs(pred_dir, exist_ok=True)
    annotations = []
    for i in indices:
        sample = dataset.load(i)
        seg, segments = predictor(sample["image"])
        seg = seg.numpy().astype(np.int64)
        kept = []
        for s in segments:
            if s["category_id"] < len(info.categories):
                kept.append({"id": s["id"], "category_id": info.categories[s["category_id"]]["id"],
                             "isthing": int(s["isthing"]), "area": int(s["area"])})
            else:  # a class the dataset does not have (model wider than the dataset): void
                seg[seg == s["id"]] = 0
        file_name = os.path.splitext(os.path.basename(sample["file_name"]))[0] + ".png"
        Image.fromarray(id_to_rgb(seg)).save(os.path.join(pred_dir, file_name))
        annotations.append({"image_id": sample["image_id"], "file_name": file_name, "segments_info": kept})
    if d.world > 1:
        gathered: List[Optional[list]] = [None] * d.world
        dist.all_gather_object(gathered, annotations)
        annotations = [a for part in gathered for a in part]
    if not d.main:
        return {}
    with open(info.panoptic_json) as f:
        categories = json.load(f)["categories"]
    pred_json = os.path.join(output_dir, "panoptic_predictions.json")
    with open(pred_json, "w") as f:
        json.dump({"annotations": annotations, "categories": categories}, f)
    r = pq_compute(info.panoptic_json, pred_json, gt_folder=info.panoptic_root, pred_folder=pred_dir)
    metrics = {}
    for name, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for key in ("pq", "sq", "rq"):
            metrics[key.upper() + suffix] = 100 * r[name][key]
    return metrics
