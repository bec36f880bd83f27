"""MaskFormer's set criterion: bipartite matching, then classification and mask losses.

Numerically this is the official facebookresearch/MaskFormer ``HungarianMatcher`` +
``SetCriterion`` (losses "labels" and "masks", deep supervision). The structure differs in
one place: the official matcher builds one [Q, K] cost matrix per decoder layer and image and
calls scipy on each (L*B host round trips per step). Here the costs of every layer and image
come out of one ``ops.mask_costs`` call and are solved by one
``matching.linear_sum_assignment`` call (``ops.linear_sum_assignment``: under ``ops.use("eager")``
the scipy reference, else the C++ solver for CPU costs and the Triton one for CUDA costs).

Conventions: L decoder layers (the final one first, then ``aux_outputs`` in order), B images,
Q queries, C classes (index C is "no object"), K targets of an image, Kmax the most in the
batch, h x w the stride-4 prediction grid, Hp x Wp the padded input size (the model's
"padded_size"; 4h x 4w for hand-built outputs without it). As the official code, target masks
are zero-padded to Hp x Wp, the losses upsample predictions to Hp x Wp (bilinear) and the
matcher resizes targets to h x w (``F.interpolate(mode="nearest")``); neither assumes that
Hp x Wp is exactly 4h x 4w.
"""
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import matching, ops
from .inference import padded_size

__all__ = ["MaskFormerCriterion"]


class _Targets(NamedTuple):
    """A batch's targets in the layouts the matcher and the losses need.

    labels: int64 [B, Kmax] (0 in padded slots); counts: per-image K (host ints);
    masks: bool [N, Hp, Wp], every image's masks concatenated (N = sum K), zero-padded
    bottom/right; offsets: int64 [B], where image b's masks start in ``masks``;
    low_res: [B, Kmax, h, w] the masks at the prediction size (nearest), zero-padded per image.
    """
    labels: torch.Tensor
    counts: List[int]
    masks: torch.Tensor
    offsets: torch.Tensor
    low_res: torch.Tensor


def _layer_name(layer: int) -> str:
    return "the final decoder layer" if layer == 0 else f"aux_outputs[{layer - 1}]"


def _check_binary(masks: torch.Tensor, b: int) -> None:
    """Target masks are bool, or numbers that are all 0 or 1: a 0/255 or soft mask is refused
    rather than binarised silently (one host sync, for non-bool masks only)."""
    if masks.dtype == torch.bool or masks.numel() == 0:
        return
    if not bool(((masks == 0) | (masks == 1)).all()):
        raise ValueError(f"targets[{b}]['masks'] ({masks.dtype}) hold values other than 0 and 1 (0/255 or soft "
                         f"masks?): pass bool masks")


class MaskFormerCriterion(nn.Module):
    """Hungarian matching + weighted CE / sigmoid focal / dice losses with deep supervision.

    Args:
        num_classes: C, the number of classes without "no object".
        class_weight: weight of the class cost and of the CE loss.
        mask_weight: weight of the focal cost and of the focal loss.
        dice_weight: weight of the dice cost and of the dice loss.
        no_object_weight: CE weight of the "no object" class (the official ``eos_coef``).

    ``forward(outputs, targets)`` returns already-weighted losses: ``loss_ce``, ``loss_mask``,
    ``loss_dice`` for the final layer and ``loss_ce_{i}``, ``loss_mask_{i}``,
    ``loss_dice_{i}`` for ``outputs["aux_outputs"][i]``; their sum is the training loss.
    """

    def __init__(
        self,
        num_classes: int,
        class_weight: float = 1.0,
        mask_weight: float = 20.0,
        dice_weight: float = 1.0,
        no_object_weight: float = 0.1,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        # Same buffer name as the official SetCriterion and HF's MaskFormerLoss, so their
        # state dicts' "criterion.empty_weight" maps one to one.
        self.register_buffer("empty_weight", empty_weight)

    # ------------------------------------------------------------------ validation
    def _decoder_layers(self, outputs: Dict) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """(pred_logits [B,Q,C+1], pred_masks [B,Q,h,w]) per layer, the final layer first."""
        for key in ("pred_logits", "pred_masks"):
            if key not in outputs:
                raise ValueError(f"outputs has no {key!r} (keys: {sorted(outputs)})")
        layers = [outputs] + list(outputs.get("aux_outputs", []))
        logits0, masks0 = outputs["pred_logits"], outputs["pred_masks"]
        if logits0.dim() != 3 or logits0.shape[-1] != self.num_classes + 1:
            raise ValueError(f"pred_logits must be [B, Q, {self.num_classes + 1}] (num_classes + no-object), "
                             f"got {tuple(logits0.shape)}")
        if masks0.dim() != 4 or masks0.shape[:2] != logits0.shape[:2]:
            raise ValueError(f"pred_masks must be [B, Q, h, w] with B, Q = {tuple(logits0.shape[:2])}, "
                             f"got {tuple(masks0.shape)}")
        pairs = []
        for i, layer in enumerate(layers):
            logits, masks = layer["pred_logits"], layer["pred_masks"]
            if logits.shape != logits0.shape or masks.shape != masks0.shape:
                raise ValueError(f"{_layer_name(i)} has shapes {tuple(logits.shape)}, {tuple(masks.shape)}; "
                                 f"the final layer has {tuple(logits0.shape)}, {tuple(masks0.shape)}")
            if not (logits.is_floating_point() and masks.is_floating_point()):
                raise ValueError(f"{_layer_name(i)}: predictions must be floating, got {logits.dtype}, {masks.dtype}")
            pairs.append((logits, masks))
        return pairs

    def _prepare_targets(self, outputs: Dict, targets: Sequence[Dict]) -> _Targets:
        """Validate targets, pad their masks to Hp x Wp (as the official prepare_targets), and
        build the per-image padded label / low-resolution mask tensors of the matcher."""
        masks0 = outputs["pred_masks"]
        B, _, h, w = masks0.shape
        padded = padded_size(outputs)
        input_size = tuple(outputs.get("input_size", padded))
        if input_size[0] > padded[0] or input_size[1] > padded[1]:
            raise ValueError(f"input_size {input_size} is larger than the padded size {padded} of pred_masks")
        if len(targets) != B:
            raise ValueError(f"got {len(targets)} targets for a batch of {B} images")
        device = masks0.device
        labels, masks = [], []
        for b, t in enumerate(targets):
            lab, msk = t["labels"], t["masks"]
            if lab.dim() != 1 or lab.is_floating_point() or lab.dtype == torch.bool:
                raise ValueError(f"targets[{b}]['labels'] must be an integer [K] tensor, "
                                 f"got {lab.dtype} {tuple(lab.shape)}")
            if msk.dim() != 3 or msk.shape[0] != lab.shape[0]:
                raise ValueError(f"targets[{b}]['masks'] must be [K={lab.shape[0]}, H, W], got {tuple(msk.shape)}")
            if tuple(msk.shape[-2:]) != input_size:
                raise ValueError(f"targets[{b}]['masks'] are {tuple(msk.shape[-2:])} but the input images are "
                                 f"{input_size} (H, W): masks must have the input image size")
            _check_binary(msk, b)
            labels.append(lab.to(device, torch.int64))
            masks.append(msk.to(device))
        counts = [len(lab) for lab in labels]
        all_labels = torch.cat(labels)
        if all_labels.numel():
            lo, hi = torch.stack(torch.aminmax(all_labels)).tolist()
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(f"target labels must lie in [0, {self.num_classes}), got values in [{lo}, {hi}]")

        N, K = len(all_labels), max(counts, default=0)
        full = torch.zeros((N, *padded), dtype=torch.bool, device=device)
        if N:
            full[:, : input_size[0], : input_size[1]] = torch.cat(masks) != 0
        image = torch.repeat_interleave(torch.arange(B), torch.tensor(counts, dtype=torch.int64))
        offsets = torch.tensor([0] + counts[:-1], dtype=torch.int64).cumsum(0)
        slot = (torch.arange(N) - offsets[image]).to(device)
        image = image.to(device)
        padded_labels = torch.zeros((B, K), dtype=torch.int64, device=device)
        padded_labels[image, slot] = all_labels
        # The official matcher's F.interpolate(mode="nearest") to the prediction grid (uint8:
        # the same pixel selection as on floats, a quarter of the memory).
        low_res = torch.zeros((B, K, h, w), dtype=masks0.dtype, device=device)
        if N:
            nearest = F.interpolate(full[:, None].to(torch.uint8), size=(h, w), mode="nearest")[:, 0]
            low_res[image, slot] = nearest.to(masks0.dtype)
        return _Targets(padded_labels, counts, full, offsets.to(device), low_res)

    # ------------------------------------------------------------------ matching
    @torch.no_grad()
    def _match(self, layers: List[Tuple[torch.Tensor, torch.Tensor]], tgt: _Targets) -> torch.Tensor:
        """Columns matched to each query, int64 [L, B, Q] (-1: unmatched).

        The layers are stacked along the query axis ([B, L*Q, ...]) so that each image's
        target masks enter ``ops.mask_costs`` once, not once per layer.
        """
        L = len(layers)
        B, Q = layers[0][0].shape[:2]
        K = tgt.labels.shape[1]
        if K == 0:  # no targets anywhere in the batch: nothing to match
            return torch.full((L, B, Q), -1, dtype=torch.int64, device=layers[0][0].device)
        num_targets = torch.tensor(tgt.counts, dtype=torch.int64)
        pred_masks = torch.stack([m for _, m in layers], 1).flatten(1, 2)  # [B, L*Q, h, w]
        focal, dice = ops.mask_costs(pred_masks, tgt.low_res, num_targets.to(pred_masks.device))
        prob = torch.stack([lg for lg, _ in layers], 1).flatten(1, 2).float().softmax(-1)  # [B, L*Q, C+1]
        # The official class cost: -p(target class), the 1 of "1 - p" dropped.
        class_cost = -prob.gather(2, tgt.labels[:, None, :].expand(-1, L * Q, -1))
        cost = self.mask_weight * focal + self.class_weight * class_cost + self.dice_weight * dice
        cost = cost.view(B, L, Q, K).transpose(0, 1).reshape(L * B, Q, K)
        try:
            cols = matching.linear_sum_assignment(cost, num_cols=num_targets.repeat(L))
        except ValueError as err:
            valid = torch.arange(K, device=cost.device) < num_targets.to(cost.device).repeat(L)[:, None]
            broken = (~torch.isfinite(cost) & valid[:, None, :]).flatten(1).any(1).nonzero().flatten().tolist()
            if not broken:
                raise
            where = ", ".join(f"{_layer_name(p // B)} image {p % B}" for p in broken[:4])
            raise ValueError(f"matching costs are NaN/inf for {where}: the predictions there contain NaN "
                             f"or inf (diverged training? try a lower learning rate or fp32)") from err
        return cols.view(L, B, Q)

    def match(self, outputs: Dict, targets: Sequence[Dict]) -> torch.Tensor:
        """The matching of every layer: int64 [L, B, Q], the target index matched to each
        query or -1; layer 0 is the final layer, layer i+1 is ``outputs["aux_outputs"][i]``.

        Same assignment as the official matcher, whose (query, target) index pairs for layer l
        and image b are ``(q, cols[l, b, q])`` for the queries with ``cols[l, b, q] >= 0``.
        """
        layers = self._decoder_layers(outputs)
        return self._match(layers, self._prepare_targets(outputs, targets))

    # ------------------------------------------------------------------ losses
    def _num_masks(self, counts: List[int], device: torch.device) -> float:
        """Targets per process, averaged over processes when distributed, at least 1."""
        num_masks = float(sum(counts))
        if dist.is_available() and dist.is_initialized():
            total = torch.tensor([num_masks], device=device)
            dist.all_reduce(total)
            num_masks = total.item() / dist.get_world_size()
        return max(num_masks, 1.0)

    def forward(self, outputs: Dict, targets: Sequence[Dict],
                matching: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Weighted losses of every decoder layer (see the class docstring).

        outputs: the model's dict ("pred_logits" [B,Q,C+1], "pred_masks" [B,Q,h,w],
        "padded_size" (Hp, Wp), default (4h, 4w), optional "aux_outputs" and "input_size"
        (H, W), default the padded size); targets: B dicts
        with "labels" int64 [K] in [0, C) and "masks" binary [K, H, W] (K = 0 allowed);
        matching: a precomputed assignment ``match()`` returned, to reuse instead of solving
        (e.g. to compare losses of two runs on the same pairs).
        """
        layers = self._decoder_layers(outputs)
        tgt = self._prepare_targets(outputs, targets)
        if matching is None:
            cols = self._match(layers, tgt)  # [L, B, Q]
        else:
            expected = (len(layers), *outputs["pred_logits"].shape[:2])
            if tuple(matching.shape) != expected or matching.dtype != torch.int64:
                raise ValueError(f"matching must be int64 {list(expected)} as match() returns, got "
                                 f"{matching.dtype} {list(matching.shape)}")
            cols = matching.to(outputs["pred_logits"].device)
        num_masks = self._num_masks(tgt.counts, outputs["pred_logits"].device)
        L, B, Q = cols.shape
        K = tgt.labels.shape[1]

        # Unmatched queries point at an extra column holding the no-object class.
        no_object = torch.full((B, 1), self.num_classes, dtype=torch.int64, device=cols.device)
        labels_ext = torch.cat([tgt.labels, no_object], 1)[None].expand(L, -1, -1)
        target_classes = labels_ext.gather(2, cols.masked_fill(cols < 0, K))  # [L, B, Q]

        matched = (cols >= 0).nonzero()  # [M_total, 3] rows (layer, image, query), sorted
        per_layer = torch.bincount(matched[:, 0], minlength=L).tolist()
        losses = {}
        for l, ((logits, masks), pairs) in enumerate(zip(layers, matched.split(per_layer))):
            suffix = "" if l == 0 else f"_{l - 1}"
            ce_dtype = torch.promote_types(logits.dtype, torch.float32)  # fp32 under autocast, fp64 stays fp64
            loss_ce = F.cross_entropy(logits.to(ce_dtype).transpose(1, 2), target_classes[l],
                                      self.empty_weight.to(ce_dtype))
            image, query = pairs[:, 1], pairs[:, 2]
            if len(pairs):
                target = tgt.masks[tgt.offsets[image] + cols[l, image, query]]
                # bool targets: the kernel reads 1 byte per pixel and no float [M,H,W] copy is made
                loss_mask, loss_dice = ops.mask_losses(masks[image, query], target, num_masks)
            else:
                # Nothing to match: zero, but still a function of pred_masks, so DDP sees
                # every parameter take part in the step.
                loss_mask = loss_dice = masks.sum() * 0.0
            losses["loss_ce" + suffix] = self.class_weight * loss_ce
            losses["loss_mask" + suffix] = self.mask_weight * loss_mask
            losses["loss_dice" + suffix] = self.dice_weight * loss_dice
        return losses
