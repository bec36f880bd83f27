"""Post-processing of MaskFormer outputs: semantic, panoptic and instance maps, semantic TTA.

Semantic and panoptic follow the official facebookresearch/MaskFormer
``MaskFormer.semantic_probabilistic_inference`` / ``panoptic_inference`` (with Detectron2's
``sem_seg_postprocess``), instance follows Mask2Former's ``instance_inference``, and the
test-time augmentation follows Detectron2's ``SemanticSegmentorWithTTA``.

Shared arguments: ``out`` is the model's dict ("pred_logits" [B,Q,C+1], "pred_masks"
[B,Q,h,w] mask logits on the stride-4 grid of the padded input, "padded_size" (Hp, Wp) the
size of the input the backbone saw, optional "input_size"); ``image_sizes[i]`` is the (H, W)
of image i's valid region (top-left of the padded input; default ``out["input_size"]``);
``output_sizes[i]`` is the (H, W) to return (default: the image size). As the official model,
the mask logits are upsampled bilinearly to Hp x Wp, then cropped to the image and resized to
the output size (Detectron2's ``sem_seg_postprocess``). Hand-built outputs without
"padded_size" are taken as an exact stride-4 grid, Hp x Wp = 4h x 4w. Every function works
under ``torch.no_grad``.
"""
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PanopticMetadata", "semantic_inference", "semantic_labels", "panoptic_inference", "instance_inference",
           "semantic_inference_tta"]

MASK_STRIDE = 4
Size = Tuple[int, int]
# The largest [maps, rows, W] float buffer the full-resolution post-processing of semantic labels
# and panoptic maps builds (128 MB): larger outputs are processed in bands of rows.
TILE_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class PanopticMetadata:
    """Which classes are "things" (countable instances) for panoptic inference.

    thing_classes: the contiguous class indices (0..C-1, the model's label space) that are
    things; every other class is stuff, and stuff segments of one class are merged.
    """
    thing_classes: FrozenSet[int]

    def __post_init__(self):
        object.__setattr__(self, "thing_classes", frozenset(int(c) for c in self.thing_classes))

    @classmethod
    def from_isthing(cls, isthing: Iterable[bool]) -> "PanopticMetadata":
        """From one flag per class, e.g. ``[c["isthing"] for c in coco_categories]``."""
        return cls(frozenset(i for i, flag in enumerate(isthing) if flag))


def _as_metadata(metadata: Union[PanopticMetadata, Mapping]) -> PanopticMetadata:
    if isinstance(metadata, PanopticMetadata):
        return metadata
    if isinstance(metadata, Mapping) and "thing_classes" in metadata:
        return PanopticMetadata(metadata["thing_classes"])
    raise ValueError("metadata must be a PanopticMetadata (or a dict with 'thing_classes': the class "
                     f"indices that are things), got {type(metadata).__name__}")


def _check_outputs(out: Dict) -> Tuple[torch.Tensor, torch.Tensor]:
    for key in ("pred_logits", "pred_masks"):
        if key not in out:
            raise ValueError(f"outputs has no {key!r} (keys: {sorted(out)})")
    logits, masks = out["pred_logits"], out["pred_masks"]
    if logits.dim() != 3 or masks.dim() != 4 or logits.shape[:2] != masks.shape[:2]:
        raise ValueError(f"expected pred_logits [B, Q, C+1] and pred_masks [B, Q, h, w], got "
                         f"{tuple(logits.shape)} and {tuple(masks.shape)}")
    return logits, masks


def padded_size(out: Dict) -> Size:
    """(Hp, Wp), the size of the input the backbone saw: ``out["padded_size"]``, or 4h x 4w
    for outputs that do not carry it."""
    h, w = out["pred_masks"].shape[-2:]
    size = out.get("padded_size")
    if size is None:
        return (MASK_STRIDE * h, MASK_STRIDE * w)
    size = tuple(int(v) for v in size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"padded_size must be (Hp, Wp), positive, got {out['padded_size']}")
    return size


def _sizes(out: Dict, image_sizes: Optional[Sequence[Size]],
           output_sizes: Optional[Sequence[Size]]) -> Tuple[List[Size], List[Size]]:
    """Validated per-image (valid size, output size) lists."""
    B = out["pred_masks"].shape[0]
    padded = padded_size(out)
    if image_sizes is None:
        image_sizes = [tuple(out.get("input_size", padded))] * B
    image_sizes = [tuple(int(v) for v in s) for s in image_sizes]
    output_sizes = image_sizes if output_sizes is None else [tuple(int(v) for v in s) for s in output_sizes]
    if len(image_sizes) != B or len(output_sizes) != B:
        raise ValueError(f"need one image size and one output size per image ({B}), got "
                         f"{len(image_sizes)} and {len(output_sizes)}")
    for size in image_sizes:
        if not (0 < size[0] <= padded[0] and 0 < size[1] <= padded[1]):
            raise ValueError(f"image size {size} must lie within the padded input size {padded}")
    for size in output_sizes:
        if min(size) <= 0:
            raise ValueError(f"output sizes must be positive, got {size}")
    return image_sizes, output_sizes


def _postprocess(maps: torch.Tensor, padded: Size, image_size: Size, output_size: Size) -> torch.Tensor:
    """The official upsampling and Detectron2's sem_seg_postprocess: [N, h, w] maps -> bilinear
    to the padded input size -> crop the valid region -> bilinear to output_size. Returns
    [N, *output_size]."""
    return _crop_resize(_upsample(maps, padded), image_size, output_size)


def _upsample(maps: torch.Tensor, padded: Size) -> torch.Tensor:
    """[N, h, w] -> [N, *padded], bilinear (the official F.interpolate to the ImageList size)."""
    return F.interpolate(maps[None], size=padded, mode="bilinear", align_corners=False)[0]


def _crop_resize(maps: torch.Tensor, image_size: Size, output_size: Size) -> torch.Tensor:
    """Detectron2's sem_seg_postprocess: crop [N, Hp, Wp] to image_size, bilinear to output_size
    (the identity when the sizes agree, so it is skipped then)."""
    x = maps[:, : image_size[0], : image_size[1]]
    if tuple(x.shape[-2:]) != tuple(output_size):
        x = F.interpolate(x[None], size=output_size, mode="bilinear", align_corners=False)[0]
    return x


def _source_index(n_out: int, n_in: int, start: int, stop: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear (align_corners=False) source rows of output rows start..stop-1: (lower index,
    upper index, weight of the upper), PyTorch's formula."""
    dst = torch.arange(start, stop, dtype=torch.float64)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    return lo, (lo + 1).clamp(max=n_in - 1), (src - lo).float()


def _bands(maps: torch.Tensor, image_size: Size, output_size: Size, rows_per_band: int
           ) -> Iterator[Tuple[slice, torch.Tensor]]:
    """:func:`_crop_resize` of [N, Hp, Wp] maps in bands of output rows: (rows, [N, band, W]).

    One band, through F.interpolate, when the whole output has at most rows_per_band rows;
    otherwise the separable bilinear resize row band by row band (the same formula; rounding
    differs from F.interpolate by ~1e-5), so that a 100-megapixel output never needs
    [N, H, W] at once."""
    H, W = output_size
    if H <= rows_per_band:
        yield slice(0, H), _crop_resize(maps, image_size, output_size)
        return
    x = maps[:, : image_size[0], : image_size[1]]
    j0, j1, wx = (t.to(maps.device) for t in _source_index(W, x.shape[-1], 0, W))
    for start in range(0, H, rows_per_band):
        stop = min(start + rows_per_band, H)
        i0, i1, wy = (t.to(maps.device) for t in _source_index(H, x.shape[-2], start, stop))
        rows = x[:, i0] * (1 - wy)[:, None] + x[:, i1] * wy[:, None]
        yield slice(start, stop), rows[:, :, j0] * (1 - wx) + rows[:, :, j1] * wx


def _rows_per_band(width: int, channels: int, tile_elements: int) -> int:
    return max(1, tile_elements // max(1, channels * width))


@torch.no_grad()
def semantic_inference(out: Dict, image_sizes: Optional[Sequence[Size]] = None,
                       output_sizes: Optional[Sequence[Size]] = None,
                       postprocess_before_inference: bool = False) -> List[torch.Tensor]:
    """Per-class score maps, one float [C, *output_sizes[i]] per image.

    score[c] = sum_q softmax(logits_q)[c] * sigmoid(mask_q), without the no-object class.
    postprocess_before_inference (the official SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE, on
    with PANOPTIC_ON): the mask logits are cropped and resized to the output size, then the
    sigmoid and the sum. Otherwise, as the official default, the sum is taken at the padded
    size and the C maps are cropped and resized; cropping and bilinear resizing are linear,
    so resizing the Q sigmoid maps first gives the same maps (up to rounding) with Q instead
    of C resizes.
    """
    logits, masks = _check_outputs(out)
    image_sizes, output_sizes = _sizes(out, image_sizes, output_sizes)
    padded = padded_size(out)
    results = []
    for i in range(len(image_sizes)):
        class_prob = logits[i].float().softmax(-1)[:, :-1]  # [Q, C]
        upsampled = _upsample(masks[i].float(), padded)
        if postprocess_before_inference:
            mask_prob = _crop_resize(upsampled, image_sizes[i], output_sizes[i]).sigmoid()
        else:
            mask_prob = _crop_resize(upsampled.sigmoid(), image_sizes[i], output_sizes[i])
        results.append(torch.einsum("qc,qhw->chw", class_prob, mask_prob))
    return results


@torch.no_grad()
def semantic_labels(out: Dict, image_sizes: Optional[Sequence[Size]] = None,
                    output_sizes: Optional[Sequence[Size]] = None, postprocess_before_inference: bool = False,
                    tile_elements: int = TILE_ELEMENTS) -> List[torch.Tensor]:
    """The argmax of :func:`semantic_inference`, int64 [*output_sizes[i]] per image, computed in
    bands of output rows so that no buffer exceeds ~tile_elements values ([C, band, W]): a
    10000 x 10000 output needs well under 2 GB instead of C x H x W floats (60 GB at C=150)."""
    logits, masks = _check_outputs(out)
    image_sizes, output_sizes = _sizes(out, image_sizes, output_sizes)
    padded = padded_size(out)
    results = []
    for i, (image_size, output_size) in enumerate(zip(image_sizes, output_sizes)):
        class_prob = logits[i].float().softmax(-1)[:, :-1]  # [Q, C]
        upsampled = _upsample(masks[i].float(), padded)
        if not postprocess_before_inference:
            upsampled = upsampled.sigmoid()
        labels = torch.empty(output_size, dtype=torch.int64, device=masks.device)
        rows_per_band = _rows_per_band(output_size[1], max(class_prob.shape), tile_elements)
        for rows, band in _bands(upsampled, image_size, output_size, rows_per_band):
            prob = band.sigmoid() if postprocess_before_inference else band
            labels[rows] = torch.einsum("qc,qhw->chw", class_prob, prob).argmax(0)
        results.append(labels)
    return results


@torch.no_grad()
def panoptic_inference(out: Dict, image_sizes: Optional[Sequence[Size]], output_sizes: Optional[Sequence[Size]],
                       metadata: Union[PanopticMetadata, Mapping], object_mask_threshold: float = 0.8,
                       overlap_threshold: float = 0.8, tile_elements: int = TILE_ELEMENTS
                       ) -> List[Tuple[torch.Tensor, List[Dict]]]:
    """Panoptic segmentation per image: (segment id map int32 [*output_size], segments_info).

    As the official code: the mask logits are resized to the output size first; queries
    whose best class is not "no object" and whose probability exceeds
    object_mask_threshold are kept; each pixel goes to the kept query with the largest
    score * sigmoid(mask); a query keeps its segment only if the pixels it wins are at least
    overlap_threshold of its own mask (sigmoid >= 0.5); stuff segments of one class are
    merged into one id. Id 0 is void. segments_info: dicts {"id", "category_id", "isthing",
    "area"} in id order ("area" in pixels, after merging; the official code has no area).
    """
    metadata = _as_metadata(metadata)
    logits, masks = _check_outputs(out)
    image_sizes, output_sizes = _sizes(out, image_sizes, output_sizes)
    padded = padded_size(out)
    num_classes = logits.shape[-1] - 1
    results = []
    for i in range(len(image_sizes)):
        scores, labels = logits[i].float().softmax(-1).max(-1)
        keep = labels.ne(num_classes) & (scores > object_mask_threshold)
        if not keep.any():
            results.append((torch.zeros(output_sizes[i], dtype=torch.int32, device=masks.device), []))
            continue
        upsampled = _upsample(masks[i][keep].float(), padded)
        results.append(_panoptic_segments(scores[keep], labels[keep], upsampled, image_sizes[i], output_sizes[i],
                                          metadata, overlap_threshold, tile_elements))
    return results


def _panoptic_segments(scores: torch.Tensor, classes: torch.Tensor, upsampled: torch.Tensor, image_size: Size,
                       output_size: Size, metadata: PanopticMetadata, overlap_threshold: float,
                       tile_elements: int) -> Tuple[torch.Tensor, List[Dict]]:
    """The official per-image panoptic merge of the kept queries' mask logits ([N, Hp, Wp] at
    the padded size), in bands of output rows: pass 1 counts, per query, the pixels it wins and
    its own mask's pixels; the merge decides the segment ids; pass 2 (only with several bands)
    paints them."""
    N = len(classes)
    rows_per_band = _rows_per_band(output_size[1], N, tile_elements)
    mask_area = torch.zeros(N, dtype=torch.int64, device=upsampled.device)
    original_area = torch.zeros_like(mask_area)
    single_band = output_size[0] <= rows_per_band
    for rows, band in _bands(upsampled, image_size, output_size, rows_per_band):
        prob = band.sigmoid()
        winner = (scores[:, None, None] * prob).argmax(0)
        mask_area += torch.bincount(winner.flatten(), minlength=N)
        original_area += (prob >= 0.5).flatten(1).sum(1)
    segment_of_query, segments = _merge_segments(classes.tolist(), mask_area.tolist(), original_area.tolist(),
                                                 metadata, overlap_threshold)
    segment_of_query = segment_of_query.to(upsampled.device)
    panoptic_seg = torch.zeros(output_size, dtype=torch.int32, device=upsampled.device)
    if single_band:
        winners = [(slice(0, output_size[0]), winner)]
    else:  # recompute each band's winners rather than keep them all
        winners = ((rows, (scores[:, None, None] * band.sigmoid()).argmax(0))
                   for rows, band in _bands(upsampled, image_size, output_size, rows_per_band))
    for rows, winner in winners:
        panoptic_seg[rows] = segment_of_query[winner]
    areas = torch.bincount(panoptic_seg.flatten().long(), minlength=len(segments) + 1).tolist()
    for segment in segments:
        segment["area"] = areas[segment["id"]]
    return panoptic_seg, segments


def _merge_segments(classes: List[int], mask_area: List[int], original_area: List[int], metadata: PanopticMetadata,
                    overlap_threshold: float) -> Tuple[torch.Tensor, List[Dict]]:
    """The official merge loop on per-query pixel counts: int32 [N] segment id of each query's
    winning pixels (0: void) and the segments_info. A query keeps a segment only if the pixels
    it wins are at least overlap_threshold of its own mask (sigmoid >= 0.5); stuff segments of
    one class share the first one's id."""
    segment_of_query = torch.zeros(len(classes), dtype=torch.int32)
    segments, stuff_ids = [], {}
    for k, pred_class in enumerate(classes):
        isthing = pred_class in metadata.thing_classes
        if mask_area[k] == 0 or original_area[k] == 0 or mask_area[k] / original_area[k] < overlap_threshold:
            continue
        if not isthing and pred_class in stuff_ids:
            segment_of_query[k] = stuff_ids[pred_class]
            continue
        segment_id = len(segments) + 1
        if not isthing:
            stuff_ids[pred_class] = segment_id
        segment_of_query[k] = segment_id
        segments.append({"id": segment_id, "category_id": pred_class, "isthing": isthing})
    return segment_of_query, segments


@torch.no_grad()
def instance_inference(out: Dict, image_sizes: Optional[Sequence[Size]] = None,
                       output_sizes: Optional[Sequence[Size]] = None, top_k: int = 100,
                       metadata: Optional[Union[PanopticMetadata, Mapping]] = None) -> List[Dict]:
    """Instance segmentation per image, as Mask2Former: the top_k (query, class) pairs by
    class probability (no-object excluded; a query may appear with several classes), each
    scored class prob * mean sigmoid(mask) inside its binarised mask (logit > 0) at the
    output size. Returns dicts {"scores" float [k], "labels" int64 [k], "masks" bool
    [k, *output_size]} sorted by score, highest first (Mask2Former leaves them unsorted).
    With metadata (a panoptic dataset), only thing classes are kept among the top_k, as
    Mask2Former does when panoptic inference is on.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    logits, masks = _check_outputs(out)
    image_sizes, output_sizes = _sizes(out, image_sizes, output_sizes)
    padded = padded_size(out)
    num_classes = logits.shape[-1] - 1
    things = None if metadata is None else torch.tensor(sorted(_as_metadata(metadata).thing_classes),
                                                        dtype=torch.int64, device=logits.device)
    results = []
    for i in range(len(image_sizes)):
        class_prob = logits[i].float().softmax(-1)[:, :-1].flatten()  # [Q*C], query-major
        class_score, pair = class_prob.topk(min(top_k, class_prob.numel()))
        query, label = pair // num_classes, pair % num_classes
        if things is not None:
            is_thing = torch.isin(label, things)
            class_score, query, label = class_score[is_thing], query[is_thing], label[is_thing]
        mask_logits = _postprocess(masks[i][query].float(), padded, image_sizes[i], output_sizes[i])
        binary = mask_logits > 0
        mask_score = (mask_logits.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        score = class_score * mask_score
        order = score.argsort(descending=True, stable=True)
        results.append({"scores": score[order], "labels": label[order], "masks": binary[order]})
    return results


@torch.no_grad()
def semantic_inference_tta(model: nn.Module, image: torch.Tensor, output_size: Optional[Size] = None,
                           scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
                           flip: bool = True, postprocess_before_inference: bool = False) -> torch.Tensor:
    """Multi-scale (+ horizontal flip) semantic inference, as Detectron2's
    SemanticSegmentorWithTTA: the mean of the [C, *output_size] score maps of every
    (scale, flip) view, each computed at its own scale and resized to output_size, flipped
    views flipped back.

    image: normalised float [3, H, W]; a scale s resizes it to (int(H*s + 0.5),
    int(W*s + 0.5)) bilinearly with antialiasing (as Detectron2's PIL resize). The model runs
    in eval mode (its mode is restored afterwards); the flipped and plain views of a scale
    go through it as one batch of two. postprocess_before_inference: as in
    :func:`semantic_inference`, for every view.
    """
    if image.dim() != 3 or not image.is_floating_point():
        raise ValueError(f"image must be a normalised float [3, H, W] tensor, got {image.dtype} {tuple(image.shape)}")
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive, got {tuple(scales)}")
    H, W = image.shape[-2:]
    output_size = (H, W) if output_size is None else tuple(output_size)
    was_training = model.training
    model.eval()
    try:
        total, views = None, 0
        for s in scales:
            size = (int(H * s + 0.5), int(W * s + 0.5))
            resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)
            batch = torch.cat([resized, resized.flip(-1)]) if flip else resized
            maps = semantic_inference(model(batch), [size] * len(batch), [output_size] * len(batch),
                                      postprocess_before_inference)
            for j, m in enumerate(maps):
                m = m.flip(-1) if j == 1 else m
                total = m if total is None else total + m
            views += len(maps)
        return total / views
    finally:
        model.train(was_training)
