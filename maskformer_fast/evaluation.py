"""Segmentation metrics: semantic (Detectron2's SemSegEvaluator) and panoptic (panopticapi's PQ).

* :func:`semantic_metrics` / :class:`SemanticEvaluator`: a confusion matrix over labelled
  pixels; mIoU and mACC average over the classes present in the ground truth, fwIoU weights
  IoU by ground-truth frequency, pACC is the labelled-pixel accuracy. All in percent, as
  Detectron2 reports them. Pixels whose ground truth is ``ignore_index`` do not count.
* :func:`pq_compute`: the same inputs, definitions and result layout as
  ``panopticapi.evaluation.pq_compute`` (IoU > 0.5 matching; void pixels leave the union;
  crowd segments are never matched; an unmatched prediction is no false positive when more
  than half of it lies on void or on a crowd region of its class), with every image's
  segment pairs handled as numpy arrays instead of Python loops, and PNG decoding in threads
  instead of a process pool.
"""
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

__all__ = ["SemanticEvaluator", "semantic_metrics", "PQStats", "pq_compute", "pq_compute_single_image"]

ArrayLike = Union[np.ndarray, torch.Tensor]
OFFSET = 256 * 256 * 256  # > any segment id of a 24-bit RGB PNG
VOID = 0


def _as_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {x.dtype}")
    return x


class SemanticEvaluator:
    """Accumulates a (C+1) x (C+1) confusion matrix (rows: prediction, columns: ground truth;
    the extra column collects ignored ground truth) over images, then reports the metrics."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)

    def update(self, pred: ArrayLike, gt: ArrayLike) -> None:
        """Add one image: ``pred`` and ``gt`` integer label maps of the same shape."""
        pred, gt = _as_numpy(pred, "pred"), _as_numpy(gt, "gt")
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
        c = self.num_classes
        if pred.size and (pred.min() < 0 or pred.max() >= c):
            raise ValueError(f"predicted class ids must lie in [0, {c}), got [{pred.min()}, {pred.max()}]")
        gt = gt.astype(np.int64)
        ignored = gt == self.ignore_index
        if ((gt < 0) | (gt >= c))[~ignored].any():
            bad = gt[~ignored & ((gt < 0) | (gt >= c))][0]
            raise ValueError(f"ground-truth id {bad} is neither in [0, {c}) nor ignore_index {self.ignore_index}")
        gt = np.where(ignored, c, gt)
        self.confusion += np.bincount((c + 1) * pred.reshape(-1).astype(np.int64) + gt.reshape(-1),
                                      minlength=(c + 1) ** 2).reshape(c + 1, c + 1)

    def merge(self, other_confusion: np.ndarray) -> None:
        """Add another evaluator's confusion matrix (e.g. gathered from other ranks)."""
        self.confusion += other_confusion

    def compute(self) -> Dict[str, object]:
        """mIoU, fwIoU, mACC, pACC (percent) and per-class ``IoU`` / ``ACC`` lists (NaN for a
        class absent from the ground truth, which the means skip)."""
        conf = self.confusion[:-1, :-1].astype(np.float64)
        tp = np.diag(conf)
        pos_gt = conf.sum(0)
        pos_pred = conf.sum(1)
        valid = pos_gt > 0
        acc = np.full(self.num_classes, np.nan)
        iou = np.full(self.num_classes, np.nan)
        acc[valid] = tp[valid] / pos_gt[valid]
        iou[valid] = tp[valid] / (pos_gt + pos_pred - tp)[valid]
        total = pos_gt.sum()
        if total == 0:
            raise ValueError("no labelled ground-truth pixel was evaluated")
        weights = pos_gt / total
        return {
            "mIoU": 100 * float(iou[valid].mean()),
            "fwIoU": 100 * float((iou[valid] * weights[valid]).sum()),
            "mACC": 100 * float(acc[valid].mean()),
            "pACC": 100 * float(tp.sum() / total),
            "IoU": (100 * iou).tolist(),
            "ACC": (100 * acc).tolist(),
        }


def semantic_metrics(preds: Iterable[ArrayLike], gts: Iterable[ArrayLike], num_classes: int,
                     ignore_index: int = 255) -> Dict[str, object]:
    """Detectron2 SemSegEvaluator numbers for lists of integer label maps [H,W] (see
    :meth:`SemanticEvaluator.compute` for the keys)."""
    evaluator = SemanticEvaluator(num_classes, ignore_index)
    preds, gts = list(preds), list(gts)
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} ground-truth maps")
    for pred, gt in zip(preds, gts):
        evaluator.update(pred, gt)
    return evaluator.compute()


class PQStats:
    """Per-category sums (IoU of matches, TP, FP, FN) indexed by category id."""

    def __init__(self, max_category_id: int):
        n = max_category_id + 1
        self.iou = np.zeros(n, dtype=np.float64)
        self.tp = np.zeros(n, dtype=np.int64)
        self.fp = np.zeros(n, dtype=np.int64)
        self.fn = np.zeros(n, dtype=np.int64)

    def __iadd__(self, other: "PQStats") -> "PQStats":
        for name in ("iou", "tp", "fp", "fn"):
            getattr(self, name).__iadd__(getattr(other, name))
        return self

    def average(self, categories: Dict[int, Dict], isthing: Optional[bool]) -> Tuple[Dict, Dict]:
        """panopticapi's ``PQStat.pq_average``: the mean over categories with any TP/FP/FN."""
        pq = sq = rq = 0.0
        n = 0
        per_class = {}
        for cat_id, cat in categories.items():
            if isthing is not None and (cat["isthing"] == 1) != isthing:
                continue
            iou, tp, fp, fn = self.iou[cat_id], int(self.tp[cat_id]), int(self.fp[cat_id]), int(self.fn[cat_id])
            if tp + fp + fn == 0:
                per_class[cat_id] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            denominator = tp + 0.5 * fp + 0.5 * fn
            result = {"pq": float(iou / denominator), "sq": float(iou / tp) if tp else 0.0,
                      "rq": float(tp / denominator)}
            per_class[cat_id] = result
            pq, sq, rq = pq + result["pq"], sq + result["sq"], rq + result["rq"]
        if n == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def _read_ids(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"panoptic PNG not found: {path}")
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def pq_compute_single_image(pan_gt: np.ndarray, pan_pred: np.ndarray, gt_segments: Sequence[Dict],
                            pred_segments: Sequence[Dict], categories: Dict[int, Dict], image_id=None,
                            stats: Optional[PQStats] = None) -> PQStats:
    """Add one image's TP/FP/FN/IoU to ``stats`` (panopticapi's per-image loop, vectorised).

    pan_gt, pan_pred: [H,W] segment ids (0 = void); gt_segments / pred_segments: the json
    ``segments_info`` lists (gt areas and crowd flags from the json, as panopticapi).
    """
    if stats is None:
        stats = PQStats(max(categories))
    if pan_gt.shape != pan_pred.shape:
        raise ValueError(f"image {image_id}: ground truth {pan_gt.shape} and prediction {pan_pred.shape} differ in size")
    gt_ids = np.array([s["id"] for s in gt_segments], dtype=np.int64)
    gt_cat = np.array([s["category_id"] for s in gt_segments], dtype=np.int64)
    gt_crowd = np.array([s.get("iscrowd", 0) == 1 for s in gt_segments], dtype=bool)
    gt_area = np.array([s["area"] for s in gt_segments], dtype=np.int64)
    pred_ids = np.array([s["id"] for s in pred_segments], dtype=np.int64)
    pred_cat = np.array([s["category_id"] for s in pred_segments], dtype=np.int64)

    # Prediction areas from the PNG, with panopticapi's sanity checks.
    labels, counts = np.unique(pan_pred, return_counts=True)
    pred_area = np.zeros(len(pred_ids), dtype=np.int64)
    pred_order = np.argsort(pred_ids, kind="stable")
    pos = np.searchsorted(pred_ids[pred_order], labels)
    pos = np.minimum(pos, max(len(pred_ids) - 1, 0))
    known = (pred_ids[pred_order][pos] == labels) if len(pred_ids) else np.zeros(len(labels), bool)
    unknown = labels[~known & (labels != VOID)]
    if len(unknown):
        raise KeyError(f"In the image with ID {image_id} segment with ID {int(unknown[0])} is presented in PNG "
                       "and not presented in JSON.")
    pred_area[pred_order[pos[known]]] = counts[known]
    missing = set(pred_ids.tolist()) - set(labels.tolist())
    if missing:
        raise KeyError(f"In the image with ID {image_id} the following segment IDs {sorted(missing)} are "
                       "presented in JSON and not presented in PNG.")
    unknown_cat = [c for c in pred_cat.tolist() if c not in categories]
    if unknown_cat:
        raise KeyError(f"In the image with ID {image_id} a segment has unknown category_id {unknown_cat[0]}.")

    # Intersections of every (gt id, pred id) pair present.
    pairs, inter = np.unique(pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64), return_counts=True)
    pair_gt, pair_pred = (pairs // OFFSET).astype(np.int64), (pairs % OFFSET).astype(np.int64)

    def index_of(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Position of each value in ids (-1 if absent)."""
        if len(ids) == 0:
            return np.full(len(values), -1)
        order = np.argsort(ids, kind="stable")
        p = np.minimum(np.searchsorted(ids[order], values), len(ids) - 1)
        return np.where(ids[order][p] == values, order[p], -1)

    gi, pi = index_of(gt_ids, pair_gt), index_of(pred_ids, pair_pred)
    void_inter = np.zeros(len(pred_ids), dtype=np.int64)
    on_void = (pair_gt == VOID) & (pi >= 0)
    np.add.at(void_inter, pi[on_void], inter[on_void])

    # Matches: same category, gt not crowd, IoU > 0.5 (unique by construction).
    cand = (gi >= 0) & (pi >= 0)
    cand[cand] = (~gt_crowd[gi[cand]]) & (gt_cat[gi[cand]] == pred_cat[pi[cand]])
    g, p, i = gi[cand], pi[cand], inter[cand]
    union = pred_area[p] + gt_area[g] - i - void_inter[p]
    iou = i / union
    hit = iou > 0.5
    np.add.at(stats.tp, gt_cat[g[hit]], 1)
    np.add.at(stats.iou, gt_cat[g[hit]], iou[hit])
    gt_matched = np.zeros(len(gt_ids), dtype=bool)
    pred_matched = np.zeros(len(pred_ids), dtype=bool)
    gt_matched[g[hit]] = True
    pred_matched[p[hit]] = True

    # False negatives: unmatched, non-crowd ground truth.
    np.add.at(stats.fn, gt_cat[~gt_matched & ~gt_crowd], 1)

    # False positives: unmatched predictions not mostly on void or their category's crowd region.
    # panopticapi keeps one crowd segment per category: the last one in segments_info order.
    crowd_of_cat = {int(c): int(s) for s, c, crowd in zip(gt_ids, gt_cat, gt_crowd) if crowd}
    crowd_inter = np.zeros(len(pred_ids), dtype=np.int64)
    if crowd_of_cat and len(pred_ids):
        crowd_id_for_pred = np.array([crowd_of_cat.get(int(c), -1) for c in pred_cat], dtype=np.int64)
        on_crowd = (pi >= 0) & (pair_gt == crowd_id_for_pred[np.maximum(pi, 0)])
        np.add.at(crowd_inter, pi[on_crowd], inter[on_crowd])
    ignored = (void_inter + crowd_inter) / np.maximum(pred_area, 1) > 0.5
    np.add.at(stats.fp, pred_cat[~pred_matched & ~ignored], 1)
    return stats


def pq_compute(gt_json_file: str, pred_json_file: str, gt_folder: Optional[str] = None,
               pred_folder: Optional[str] = None, num_threads: int = 0) -> Dict[str, Dict]:
    """Panoptic quality, as ``panopticapi.evaluation.pq_compute`` (same arguments and result).

    Returns ``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": {cat_id:
    {"pq", "sq", "rq"}}}`` with values in [0, 1]. ``gt_folder``/``pred_folder`` default to the
    json path without ".json". ``num_threads`` (0 = os.cpu_count()) decode PNGs in parallel.
    """
    with open(gt_json_file) as f:
        gt_json = json.load(f)
    with open(pred_json_file) as f:
        pred_json = json.load(f)
    gt_folder = gt_json_file.replace(".json", "") if gt_folder is None else gt_folder
    pred_folder = pred_json_file.replace(".json", "") if pred_folder is None else pred_folder
    for folder, what in ((gt_folder, "ground truth"), (pred_folder, "predicted")):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"Folder {folder} with {what} segmentations doesn't exist")
    categories = {c["id"]: c for c in gt_json["categories"]}
    pred_annotations = {a["image_id"]: a for a in pred_json["annotations"]}
    pairs = []
    for gt_ann in gt_json["annotations"]:
        if gt_ann["image_id"] not in pred_annotations:
            raise KeyError(f"no prediction for the image with id: {gt_ann['image_id']}")
        pairs.append((gt_ann, pred_annotations[gt_ann["image_id"]]))

    def one_image(pair):
        gt_ann, pred_ann = pair
        pan_gt = _read_ids(os.path.join(gt_folder, gt_ann["file_name"]))
        pan_pred = _read_ids(os.path.join(pred_folder, pred_ann["file_name"]))
        return pq_compute_single_image(pan_gt, pan_pred, gt_ann["segments_info"], pred_ann["segments_info"],
                                       categories, gt_ann["image_id"], PQStats(max(categories)))

    stats = PQStats(max(categories))
    with ThreadPoolExecutor(max_workers=num_threads or os.cpu_count() or 1) as pool:
        for image_stats in pool.map(one_image, pairs):
            stats += image_stats
    results: Dict[str, Dict] = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        results[name], per_class = stats.average(categories, isthing)
        if name == "All":
            results["per_class"] = per_class
    return results
