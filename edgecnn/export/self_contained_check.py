"""A self-contained file against the two-part path: the same answers on the same images.

The two-part path is the variant's own file run by the runtime (its card's pixel mapping, then the
task head in numpy); the self-contained file (:mod:`edgecnn.export.self_contained`) does both in its
graph. Both answer the held-out images of the export through the runtime's heads, and must agree:

- classify: the same top-1 class on every image;
- detect: on every image the same number of boxes, matched one to one with the same class and
  IoU >= 0.99 (:func:`boxes_match`);
- segment: a mean IoU of the class maps >= 0.999.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgecnn.runtime.core import InferenceModel

__all__ = ["Agreement", "agreement", "boxes_match", "MIN_BOX_IOU", "MIN_MIOU"]

MIN_BOX_IOU = 0.99
MIN_MIOU = 0.999
_CHUNK = 256  # images per call: a 224x224 model's float input for 10,000 images would be 6 GB


@dataclass(frozen=True, kw_only=True)
class Agreement:
    """How far the self-contained file agrees with the two-part path (see the module)."""

    metric: str  # top1_identical, detections_matched, miou
    value: float
    passed: bool
    detail: str


def boxes_match(reference: Sequence[tuple[int, Sequence[float]]], candidate: Sequence[tuple[int, Sequence[float]]],
                *, min_iou: float = MIN_BOX_IOU) -> tuple[bool, float]:
    """Whether two images' boxes, ``(class index, (x1, y1, x2, y2))`` each, match one to one with the
    same class and IoU >= ``min_iou`` (each reference box takes its best unmatched candidate), and
    the worst IoU of the pairs (1.0 for two empty lists, 0.0 when the counts differ)."""
    from edgecnn.runtime.heads.boxes import box_iou

    if len(reference) != len(candidate):
        return False, 0.0
    free = list(range(len(candidate)))
    worst = 1.0
    for cls, box in reference:
        same = [j for j in free if candidate[j][0] == cls]
        if not same:
            return False, 0.0
        ious = box_iou(np.asarray([box]), np.asarray([candidate[j][1] for j in same]))[0]
        best = int(np.argmax(ious))
        worst = min(worst, float(ious[best]))
        free.remove(same[best])
    return worst >= min_iou, worst


def agreement(two_part: InferenceModel, candidate: InferenceModel, images: np.ndarray) -> Agreement:
    """The self-contained ``candidate`` against the ``two_part`` path on ``images`` (uint8 NHWC at
    the input size), through each model's task head."""
    task = two_part.card.task
    chunks = [images[i:i + _CHUNK] for i in range(0, len(images), _CHUNK)]
    n = len(images)
    if task == "classify":
        same = sum(int(np.sum(_top1(two_part, c) == _top1(candidate, c))) for c in chunks)
        return Agreement(metric="top1_identical", value=same / n, passed=same == n,
                         detail=f"{n - same} of {n} images differ")
    if task == "detect":
        return _detections(two_part, candidate, chunks, n)
    from edgecnn.runtime.heads.metrics import mean_iou

    ref = [r.mask for c in chunks for r in two_part.predict(c)]
    got = [r.mask for c in chunks for r in candidate.predict(c)]
    miou = mean_iou(got, ref)
    differ = sum(int(np.sum(a != b)) for a, b in zip(ref, got))
    return Agreement(metric="miou", value=miou, passed=miou >= MIN_MIOU,
                     detail=f"{differ} of {sum(m.size for m in ref)} pixels differ")


def _top1(model: InferenceModel, pixels: np.ndarray) -> np.ndarray:
    return np.asarray(model.run_pixels(pixels)[model.output_names.index(model.output_name)]).reshape(
        len(pixels), -1).argmax(axis=1)


def _detections(two_part: InferenceModel, candidate: InferenceModel, chunks: list[np.ndarray], n: int) -> Agreement:
    matched, boxes, worst = 0, 0, 1.0
    for chunk in chunks:
        for ref, got in zip(two_part.predict(chunk), candidate.predict(chunk)):
            ok, iou = boxes_match([(d.index, d.box) for d in ref], [(d.index, d.box) for d in got])
            matched += ok
            boxes += len(ref)
            worst = min(worst, iou)
    return Agreement(metric="detections_matched", value=matched / n, passed=matched == n,
                     detail=f"{boxes} boxes on {n} images, worst IoU {worst:.4f}")
