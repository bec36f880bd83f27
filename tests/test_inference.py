"""Post-processing on hand-built outputs: semantic maps against a float64 transcription of the
official order of operations, panoptic and instance results worked out by hand, TTA against
a hand-computed average over views."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maskformer_fast.inference import (PanopticMetadata, instance_inference, panoptic_inference,
                                       semantic_inference, semantic_inference_tta)
from tests.helpers import assert_close_verbose

L = 20.0  # a "certain" mask logit


def class_logits(rows):
    """Logits whose softmax is exactly the given probability rows (up to rounding)."""
    return torch.tensor(rows, dtype=torch.float64).log().float()


def official_semantic64(logits, masks, image_size, output_size):
    """The official order: upsample to the padded size, sigmoid, einsum over queries, then
    Detectron2's sem_seg_postprocess (crop, bilinear resize) of the C maps."""
    padded = (4 * masks.shape[-2], 4 * masks.shape[-1])
    m = F.interpolate(masks[None].double(), size=padded, mode="bilinear", align_corners=False)[0].sigmoid()
    sem = torch.einsum("qc,qhw->chw", logits.double().softmax(-1)[:, :-1], m)
    sem = sem[:, : image_size[0], : image_size[1]]
    return F.interpolate(sem[None], size=output_size, mode="bilinear", align_corners=False)[0]


def test_semantic_argmax_map():
    """Query 0 says class 2 on the left half, query 1 says class 0 on the right half."""
    logits = class_logits([[0.05, 0.05, 0.85, 0.05], [0.9, 0.04, 0.03, 0.03]])[None]
    masks = torch.full((1, 2, 4, 4), -L)
    masks[0, 0, :, :2], masks[0, 1, :, 2:] = L, L
    (sem,) = semantic_inference({"pred_logits": logits, "pred_masks": masks}, [(16, 16)], [(16, 16)])
    expected = torch.zeros(16, 16, dtype=torch.int64)
    expected[:, :8] = 2
    assert sem.shape == (3, 16, 16)
    assert torch.equal(sem.argmax(0), expected)
    assert sem[2, 0, 0].item() == pytest.approx(0.85, rel=1e-4)


def test_semantic_crop_and_resize_match_official_order():
    g = torch.Generator().manual_seed(0)
    out = {"pred_logits": torch.randn(2, 5, 4, generator=g), "pred_masks": 3 * torch.randn(2, 5, 6, 8, generator=g)}
    image_sizes, output_sizes = [(21, 30), (24, 17)], [(40, 55), (24, 17)]
    results = semantic_inference(out, image_sizes, output_sizes)
    for i, got in enumerate(results):
        expected = official_semantic64(out["pred_logits"][i], out["pred_masks"][i], image_sizes[i], output_sizes[i])
        assert_close_verbose(got, expected.float(), rtol=1e-5, atol=1e-6, name=f"image {i}")
    with pytest.raises(ValueError, match="within the padded input size"):
        semantic_inference(out, [(25, 30), (24, 17)], output_sizes)


def panoptic_outputs():
    """Row bands of a 12 x 2 prediction (48 x 8 output, every band exactly 4 output rows).

    q0 thing 0 (.99) rows 0-1; q1 stuff 1 (.95) rows 2-3; q2 stuff 1 (.90) rows 4-5, merged
    with q1; q3 thing 0 (.79, under the 0.8 threshold) rows 6-7, where q4 thing 2 (.81, weak
    mask) wins when q3 is dropped; q5 thing 2 (.85) rows 8-11 loses rows 10-11 to q6 thing 0
    (.97): 50% overlap, dropped, rows 8-9 stay void; q7 predicts no-object.
    """
    def probs(label, score):
        row = [(1 - score) / 3] * 4
        row[label] = score
        return row

    specs = [(0, .99, (0, 2), L), (1, .95, (2, 4), L), (1, .90, (4, 6), L), (0, .79, (6, 8), L),
             (2, .81, (6, 8), 1.0), (2, .85, (8, 12), L), (0, .97, (10, 12), L), (3, .96, (0, 12), L)]
    logits = class_logits([probs(label, score) for label, score, _, _ in specs])[None]
    masks = torch.empty(1, len(specs), 12, 2)
    for q, (_, _, (lo, hi), magnitude) in enumerate(specs):
        masks[0, q] = -magnitude
        masks[0, q, lo:hi] = magnitude
    return {"pred_logits": logits, "pred_masks": masks, "input_size": (48, 8)}


def band_map(ids_per_row):
    return torch.tensor(ids_per_row, dtype=torch.int32).repeat_interleave(4)[:, None].expand(-1, 8)


def test_panoptic_thresholds_overlap_and_stuff_merge():
    meta = PanopticMetadata(thing_classes={0, 2})
    ((seg, info),) = panoptic_inference(panoptic_outputs(), None, None, meta)
    assert seg.dtype == torch.int32 and seg.shape == (48, 8)
    assert torch.equal(seg, band_map([1, 1, 2, 2, 2, 2, 3, 3, 0, 0, 4, 4]))
    assert info == [
        {"id": 1, "category_id": 0, "isthing": True, "area": 64},
        {"id": 2, "category_id": 1, "isthing": False, "area": 128},
        {"id": 3, "category_id": 2, "isthing": True, "area": 64},
        {"id": 4, "category_id": 0, "isthing": True, "area": 64},
    ]


def test_panoptic_lower_object_threshold_keeps_q3():
    meta = {"thing_classes": [0, 2]}
    ((seg, info),) = panoptic_inference(panoptic_outputs(), [(48, 8)], [(48, 8)], meta, object_mask_threshold=0.75)
    assert torch.equal(seg, band_map([1, 1, 2, 2, 2, 2, 3, 3, 0, 0, 4, 4]))
    assert [s["category_id"] for s in info] == [0, 1, 0, 0]  # segment 3 is now q3's class 0


def test_panoptic_all_stuff_merges_and_overlap_threshold_off():
    """Without things, q6 merges into q0's class-0 segment; with overlap_threshold 0.4, q5
    keeps its 50% and its rows 8-9 merge into q4's class-2 segment instead of staying void."""
    ((seg, info),) = panoptic_inference(panoptic_outputs(), None, None, PanopticMetadata.from_isthing([0, 0, 0]),
                                        overlap_threshold=0.4)
    assert torch.equal(seg, band_map([1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 1, 1]))
    assert [(s["category_id"], s["isthing"], s["area"]) for s in info] == [(0, False, 128), (1, False, 128),
                                                                          (2, False, 128)]


def test_panoptic_nothing_detected_and_bad_metadata():
    out = panoptic_outputs()
    ((seg, info),) = panoptic_inference(out, None, None, PanopticMetadata(frozenset()), object_mask_threshold=0.999)
    assert info == [] and not seg.any()
    with pytest.raises(ValueError, match="PanopticMetadata"):
        panoptic_inference(out, None, None, [0, 2])


def test_instance_topk_scores_and_order():
    # q0: class probs (.6, .3), mask all positive at logit 2 -> mask score sigmoid(2)
    # q1: (.1, .8), mask +1 on the top half, -1 below; upsampled x4 (bilinear) the positive
    #     rows 0-7 hold 1 (rows 0-5), 0.75 (row 6), 0.25 (row 7)
    # q2: (.05, .05), mask all negative -> mask score 0
    logits = class_logits([[.6, .3, .1], [.1, .8, .1], [.05, .05, .9]])[None]
    masks = torch.full((1, 3, 4, 4), 2.0)
    masks[0, 1, :2], masks[0, 1, 2:] = 1.0, -1.0
    masks[0, 2] = -3.0
    (res,) = instance_inference({"pred_logits": logits, "pred_masks": masks}, [(16, 16)], [(16, 16)], top_k=3)
    # top-3 (query, class) by class prob: (1,1) .8, (0,0) .6, (0,1) .3
    def sigmoid(v):
        return 1 / (1 + math.exp(-v))

    s1 = (6 * sigmoid(1) + sigmoid(0.75) + sigmoid(0.25)) / 8
    assert res["labels"].tolist() == [1, 0, 1]
    assert res["scores"].tolist() == pytest.approx([.8 * s1, .6 * sigmoid(2), .3 * sigmoid(2)], rel=1e-5)
    assert res["masks"].dtype == torch.bool and res["masks"].shape == (3, 16, 16)
    assert res["masks"][0, :8].all() and not res["masks"][0, 8:].any() and res["masks"][1].all()
    (all_pairs,) = instance_inference({"pred_logits": logits, "pred_masks": masks}, top_k=100)
    assert len(all_pairs["scores"]) == 6 and all_pairs["scores"][-1].item() == 0
    # panoptic datasets: stuff classes are dropped from the top-3, not replaced
    (things,) = instance_inference({"pred_logits": logits, "pred_masks": masks}, [(16, 16)], [(16, 16)], top_k=3,
                                   metadata=PanopticMetadata(frozenset({1})))
    assert things["labels"].tolist() == [1, 1]
    assert things["scores"].tolist() == pytest.approx([.8 * s1, .3 * sigmoid(2)], rel=1e-5)


class DummySegmenter(nn.Module):
    """Pads to a multiple of 4; query q's mask is 4x4-average-pooled channel q%3 times (q+1);
    class logits are fixed. Dropout makes a forgotten eval() visible."""

    def __init__(self, num_queries=4, num_classes=3):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.logits = nn.Parameter(torch.randn(num_queries, num_classes + 1, generator=g))
        self.dropout = nn.Dropout(0.5)
        self.num_queries = num_queries

    def forward(self, images):
        H, W = images.shape[-2:]
        x = F.pad(images, (0, -W % 4, 0, -H % 4))
        pooled = F.avg_pool2d(x, 4)
        masks = torch.stack([pooled[:, q % 3] * (q + 1) for q in range(self.num_queries)], 1)
        return {"pred_logits": self.logits.expand(len(images), -1, -1), "pred_masks": self.dropout(masks),
                "input_size": (H, W)}


def test_tta_is_the_mean_over_scales_and_flips():
    torch.manual_seed(0)
    model = DummySegmenter().train()
    image = torch.randn(3, 22, 29)
    scales, output_size = (0.5, 1.0, 1.5), (22, 29)
    got = semantic_inference_tta(model, image, output_size, scales=scales, flip=True)
    assert model.training, "the model's mode must be restored"
    model.eval()
    views = []
    with torch.no_grad():
        for s in scales:
            size = (int(22 * s + 0.5), int(29 * s + 0.5))
            resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)
            for flipped in (False, True):
                x = resized.flip(-1) if flipped else resized
                out = model(x)
                sem = official_semantic64(out["pred_logits"][0], out["pred_masks"][0], size, output_size)
                views.append(sem.flip(-1) if flipped else sem)
    expected = torch.stack(views).mean(0)
    assert got.shape == (3, 22, 29)
    assert_close_verbose(got, expected.float(), rtol=1e-5, atol=1e-6, name="tta")
    single = semantic_inference_tta(model, image, scales=(1.0,), flip=False)
    assert_close_verbose(single, semantic_inference(model(image[None]))[0], rtol=1e-6, atol=1e-7, name="one view")
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        semantic_inference_tta(model, image[None], output_size)
