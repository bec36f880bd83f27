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
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

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


def _dense_index(id_map: np.ndarray, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Position of each pixel's id in ``ids`` and a mask of pixels whose id is not in ``ids``."""
    if len(ids) == 0:
        return np.zeros(id_map.shape, dtype=np.int64), np.ones(id_map.shape, dtype=bool)
    order = np.argsort(ids, kind="stable")
    pos = np.minimum(np.searchsorted(ids[order], id_map), len(ids) - 1)
    found = ids[order][pos] == id_map
    return order[pos], ~found


def pq_compute_single_image(pan_gt: np.ndarray, pan_pred: np.ndarray, gt_segments: Sequence[Dict],
                            pred_segments: Sequence[Dict], categories: Dict[int, Dict], image_id=None,
                            stats: Optional[PQStats] = None) -> PQStats:
    """Add one image's TP/FP/FN/IoU to ``stats`` (panopticapi's per-image loop, vectorised).

    pan_gt, pan_pred: [H,W] segment ids (0 = void); gt_segments / pred_segments: the json
    ``segments_info`` lists (gt areas and crowd flags from the json, as panopticapi). The
    pixels are reduced to one (gt segment x pred segment) intersection matrix with a single
    bincount; everything after works on that small matrix.
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
    unknown_cat = [c for c in pred_cat.tolist() if c not in categories]
    if unknown_cat:
        raise KeyError(f"In the image with ID {image_id} a segment has unknown category_id {unknown_cat[0]}.")

    # Dense labels: gt rows 0..G-1 = json segments, G = void, G+1 = ids absent from the json
    # (panopticapi skips those); pred columns 0..P-1 = json segments, P = void.
    n_gt, n_pred = len(gt_ids), len(pred_ids)
    g, g_unknown = _dense_index(pan_gt, gt_ids)
    g = np.where(g_unknown, np.where(pan_gt == VOID, n_gt, n_gt + 1), g)
    p, p_unknown = _dense_index(pan_pred, pred_ids)
    stray = p_unknown & (pan_pred != VOID)
    if stray.any():
        raise KeyError(f"In the image with ID {image_id} segment with ID {int(pan_pred[stray][0])} is presented "
                       "in PNG and not presented in JSON.")
    p = np.where(p_unknown, n_pred, p)
    inter = np.bincount((g * (n_pred + 1) + p).ravel(), minlength=(n_gt + 2) * (n_pred + 1))
    inter = inter.reshape(n_gt + 2, n_pred + 1)[:, :n_pred]  # [G+2, P], void predictions dropped
    pred_area = inter.sum(0)
    if (pred_area == 0).any():
        missing = pred_ids[pred_area == 0].tolist()
        raise KeyError(f"In the image with ID {image_id} the following segment IDs {missing} are "
                       "presented in JSON and not presented in PNG.")
    void_inter = inter[n_gt]
    inter = inter[:n_gt]  # [G, P]

    # Matches: same category, gt not crowd, IoU > 0.5 (unique by construction).
    union = pred_area[None, :] + gt_area[:, None] - inter - void_inter[None, :]
    candidate = (inter > 0) & (gt_cat[:, None] == pred_cat[None, :]) & ~gt_crowd[:, None]
    iou = np.where(candidate, inter / np.maximum(union, 1), 0.0)
    hit_g, hit_p = np.nonzero(candidate & (iou > 0.5))
    np.add.at(stats.tp, gt_cat[hit_g], 1)
    np.add.at(stats.iou, gt_cat[hit_g], iou[hit_g, hit_p])
    gt_matched = np.zeros(n_gt, dtype=bool)
    pred_matched = np.zeros(n_pred, dtype=bool)
    gt_matched[hit_g] = True
    pred_matched[hit_p] = True

    # False negatives: unmatched, non-crowd ground truth.
    np.add.at(stats.fn, gt_cat[~gt_matched & ~gt_crowd], 1)

    # False positives: unmatched predictions not mostly on void or their category's crowd region.
    # panopticapi keeps one crowd segment per category: the last one in segments_info order.
    crowd_row = {int(c): k for k, (c, crowd) in enumerate(zip(gt_cat, gt_crowd)) if crowd}
    crowd_inter = np.array([inter[crowd_row[int(c)], j] if int(c) in crowd_row else 0
                            for j, c in enumerate(pred_cat)], dtype=np.int64)
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
