"""Box geometry in numpy: IoU, centre-size to corners, class-aware non-maximum suppression."""

from __future__ import annotations

import numpy as np

__all__ = ["box_iou", "xywh_to_xyxy", "nms"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (K, 4) and (M, 4) ``x1, y1, x2, y2`` boxes -> (K, M) float64.

    Degenerate boxes (zero or negative width or height) have area 0 and IoU 0 with everything.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(..., 4) ``cx, cy, w, h`` -> ``x1, y1, x2, y2``."""
    b = np.asarray(boxes)
    half = b[..., 2:4] / 2
    return np.concatenate([b[..., 0:2] - half, b[..., 0:2] + half], axis=-1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, classes: np.ndarray | None = None, *,
        max_keep: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, highest score first.

    A box is dropped when its IoU with an already kept box is above ``iou_threshold``. With
    ``classes``, only boxes of the same class suppress each other: every class's boxes are moved
    to their own region of the plane (offset by ``class * (largest coordinate + 1)``), so one
    pass over all classes equals one pass per class (torchvision's ``batched_nms`` trick). Each
    step compares the kept box with all remaining ones at once, and the pass stops after
    ``max_keep`` boxes (the rest could only come later in the result).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if classes is not None and len(b):
        b = b + (np.asarray(classes, dtype=np.float64).reshape(-1, 1) * (np.abs(b).max() + 1.0))
    x1, y1, x2, y2 = b.T
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-s, kind="stable")
    limit = len(order) if max_keep is None else max_keep
    keep: list[int] = []
    while order.size and len(keep) < limit:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        union = area[i] + area[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)
