"""Task metrics of the accuracy guard: detection mAP@0.5 and segmentation mIoU, in numpy.

Export compares an int8 (or fp16) model with its fp32 original on the same images: the fp32
answers are the reference ("ground truth"), the quantized ones the candidates. Both metrics
punish hallucination: a class only the candidate sees (with a score at least ``min_score``, for
detections) counts as a class with AP (or IoU) 0, so an int8 model that invents a class cannot hide
it behind the classes it got right. :class:`DetectionRecords` keeps the per-image matches so the
guard can resample images (a bootstrap interval) without matching boxes again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edgecnn.errors import InputError
from edgecnn.runtime.heads.boxes import box_iou
from edgecnn.runtime.heads.detect import Detection

__all__ = ["box_iou", "average_precision", "detection_map", "DetectionMAP", "DetectionRecords", "class_ious",
           "mean_iou", "confusion_matrices", "mean_iou_of"]


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
                  iou_threshold: float = 0.5, min_score: float = 0.0) -> DetectionMAP:
    """mAP@``iou_threshold`` of ``candidates`` with ``references`` as ground truth, image by image.

    Per class, candidates of all images are ranked by score; one is a true positive when its IoU
    with a not yet matched reference box of the same class and image is at least
    ``iou_threshold`` (the best-overlapping reference is taken, as in VOC), else a false positive.
    AP is :func:`average_precision` of that ranking. The mean runs over the classes the references
    contain and the classes the candidates detect with a score of at least ``min_score``: when
    the references were kept at a confidence threshold and the candidates below it (to trace the
    whole precision-recall curve), ``min_score`` is that threshold, so a model compared with
    itself scores 1.0 instead of losing every class it sees only at low confidence.

    Raises:
        InputError: if the two sides cover a different number of images.
    """
    return DetectionRecords.match(candidates, references, iou_threshold=iou_threshold,
                                  min_score=min_score).score()


@dataclass(frozen=True)
class DetectionRecords:
    """The per-image outcome of matching candidates with references, for every class.

    ``scores``/``tp``/``image`` hold every candidate (most confident first); ``truth`` is the
    (images, classes) count of reference boxes; ``seen`` the (images, classes) flags of a candidate
    at or above ``min_score``. :meth:`score` computes mAP for any weighting of the images (a
    bootstrap resample gives each image the number of times it was drawn).
    """

    classes: tuple[int, ...]
    scores: dict[int, np.ndarray]
    tp: dict[int, np.ndarray]
    image: dict[int, np.ndarray]
    truth: np.ndarray
    seen: np.ndarray
    references: int
    candidates: int
    iou_threshold: float

    @classmethod
    def match(cls, candidates: Sequence[Sequence[Detection]], references: Sequence[Sequence[Detection]], *,
              iou_threshold: float = 0.5, min_score: float = 0.0) -> DetectionRecords:
        """Match candidates to references (see :func:`detection_map`).

        Raises:
            InputError: if the two sides cover a different number of images.
        """
        if len(candidates) != len(references):
            raise InputError(f"detection_map needs the same images on both sides; got {len(candidates)} candidate "
                             f"and {len(references)} reference image(s).")
        classes = tuple(sorted({d.index for dets in (*candidates, *references) for d in dets}))
        col = {c: j for j, c in enumerate(classes)}
        truth = np.zeros((len(references), len(classes)), dtype=np.int64)
        seen = np.zeros((len(candidates), len(classes)), dtype=bool)
        for i, dets in enumerate(references):
            for d in dets:
                truth[i, col[d.index]] += 1
        for i, dets in enumerate(candidates):
            for d in dets:
                seen[i, col[d.index]] |= d.score >= min_score
        scores, tps, images = {}, {}, {}
        for c in classes:
            scores[c], tps[c], images[c] = _match_class(candidates, references, c, iou_threshold)
        return cls(classes, scores, tps, images, truth, seen, int(truth.sum()),
                   sum(len(c) for c in candidates), iou_threshold)

    def score(self, weights: np.ndarray | None = None) -> DetectionMAP:
        """mAP with each image counted ``weights[i]`` times (default once)."""
        w = np.ones(len(self.truth)) if weights is None else np.asarray(weights, dtype=np.float64)
        n_truth = w @ self.truth
        counted = (n_truth > 0) | ((w > 0) @ self.seen > 0)
        per_class = {}
        for j, c in enumerate(self.classes):
            if not counted[j]:
                continue
            if n_truth[j] == 0:
                per_class[c] = 0.0
                continue
            weight = w[self.image[c]]
            cum_n = np.cumsum(weight)
            cum_tp = np.cumsum(weight * self.tp[c])
            valid = cum_n > 0
            per_class[c] = average_precision(cum_tp[valid] / n_truth[j], cum_tp[valid] / cum_n[valid])
        value = float(np.mean(list(per_class.values()))) if per_class else 1.0
        return DetectionMAP(value, per_class, self.references, self.candidates, self.iou_threshold)


def _match_class(candidates: Sequence[Sequence[Detection]], references: Sequence[Sequence[Detection]], cls: int,
                 iou_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, true-positive flags and image indices of one class's candidates, most confident first."""
    truth = [np.asarray([d.box for d in dets if d.index == cls], dtype=np.float64).reshape(-1, 4)
             for dets in references]
    preds = [(d.score, i, d.box) for i, dets in enumerate(candidates) for d in dets if d.index == cls]
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
    return (np.asarray([p[0] for p in preds], dtype=np.float64), tp,
            np.asarray([p[1] for p in preds], dtype=np.int64))


def class_ious(candidate: np.ndarray | Sequence[np.ndarray], reference: np.ndarray | Sequence[np.ndarray]
               ) -> dict[int, float]:
    """IoU per class of two class maps (or sequences of maps, image by image), over every class
    that either map contains.

    Raises:
        InputError: for maps of different shapes, or values that are not class indices.
    """
    return _ious(confusion_matrices(candidate, reference).sum(axis=0))


def confusion_matrices(candidate: np.ndarray | Sequence[np.ndarray], reference: np.ndarray | Sequence[np.ndarray]
                       ) -> np.ndarray:
    """(images, n, n) pixel counts of (candidate class, reference class), one matrix per image.

    Raises:
        InputError: as :func:`class_ious`.
    """
    a, b = _maps(candidate, "candidate"), _maps(reference, "reference")
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise InputError(f"The class maps differ: candidate {[x.shape for x in a]}, reference {[y.shape for y in b]}.")
    n = int(max([int(x.max(initial=0)) for x in (*a, *b)], default=0)) + 1
    out = np.zeros((max(len(a), 1), n, n), dtype=np.int64)
    for i, (x, y) in enumerate(zip(a, b)):
        flat = x.ravel().astype(np.int64) * n + y.ravel().astype(np.int64)
        out[i] = np.bincount(flat, minlength=n * n).reshape(n, n)
    return out


def _ious(confusion: np.ndarray) -> dict[int, float]:
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - inter
    return {c: float(inter[c] / union[c]) for c in range(len(inter)) if union[c] > 0}


def mean_iou_of(confusion: np.ndarray) -> float:
    """Mean IoU of one (n, n) confusion matrix (the sum of :func:`confusion_matrices`); 1.0 when empty."""
    ious = _ious(confusion)
    return float(np.mean(list(ious.values()))) if ious else 1.0


def mean_iou(candidate: np.ndarray | Sequence[np.ndarray], reference: np.ndarray | Sequence[np.ndarray]) -> float:
    """Mean of :func:`class_ious`; 1.0 for two empty inputs.

    Raises:
        InputError: as :func:`class_ious`.
    """
    return mean_iou_of(confusion_matrices(candidate, reference).sum(axis=0))


def _maps(maps: np.ndarray | Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    parts = [np.asarray(maps)] if isinstance(maps, np.ndarray) else [np.asarray(m) for m in maps]
    for i, m in enumerate(parts):
        if m.dtype.kind not in "iub" or (m.size and m.min() < 0):
            raise InputError(f"The {name} class map {i} must hold class indices >= 0; got {m.dtype} values.")
    return parts
