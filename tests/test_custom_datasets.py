"""Custom data end to end: ``--dataset semantic_folder`` and ``coco_panoptic_custom`` written here in
their real formats, trained a few iterations, evaluated (mIoU recomputed from the saved label maps),
their classes recorded in the checkpoint and named by predict; bad data refused in one line."""
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from maskformer_fast.preprocessing import id_to_rgb
from maskformer_fast.weights import read_weights
from train.checkpoint import CheckpointManager

TINY = ["num_decoder_layers=2", "hidden_dim=32", "conv_dim=32", "mask_dim=32", "dim_feedforward=64",
        "num_queries=10", "nheads=2", "frozen_bn=false", "test_short_side=32", "test_max_size=128",
        "min_scale=1.0", "max_scale=1.0"]
CLASSES = [{"name": "water", "color": [0, 0, 200]}, {"name": "sand", "color": [200, 180, 0]},
           {"name": "crab", "color": [220, 30, 30]}]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread (as test_train.py's subprocesses): faster at these sizes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_main(*argv):
    """train.py in-process: its exit status (0 when it returns)."""
    from train.train import main
    try:
        main(["--no-progress", "--num-workers", "0", "--engine", "eager", "--device", "cpu", "--seed", "0",
              *argv, *TINY])
    except SystemExit as e:
        return e.code
    return 0


def metrics(out, key):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if key in r]


def _scene(rng, height=32, width=40):
    """A label map of water/sand halves with a crab box and an ignored strip, and its image."""
    labels = np.zeros((height, width), np.uint8)
    labels[:, width // 2:] = 1
    y, x = rng.integers(4, height - 12), rng.integers(4, width - 12)
    labels[y:y + 8, x:x + 8] = 2
    labels[-2:] = 255
    colors = np.array([c["color"] for c in CLASSES] + [[128, 128, 128]] * 253, np.uint8)
    image = colors[labels] + rng.integers(0, 20, size=(height, width, 3)).astype(np.uint8)
    return image, labels


def write_semantic_folder(root, classes=CLASSES):
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 2)):
        os.makedirs(root / "images" / split)
        os.makedirs(root / "annotations" / split)
        for i in range(count):
            image, labels = _scene(rng)
            Image.fromarray(image).save(root / "images" / split / f"shot{i}.png")  # PNG images are fine too
            Image.fromarray(labels).save(root / "annotations" / split / f"shot{i}.png")
    if classes is not None:
        (root / "classes.json").write_text(json.dumps(classes))
    return root


def _mean_iou(preds, gts, num_classes, ignore=255):
    """mIoU (percent) by its definition: per class present in the ground truth, |P & G| / |P | G|
    over the non-ignored pixels; averaged."""
    ious = []
    for c in range(num_classes):
        inter = sum(int(((p == c) & (g == c) & (g != ignore)).sum()) for p, g in zip(preds, gts))
        union = sum(int((((p == c) | (g == c)) & (g != ignore)).sum()) for p, g in zip(preds, gts))
        if any((g == c).any() for g in gts):
            ious.append(inter / union)
    return 100 * float(np.mean(ious))


def test_semantic_folder_trains_evaluates_and_names_its_classes(tmp_path, capsys):
    data = write_semantic_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert train_main("--dataset", "semantic_folder", "--data-root", str(data), "--output", str(out),
                      "--max-iter", "2", "--batch-size", "2", "--crop", "32") == 0
    assert "3 classes from the data" in capsys.readouterr().out
    final = metrics(out, "mIoU")[-1]
    assert 0.0 <= final["mIoU"] <= 100.0
    ckpt = CheckpointManager(str(out)).latest()
    saved = read_weights(ckpt)
    assert saved.config["num_classes"] == 3 and tuple(saved.config["class_names"]) == ("water", "sand", "crab")
    assert tuple(saved.config["class_colors"]) == (0, 0, 200, 200, 180, 0, 220, 30, 30)
    assert saved.state["predictor.class_embed.weight"].shape[0] == 4  # 3 classes + no-object

    # --eval-only saves the label maps: the logged mIoU is the one they give
    assert train_main("--eval-only", "--weights", ckpt, "--data-root", str(data), "--output", str(tmp_path / "ev")) == 0
    logged = metrics(tmp_path / "ev", "mIoU")[-1]["mIoU"]
    names = sorted(os.listdir(data / "annotations" / "val"))
    preds = [np.asarray(Image.open(tmp_path / "ev" / "eval" / "semantic_predictions" / n)) for n in names]
    gts = [np.asarray(Image.open(data / "annotations" / "val" / n)) for n in names]
    assert logged == pytest.approx(_mean_iou(preds, gts, 3), rel=1e-9) and logged == final["mIoU"]

    from maskformer_fast.predict import main as predict_main
    predict_main(["--weights", ckpt, "--task", "instance", "--engine", "eager", "--top-k", "5",
                  "--input", str(data / "images" / "val" / "shot0.png"), "--output", str(tmp_path / "pred")])
    instances = json.loads((tmp_path / "pred" / "shot0.json").read_text())["instances"]
    assert len(instances) == 5 and all(i["name"] == ["water", "sand", "crab"][i["label"]] for i in instances)


def write_custom_panoptic(root):
    """COCO panoptic format with categories of our own: ids 5 (stuff), 17 and 300 (things)."""
    categories = [{"id": 5, "name": "pond", "isthing": 0, "color": [10, 20, 200]},
                  {"id": 17, "name": "duck", "isthing": 1, "color": [250, 200, 0]},
                  {"id": 300, "name": "boat", "isthing": 1, "color": [120, 60, 20]}]
    rng = np.random.default_rng(3)
    for split, count in (("train", 3), ("val", 2)):
        os.makedirs(root / "images" / split)
        os.makedirs(root / "annotations" / f"panoptic_{split}")
        images, annotations = [], []
        for i in range(count):
            ids = np.full((32, 40), 1, np.int64)  # the pond
            segments = [{"id": 1, "category_id": 5, "iscrowd": 0}]
            for k, cat in ((2, 17), (3, 300)):
                y, x = rng.integers(0, 20), rng.integers(0, 28)
                ids[y:y + 10, x:x + 10] = k
                segments.append({"id": k, "category_id": cat, "iscrowd": 0})
            segments = [dict(s, area=int((ids == s["id"]).sum())) for s in segments if (ids == s["id"]).any()]
            image = np.array([[0, 0, 0], [10, 20, 200], [250, 200, 0], [120, 60, 20]], np.uint8)[ids]
            Image.fromarray(image).save(root / "images" / split / f"{i + 1}.jpg", quality=95)
            Image.fromarray(id_to_rgb(ids)).save(root / "annotations" / f"panoptic_{split}" / f"{i + 1}.png")
            images.append({"id": i + 1, "file_name": f"{i + 1}.jpg", "height": 32, "width": 40})
            annotations.append({"image_id": i + 1, "file_name": f"{i + 1}.png", "segments_info": segments})
        with open(root / "annotations" / f"panoptic_{split}.json", "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return root


def test_custom_coco_panoptic_trains_evaluates_and_names_its_classes(tmp_path):
    data = write_custom_panoptic(tmp_path / "data")
    out = tmp_path / "run"
    assert train_main("--dataset", "coco_panoptic_custom", "--data-root", str(data), "--output", str(out),
                      "--max-iter", "2", "--batch-size", "2", "object_mask_threshold=0", "overlap_threshold=0") == 0
    final = metrics(out, "PQ")[-1]
    assert {"PQ", "PQ_th", "PQ_st"} <= set(final) and 0.0 <= final["PQ"] <= 100.0
    with open(out / "eval" / "panoptic_predictions.json") as f:
        predicted = [s for a in json.load(f)["annotations"] for s in a["segments_info"]]
    assert predicted and {s["category_id"] for s in predicted} <= {5, 17, 300}  # back in the json's ids
    config = json.loads((out / "config.json").read_text())
    assert (config["num_classes"], config["class_names"], config["thing_class_ids"]) == (
        3, ["pond", "duck", "boat"], [1, 2])

    from maskformer_fast.predict import main as predict_main
    predict_main(["--weights", CheckpointManager(str(out)).latest(), "--task", "panoptic", "--engine", "eager",
                  "object_mask_threshold=0", "overlap_threshold=0",
                  "--input", str(data / "images" / "val" / "1.jpg"), "--output", str(tmp_path / "pred")])
    segments = json.loads((tmp_path / "pred" / "1.json").read_text())["segments_info"]
    assert segments and all(s["name"] == ["pond", "duck", "boat"][s["category_id"]]
                            and s["isthing"] == (s["category_id"] in (1, 2)) for s in segments)


def _one_line_error(capsys):
    lines = capsys.readouterr().err.strip().splitlines()  # a warning line (random backbone) may come first
    assert not any("Traceback" in line for line in lines)
    assert [line for line in lines if line.startswith("train.py: error:")] == lines[-1:]
    return lines[-1]


def test_bad_custom_data_is_one_line_and_exit_2(tmp_path, capsys):
    common = ("--dataset", "semantic_folder", "--max-iter", "1", "--batch-size", "1", "--crop", "32")
    missing = write_semantic_folder(tmp_path / "no_classes", classes=None)
    assert train_main(*common, "--data-root", str(missing), "--output", str(tmp_path / "a")) == 2
    assert str(missing / "classes.json") in _one_line_error(capsys)

    few = write_semantic_folder(tmp_path / "two_classes", classes=["water", "sand"])  # the crabs are class 2
    assert train_main(*common, "--data-root", str(few), "--output", str(tmp_path / "b")) == 2
    err = _one_line_error(capsys)
    assert "label 2, out of range for 2 classes" in err and str(few / "annotations") in err

    lonely = write_semantic_folder(tmp_path / "lonely")
    Image.new("RGB", (40, 32)).save(lonely / "images" / "train" / "extra.jpg")
    assert train_main(*common, "--data-root", str(lonely), "--output", str(tmp_path / "c")) == 2
    err = _one_line_error(capsys)
    assert str(lonely / "images" / "train" / "extra.jpg") in err and "extra.png" in err


@pytest.mark.parametrize("corrupt, needle", [
    (lambda d: d["annotations"][0].pop("file_name"), "an entry lacks 'file_name'"),
    (lambda d: d["categories"][0].pop("id"), "an entry lacks 'id'"),
    (lambda d: d["categories"].append(dict(d["categories"][0])), "category ids repeat ([5])"),
    (lambda d: d["annotations"][0]["segments_info"][0].update(category_id=99), "has unknown category 99"),
    (lambda d: d["annotations"][0].update(segments_info=None), "an entry is malformed"),
])
def test_malformed_custom_panoptic_json_is_named(tmp_path, corrupt, needle):
    from train.datasets import build_dataset
    data = write_custom_panoptic(tmp_path / "data")
    json_file = data / "annotations" / "panoptic_train.json"
    content = json.loads(json_file.read_text())
    corrupt(content)
    json_file.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=re.escape(needle)) as error:
        build_dataset("coco_panoptic_custom", str(data), "train")
    assert str(json_file) in str(error.value)
