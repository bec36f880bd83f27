"""Semantic metrics and PQ against hand-computed values and panopticapi's own pq_compute."""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from maskformer_fast.evaluation import SemanticEvaluator, pq_compute, semantic_metrics
from train.make_synthetic import id_to_rgb, make_synthetic


def test_semantic_metrics_hand_computed():
    # 3 classes, 255 = ignore. Class 2 never appears in the ground truth but is predicted once.
    gt = np.array([[0, 0, 1, 1],
                   [0, 255, 1, 255]])
    pred = np.array([[0, 1, 1, 1],
                     [2, 2, 1, 0]])
    m = semantic_metrics([pred], [gt], num_classes=3)
    # labelled pixels: 6. class 0: gt 3, pred-on-labelled 1 (tp 1); class 1: gt 3, pred 4 (tp 3);
    # class 2: pred 1 on a labelled pixel, gt 0 -> NaN, excluded from the means.
    iou0, iou1 = 1 / (3 + 1 - 1), 3 / (3 + 4 - 3)
    assert m["mIoU"] == pytest.approx(100 * (iou0 + iou1) / 2)
    assert m["fwIoU"] == pytest.approx(100 * (0.5 * iou0 + 0.5 * iou1))
    assert m["mACC"] == pytest.approx(100 * (1 / 3 + 1) / 2)
    assert m["pACC"] == pytest.approx(100 * 4 / 6)
    assert m["IoU"][:2] == pytest.approx([100 * iou0, 100 * iou1])
    assert math.isnan(m["IoU"][2])


def test_semantic_evaluator_accumulates_over_images_and_checks_input():
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 4, size=(5, 7)) for _ in range(3)]
    preds = [rng.integers(0, 4, size=(5, 7)) for _ in range(3)]
    whole = semantic_metrics([np.concatenate(preds)], [np.concatenate(gts)], num_classes=4)
    assert semantic_metrics(preds, gts, num_classes=4)["mIoU"] == pytest.approx(whole["mIoU"])
    ev = SemanticEvaluator(4)
    with pytest.raises(ValueError, match="shape"):
        ev.update(preds[0], gts[0][:4])
    with pytest.raises(ValueError, match="class ids"):
        ev.update(preds[0] + 4, gts[0])
    with pytest.raises(ValueError, match="integer"):
        ev.update(preds[0].astype(np.float32), gts[0])


def _write_panoptic(folder, name, annotations, categories, id_maps):
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    for ann, ids in zip(annotations, id_maps):
        Image.fromarray(id_to_rgb(ids)).save(os.path.join(folder, name, ann["file_name"]))
    path = os.path.join(folder, name + ".json")
    with open(path, "w") as f:
        json.dump({"annotations": annotations, "categories": categories,
                   "images": [{"id": a["image_id"]} for a in annotations]}, f)
    return path


def test_pq_hand_computed_with_void_and_crowd(tmp_path):
    categories = [{"id": 1, "name": "thing", "isthing": 1}, {"id": 2, "name": "stuff", "isthing": 0}]
    gt = np.zeros((4, 10), dtype=np.int64)
    gt[:, 0:4] = 10   # thing A (area 16)
    gt[:, 4:6] = 11   # crowd thing region (8)
    gt[:, 6:9] = 20   # stuff (12)
    # column 9 is void
    gt_segments = [{"id": 10, "category_id": 1, "iscrowd": 0, "area": 16},
                   {"id": 11, "category_id": 1, "iscrowd": 1, "area": 8},
                   {"id": 20, "category_id": 2, "iscrowd": 0, "area": 12}]
    pred = np.zeros((4, 10), dtype=np.int64)
    pred[:, 0:3] = 1          # matches A: IoU 12/16
    pred[:, 3:6] = 2          # thing on the crowd region (8 of 12 px) -> ignored, not FP
    pred[:, 6:10] = 3         # stuff covering the void column: IoU 12 / (16 + 12 - 12 - 4) = 1
    pred_segments = [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 1}, {"id": 3, "category_id": 2}]
    ann = {"image_id": 1, "file_name": "1.png"}
    gt_json = _write_panoptic(tmp_path, "gt", [dict(ann, segments_info=gt_segments)], categories, [gt])
    pred_json = _write_panoptic(tmp_path, "pred", [dict(ann, segments_info=pred_segments)], categories, [pred])
    r = pq_compute(gt_json, pred_json)
    assert r["Things"] == pytest.approx({"pq": 0.75, "sq": 0.75, "rq": 1.0, "n": 1})
    assert r["Stuff"] == pytest.approx({"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1})
    assert r["All"]["pq"] == pytest.approx(0.875)
    assert r["per_class"][1]["pq"] == pytest.approx(0.75)


def test_pq_empty_prediction_counts_false_negatives(tmp_path):
    categories = [{"id": 1, "name": "thing", "isthing": 1}, {"id": 2, "name": "stuff", "isthing": 0}]
    gt = np.zeros((3, 6), dtype=np.int64)
    gt[:, :2], gt[:, 2:4], gt[:, 4:] = 10, 11, 20
    gt_segments = [{"id": 10, "category_id": 1, "iscrowd": 0, "area": 6},
                   {"id": 11, "category_id": 1, "iscrowd": 1, "area": 6},
                   {"id": 20, "category_id": 2, "iscrowd": 0, "area": 6}]
    ann = {"image_id": 7, "file_name": "7.png"}
    gt_json = _write_panoptic(tmp_path, "gt", [dict(ann, segments_info=gt_segments)], categories, [gt])
    pred_json = _write_panoptic(tmp_path, "pred", [dict(ann, segments_info=[])], categories, [gt * 0])
    r = pq_compute(gt_json, pred_json)
    assert r["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 2}  # one FN per class, the crowd not counted


def _perturbed_predictions(gt_dir, gt_json_path, out_dir):
    """Predictions from the ground truth: shifted, some relabelled, dropped, split or added."""
    with open(gt_json_path) as f:
        gt = json.load(f)
    cat_ids = [c["id"] for c in gt["categories"]]
    rng = np.random.default_rng(0)
    annotations, id_maps = [], []
    for ann in gt["annotations"]:
        rgb = np.asarray(Image.open(os.path.join(gt_dir, ann["file_name"]))).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        ids = np.roll(ids, shift=int(rng.integers(-3, 4)), axis=int(rng.integers(2)))
        segments = []
        for seg in ann["segments_info"]:
            inside = ids == seg["id"]
            r = rng.random()
            if r < 0.15:
                ids[inside] = 0  # dropped -> void
                continue
            cat = seg["category_id"] if r < 0.75 else int(rng.choice(cat_ids))
            if r > 0.9:  # split in two halves along x
                xs = np.nonzero(inside)[1]
                half = inside & (np.arange(ids.shape[1])[None] >= np.median(xs))
                if half.any() and (inside & ~half).any():
                    ids[half] = seg["id"] + 1_000_000
                    segments.append({"id": seg["id"] + 1_000_000, "category_id": cat})
            if (ids == seg["id"]).any():
                segments.append({"id": seg["id"], "category_id": cat})
        blob = (slice(0, ids.shape[0] // 3), slice(0, ids.shape[1] // 4))
        ids[blob] = 7_000_000
        segments = [s for s in segments if (ids == s["id"]).any()]
        segments.append({"id": 7_000_000, "category_id": int(rng.choice(cat_ids))})
        annotations.append({"image_id": ann["image_id"], "file_name": ann["file_name"], "segments_info": segments})
        id_maps.append(ids)
    return _write_panoptic(out_dir, "pred", annotations, gt["categories"], id_maps)


def test_pq_compute_equals_panopticapi(tmp_path):
    panopticapi = pytest.importorskip("panopticapi.evaluation")
    make_synthetic("coco_panoptic", str(tmp_path / "coco"), num_images=12, size=48, seed=3)
    gt_json = str(tmp_path / "coco" / "annotations" / "panoptic_train2017.json")
    pred_json = _perturbed_predictions(str(tmp_path / "coco" / "annotations" / "panoptic_train2017"),
                                       gt_json, str(tmp_path))
    ours = pq_compute(gt_json, pred_json)
    theirs = panopticapi.pq_compute(gt_json, pred_json)
    assert ours["All"]["n"] == theirs["All"]["n"] > 0
    for name in ("All", "Things", "Stuff"):
        assert ours[name] == pytest.approx(theirs[name], abs=1e-12), name
    assert set(ours["per_class"]) == set(theirs["per_class"])
    for cat, result in theirs["per_class"].items():
        assert ours["per_class"][cat] == pytest.approx(result, abs=1e-12), cat
    # the perturbation must exercise partial quality, not a trivial 0 or 1
    assert 0.2 < ours["All"]["pq"] < 0.95
