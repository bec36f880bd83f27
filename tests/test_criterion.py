"""MaskFormerCriterion against hand computations, brute-force matching and a float64 transcription
of the official per-image / per-layer matcher + SetCriterion (scipy, one problem at a time)."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from maskformer_fast import ops
from maskformer_fast.criterion import MaskFormerCriterion
from tests.helpers import assert_close_verbose, only_kernel

ALPHA, GAMMA = 0.25, 2.0


# ---------------------------------------------------------------- independent references (float64)
def pairwise_costs64(logits, masks, labels, tgt_masks):
    """The official matcher's cost matrix [Q, K] for one image: masks [Q,h,w] logits,
    tgt_masks [K,Hp,Wp] padded targets, downsampled with F.interpolate(nearest)."""
    x = masks.double().flatten(1)
    prob = x.sigmoid()
    t = F.interpolate(tgt_masks[:, None].double(), size=masks.shape[-2:], mode="nearest")[:, 0].flatten(1)
    pos = ALPHA * (1 - prob) ** GAMMA * F.binary_cross_entropy_with_logits(x, torch.ones_like(x), reduction="none")
    neg = (1 - ALPHA) * prob ** GAMMA * F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none")
    focal = (pos @ t.T + neg @ (1 - t).T) / x.shape[1]
    dice = 1 - (2 * prob @ t.T + 1) / (prob.sum(1)[:, None] + t.sum(1)[None, :] + 1)
    cls = -logits.double().softmax(-1)[:, labels]
    return 20 * focal + cls + dice


def pad_targets(targets, padded):
    out = []
    for t in targets:
        m = torch.zeros((len(t["labels"]), *padded), dtype=torch.float64)
        m[:, : t["masks"].shape[1], : t["masks"].shape[2]] = t["masks"].double()
        out.append(m)
    return out


def official_losses64(outputs, targets, num_classes, eos=0.1):
    """Float64 transcription of the official loop: returns (weighted losses, indices per layer)."""
    h, w = outputs["pred_masks"].shape[-2:]
    # the official prepare_targets pads to the ImageList's tensor size (4h x 4w only when the
    # padded size happens to be an exact multiple of 4)
    padded = pad_targets(targets, outputs.get("padded_size", (4 * h, 4 * w)))
    num_masks = max(sum(len(t["labels"]) for t in targets), 1)
    weight = torch.ones(num_classes + 1, dtype=torch.float64)
    weight[-1] = eos
    layers = [outputs] + list(outputs.get("aux_outputs", []))
    losses, all_indices = {}, []
    for l, layer in enumerate(layers):
        logits, masks = layer["pred_logits"].double(), layer["pred_masks"].double()
        indices = []
        for b, t in enumerate(targets):
            if len(t["labels"]) == 0:
                indices.append((np.zeros(0, np.int64), np.zeros(0, np.int64)))
                continue
            cost = pairwise_costs64(logits[b], masks[b], t["labels"], padded[b])
            indices.append(linear_sum_assignment(cost.detach().numpy()))
        all_indices.append(indices)
        classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64)
        src, tgt = [], []
        for b, (rows, cols) in enumerate(indices):
            classes[b, torch.as_tensor(rows)] = targets[b]["labels"][torch.as_tensor(cols)]
            src += [masks[b, r] for r in rows]
            tgt += [padded[b][c] for c in cols]
        loss_ce = F.cross_entropy(logits.transpose(1, 2), classes, weight)
        if src:
            x = F.interpolate(torch.stack(src)[:, None], size=padded[0].shape[-2:], mode="bilinear",
                              align_corners=False).flatten(1)
            t = torch.stack(tgt).flatten(1)
            p = x.sigmoid()
            ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
            p_t = p * t + (1 - p) * (1 - t)
            focal = ((ALPHA * t + (1 - ALPHA) * (1 - t)) * ce * (1 - p_t) ** GAMMA).mean(1).sum() / num_masks
            dice = (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).sum() / num_masks
        else:
            focal = dice = masks.sum() * 0
        suffix = "" if l == 0 else f"_{l - 1}"
        losses.update({"loss_ce" + suffix: loss_ce, "loss_mask" + suffix: 20 * focal, "loss_dice" + suffix: dice})
    return losses, all_indices


def make_batch(counts, Q=6, C=4, h=5, w=7, input_size=(18, 26), num_aux=2, seed=0, requires_grad=False,
               padded_size=None):
    g = torch.Generator().manual_seed(seed)
    B = len(counts)

    def layer():
        return {"pred_logits": (2 * torch.randn(B, Q, C + 1, generator=g)).requires_grad_(requires_grad),
                "pred_masks": (3 * torch.randn(B, Q, h, w, generator=g)).requires_grad_(requires_grad)}

    outputs = layer()
    outputs["aux_outputs"] = [layer() for _ in range(num_aux)]
    outputs["input_size"] = input_size
    if padded_size is not None:
        outputs["padded_size"] = padded_size
    targets = [{"labels": torch.randint(0, C, (k,), generator=g),
                "masks": torch.rand(k, *input_size, generator=g) > 0.6} for k in counts]
    return outputs, targets


def as_pairs(cols_row):
    rows = np.nonzero(cols_row >= 0)[0]
    return rows, cols_row[rows]


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("counts", [(3, 1, 2), (0, 4), (9, 2)], ids=["mixed", "one-empty", "more-targets-than-queries"])
def test_matches_official_loop(counts):
    outputs, targets = make_batch(counts)
    crit = MaskFormerCriterion(num_classes=4)
    losses = crit(outputs, targets)
    expected, expected_indices = official_losses64(outputs, targets, num_classes=4)
    assert sorted(losses) == sorted(expected)
    for key in expected:
        assert_close_verbose(losses[key].detach(), expected[key].float(), rtol=1e-5, atol=1e-6, name=key)
    cols = crit.match(outputs, targets).numpy()
    Q = outputs["pred_logits"].shape[1]
    for l, per_image in enumerate(expected_indices):
        for b, (rows, tcols) in enumerate(per_image):
            got_rows, got_cols = as_pairs(cols[l, b])
            assert len(got_rows) == min(Q, counts[b])
            np.testing.assert_array_equal(got_rows, rows)
            np.testing.assert_array_equal(got_cols, tcols)


@pytest.mark.parametrize("Q,K", [(4, 3), (4, 4), (3, 5)])
def test_matching_is_brute_force_optimum(Q, K):
    outputs, targets = make_batch((K,), Q=Q, num_aux=0, seed=Q * 10 + K)
    cols = MaskFormerCriterion(num_classes=4).match(outputs, targets)[0, 0].tolist()
    h, w = outputs["pred_masks"].shape[-2:]
    cost = pairwise_costs64(outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0]["labels"],
                            pad_targets(targets, (4 * h, 4 * w))[0])
    n = min(Q, K)
    best = min(
        (sum(cost[q, k].item() for q, k in zip(qs, ks)), sorted(zip(qs, ks)))
        for qs in itertools.combinations(range(Q), n) for ks in itertools.permutations(range(K), n)
    )
    got = sorted((q, k) for q, k in enumerate(cols) if k >= 0)
    assert got == best[1]


def test_hand_computed_single_pair():
    """One query, one target, constant mask logit: every loss has a closed form."""
    a, b, x = 1.5, -0.5, 0.8  # class logits (class 0, no-object) and the mask logit
    outputs = {"pred_logits": torch.tensor([[[a, b]]]), "pred_masks": torch.full((1, 1, 2, 2), x),
               "input_size": (8, 8)}
    target = torch.zeros(1, 8, 8, dtype=torch.bool)
    target[0, :, :6] = True  # 48 of 64 pixels positive; upsampling a constant keeps it constant
    losses = MaskFormerCriterion(num_classes=1)(outputs, [{"labels": torch.tensor([0]), "masks": target}])
    p = 1 / (1 + math.exp(-x))
    ce = -math.log(math.exp(a) / (math.exp(a) + math.exp(b)))
    focal = (48 * ALPHA * (1 - p) ** 2 * -math.log(p) + 16 * (1 - ALPHA) * p ** 2 * -math.log(1 - p)) / 64
    dice = 1 - (2 * 48 * p + 1) / (64 * p + 48 + 1)
    assert losses["loss_ce"].item() == pytest.approx(ce, rel=1e-6)
    assert losses["loss_mask"].item() == pytest.approx(20 * focal, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(dice, rel=1e-5)


def test_unmatched_queries_weighted_no_object_ce():
    """No targets at all: every query's target is no-object, CE weighted mean = plain mean."""
    outputs, targets = make_batch((0, 0), requires_grad=True)
    losses = MaskFormerCriterion(num_classes=4, no_object_weight=0.1)(outputs, targets)
    logits = outputs["pred_logits"].detach().double()
    expected_ce = -logits.log_softmax(-1)[..., -1].mean()
    assert losses["loss_ce"].item() == pytest.approx(expected_ce.item(), rel=1e-6)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    sum(losses.values()).backward()
    # the zero mask losses stay in the graph (DDP needs every output used)
    assert outputs["pred_masks"].grad is not None and outputs["aux_outputs"][0]["pred_masks"].grad is not None


def test_gradients_match_official_float64():
    outputs, targets = make_batch((2, 3), requires_grad=True, seed=3)
    losses = MaskFormerCriterion(num_classes=4)(outputs, targets)
    sum(losses.values()).backward()
    layers = [outputs] + outputs["aux_outputs"]
    leaves64 = [{k: layer[k].detach().double().requires_grad_() for k in ("pred_logits", "pred_masks")}
                for layer in layers]
    outputs64 = dict(leaves64[0], aux_outputs=leaves64[1:], input_size=outputs["input_size"])
    expected, _ = official_losses64(outputs64, targets, num_classes=4)
    sum(expected.values()).backward()
    for i, (layer, layer64) in enumerate(zip(layers, leaves64)):
        for key in ("pred_logits", "pred_masks"):
            assert layer[key].grad is not None and layer[key].grad.abs().sum() > 0
            assert_close_verbose(layer[key].grad, layer64[key].grad.float(), rtol=1e-4, atol=1e-6,
                                 name=f"layer {i} {key}.grad")


@pytest.mark.parametrize("kernel", ["cpp", "triton"], ids=["cpp-solver", "triton-solver"])
def test_losses_identical_with_each_matching_solver(kernel, monkeypatch):
    """Same matching and losses as the scipy reference (ops.use("eager")); the Triton solver runs
    on CUDA tensors when there is a GPU, through the Triton interpreter otherwise."""
    from maskformer_fast import matching
    if kernel == "cpp" and matching._C is None:
        pytest.skip("maskformer_fast._C is not built here")
    device = "cuda" if kernel == "triton" and torch.cuda.is_available() else "cpu"
    outputs, targets = make_batch((3, 0, 7), seed=5)
    with ops.use("eager"):
        expected_cols = MaskFormerCriterion(num_classes=4).match(outputs, targets)
        expected = MaskFormerCriterion(num_classes=4)(outputs, targets)
    only_kernel(monkeypatch, "linear_sum_assignment", kernel, device)  # picked by "auto"; the other ops as usual

    def to(x):
        if isinstance(x, dict):
            return {k: to(v) for k, v in x.items()}
        if isinstance(x, list):
            return [to(v) for v in x]
        return x.to(device) if isinstance(x, torch.Tensor) else x

    crit = MaskFormerCriterion(num_classes=4).to(device)
    assert torch.equal(crit.match(to(outputs), to(targets)).cpu(), expected_cols)
    got = crit(to(outputs), to(targets))
    for key in expected:
        assert_close_verbose(got[key].cpu(), expected[key], rtol=1e-6, atol=1e-7, name=key)
    broken = to(outputs)
    broken["pred_logits"] = broken["pred_logits"].clone()
    broken["pred_logits"][2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="final decoder layer image 2"):
        crit(broken, to(targets))


def test_num_masks_all_reduced_when_distributed(tmp_path):
    """A one-process gloo group runs the all-reduce path: num_masks (and the losses) unchanged."""
    import torch.distributed as dist
    outputs, targets = make_batch((2, 3))
    crit = MaskFormerCriterion(num_classes=4)
    expected = crit(outputs, targets)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert crit._num_masks([2, 3], torch.device("cpu")) == 5.0
        got = crit(outputs, targets)
    finally:
        dist.destroy_process_group()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_num_masks_is_the_mean_over_processes(monkeypatch):
    """Two processes with 5 and 7 targets both normalise by 6 (the official criterion's mean)."""
    import torch.distributed as dist

    def all_reduce(tensor):  # the other process contributes 7 targets
        tensor += 7.0

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    crit = MaskFormerCriterion(num_classes=4)
    assert crit._num_masks([2, 3], torch.device("cpu")) == 6.0
    assert crit._num_masks([0], torch.device("cpu")) == 3.5


def test_aux_loss_keys():
    outputs, targets = make_batch((2,), num_aux=5)
    losses = MaskFormerCriterion(num_classes=4)(outputs, targets)
    expected = {f"{name}{suffix}" for name in ("loss_ce", "loss_mask", "loss_dice")
                for suffix in [""] + [f"_{i}" for i in range(5)]}
    assert set(losses) == expected


def test_bad_inputs_raise_clear_errors():
    crit = MaskFormerCriterion(num_classes=4)
    outputs, targets = make_batch((2, 1))
    wrong_size = [dict(t, masks=t["masks"][:, :-1]) for t in targets]
    with pytest.raises(ValueError, match=r"\(17, 26\).*\(18, 26\)"):
        crit(outputs, wrong_size)
    with pytest.raises(ValueError, match="labels must lie in"):
        crit(outputs, [dict(targets[0], labels=torch.tensor([0, 4])), targets[1]])
    with pytest.raises(ValueError, match="4 targets for a batch of 2"):
        crit(outputs, targets + targets)
    with pytest.raises(ValueError, match="pred_logits must be"):
        MaskFormerCriterion(num_classes=5)(outputs, targets)
    broken = dict(outputs, aux_outputs=[dict(a) for a in outputs["aux_outputs"]])
    broken["aux_outputs"][1]["pred_masks"] = broken["aux_outputs"][1]["pred_masks"].clone()
    broken["aux_outputs"][1]["pred_masks"][1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"aux_outputs\[1\] image 1.*NaN"):
        crit(broken, targets)


def test_real_model_loss_backward():
    """The model's own criterion on a real forward: losses of every layer, gradients reach the
    heads, the pixel decoder and the backbone stem."""
    import maskformer_fast as mf
    torch.manual_seed(0)
    model = mf.build_model(mf.get_config("maskformer_r50_ade20k", num_decoder_layers=2))
    outputs = model(torch.randn(1, 3, 32, 48))
    masks = torch.zeros(2, 32, 48, dtype=torch.bool)
    masks[0, :16], masks[1, 16:] = True, True
    losses = model.criterion(outputs, [{"labels": torch.tensor([3, 7]), "masks": masks}])
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"}
    sum(losses.values()).backward()
    # Exactly zero at init, as in the official model, so not checked: backbone blocks whose
    # frozen last BN scale is 0 (timm's zero_init_last; checked at the stem instead), and the
    # first decoder layer's self-attention and norm1, which see the all-zero initial queries
    # (constant values, zero-initialised biases).
    at_init_zero = ("predictor.transformer.decoder.layers.0.self_attn.", "predictor.transformer.decoder.layers.0.norm1.")
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
               and (not n.startswith("backbone.") or "conv1" in n and "layer" not in n)
               and not n.startswith(at_init_zero)]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    stem = [p for n, p in model.named_parameters() if n.startswith("backbone.") and "layer" not in n and p.dim() == 4]
    assert stem and all(p.grad is not None and p.grad.any() for p in stem)


def test_precomputed_matching_gives_the_same_losses():
    outputs, targets = make_batch((2, 3), num_aux=2)
    crit = MaskFormerCriterion(num_classes=4)
    matching = crit.match(outputs, targets)
    assert matching.shape == (3, 2, outputs["pred_logits"].shape[1])
    expected = crit(outputs, targets)
    got = crit(outputs, targets, matching=matching)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    # another matching gives other losses: the argument is used, not recomputed
    other = crit(outputs, targets, matching=torch.roll(matching, 1, dims=2))
    assert not torch.equal(other["loss_mask"], expected["loss_mask"])
    with pytest.raises(ValueError, match="matching must be int64"):
        crit(outputs, targets, matching=matching[:2])


def test_non_binary_target_masks_are_refused():
    crit = MaskFormerCriterion(num_classes=4)
    outputs, targets = make_batch((2, 1))
    for bad in (targets[0]["masks"].to(torch.uint8) * 255, targets[0]["masks"].float() * 0.5):
        with pytest.raises(ValueError, match=r"targets\[0\]\['masks'\].*other than 0 and 1"):
            crit(outputs, [dict(targets[0], masks=bad), targets[1]])
    as_numbers = [dict(t, masks=t["masks"].float()) for t in targets]  # 0/1 numbers: the same losses
    assert {k: v.item() for k, v in crit(outputs, as_numbers).items()} == \
        {k: v.item() for k, v in crit(outputs, targets).items()}
