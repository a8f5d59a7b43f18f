"""Task metrics of the accuracy guard: detection mAP@0.5 and segmentation mIoU, in numpy.

Export compares an int8 (or fp16) model with its fp32 original on the same images: the fp32
answers are the reference ("ground truth"), the quantized ones the candidates. Both metrics are
symmetric in what they punish: a class only the candidate sees counts as a class with AP (or
IoU) 0, so an int8 model that hallucinates a class cannot hide it behind the classes it got right.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from edgecnn.errors import InputError
from edgecnn.runtime.heads.boxes import box_iou
from edgecnn.runtime.heads.detect import Detection

__all__ = ["box_iou", "average_precision", "detection_map", "DetectionMAP", "class_ious", "mean_iou"]


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision-recall curve, all-point interpolation (PASCAL VOC 2010 onwards).

    ``recall`` and ``precision`` are the cumulative values after each detection, most confident
    first. The precision is first made monotonically decreasing (each point takes the best
    precision at any higher recall), then summed over the recall steps.
    """
    mrec = np.concatenate([[0.0], np.asarray(recall, dtype=np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, dtype=np.float64), [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


@dataclass(frozen=True)
class DetectionMAP:
    """mAP of candidate detections against reference detections.

    ``value`` is the mean of ``per_class`` (class index -> AP) over every class that either side
    detected; 1.0 when neither detected anything (they agree).
    """

    value: float
    per_class: dict[int, float] = field(default_factory=dict)
    references: int = 0
    candidates: int = 0
    iou_threshold: float = 0.5


def detection_map(candidates: Sequence[Sequence[Detection]], references: Sequence[Sequence[Detection]], *,
                  iou_threshold: float = 0.5) -> DetectionMAP:
    """mAP@``iou_threshold`` of ``candidates`` with ``references`` as ground truth, image by image.

    Per class, candidates of all images are ranked by score; one is a true positive when its IoU
    with a not yet matched reference box of the same class and image is at least
    ``iou_threshold`` (the best-overlapping reference is taken, as in VOC), else a false positive.
    AP is :func:`average_precision` of that ranking.

    Raises:
        InputError: if the two sides cover a different number of images.
    """
    if len(candidates) != len(references):
        raise InputError(f"detection_map needs the same images on both sides; got {len(candidates)} candidate and "
                         f"{len(references)} reference image(s).")
    classes = sorted({d.index for dets in (*candidates, *references) for d in dets})
    n_ref = sum(len(r) for r in references)
    n_cand = sum(len(c) for c in candidates)
    if not classes:
        return DetectionMAP(1.0, {}, 0, 0, iou_threshold)
    per_class = {c: _class_ap(candidates, references, c, iou_threshold) for c in classes}
    return DetectionMAP(float(np.mean(list(per_class.values()))), per_class, n_ref, n_cand, iou_threshold)


def _class_ap(candidates: Sequence[Sequence[Detection]], references: Sequence[Sequence[Detection]], cls: int,
              iou_threshold: float) -> float:
    truth = [np.asarray([d.box for d in dets if d.index == cls], dtype=np.float64).reshape(-1, 4)
             for dets in references]
    n_truth = sum(len(t) for t in truth)
    preds = [(d.score, i, d.box) for i, dets in enumerate(candidates) for d in dets if d.index == cls]
    if n_truth == 0 or not preds:
        return 0.0
    preds.sort(key=lambda p: -p[0])  # stable: equal scores keep image order
    matched = [np.zeros(len(t), dtype=bool) for t in truth]
    tp = np.zeros(len(preds))
    for k, (_, img, box) in enumerate(preds):
        if not len(truth[img]):
            continue
        ious = box_iou(np.asarray(box)[None], truth[img])[0]
        j = int(np.argmax(ious))
        if ious[j] >= iou_threshold and not matched[img][j]:
            matched[img][j] = True
            tp[k] = 1.0
    cum_tp = np.cumsum(tp)
    recall = cum_tp / n_truth
    precision = cum_tp / np.arange(1, len(preds) + 1)
    return average_precision(recall, precision)


def class_ious(candidate: np.ndarray | Sequence[np.ndarray], reference: np.ndarray | Sequence[np.ndarray]
               ) -> dict[int, float]:
    """IoU per class of two class maps (or sequences of maps, image by image), over every class
    that either map contains.

    Raises:
        InputError: for maps of different shapes, or values that are not class indices.
    """
    a, b = _maps(candidate, "candidate"), _maps(reference, "reference")
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise InputError(f"The class maps differ: candidate {[x.shape for x in a]}, reference {[y.shape for y in b]}.")
    a_flat = np.concatenate([x.ravel() for x in a]).astype(np.int64) if a else np.zeros(0, np.int64)
    b_flat = np.concatenate([y.ravel() for y in b]).astype(np.int64) if b else np.zeros(0, np.int64)
    n = int(max(a_flat.max(initial=0), b_flat.max(initial=0))) + 1
    confusion = np.bincount(a_flat * n + b_flat, minlength=n * n).reshape(n, n)
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - inter
    return {c: float(inter[c] / union[c]) for c in range(n) if union[c] > 0}


def mean_iou(candidate: np.ndarray | Sequence[np.ndarray], reference: np.ndarray | Sequence[np.ndarray]) -> float:
    """Mean of :func:`class_ious`; 1.0 for two empty inputs.

    Raises:
        InputError: as :func:`class_ious`.
    """
    ious = class_ious(candidate, reference)
    return float(np.mean(list(ious.values()))) if ious else 1.0


def _maps(maps: np.ndarray | Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    parts = [np.asarray(maps)] if isinstance(maps, np.ndarray) else [np.asarray(m) for m in maps]
    for i, m in enumerate(parts):
        if m.dtype.kind not in "iub" or (m.size and m.min() < 0):
            raise InputError(f"The {name} class map {i} must hold class indices >= 0; got {m.dtype} values.")
    return parts
