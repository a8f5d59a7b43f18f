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


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, classes: np.ndarray | None = None) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, highest score first.

    A box is dropped when its IoU with an already kept box is above ``iou_threshold``. With
    ``classes``, only boxes of the same class suppress each other: every class's boxes are moved
    to their own region of the plane (offset by ``class * (largest coordinate + 1)``), so one
    pass over all classes equals one pass per class (torchvision's ``batched_nms`` trick). Each
    step compares the kept box with all remaining ones at once.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if classes is not None and len(b):
        b = b + (np.asarray(classes, dtype=np.float64).reshape(-1, 1) * (np.abs(b).max() + 1.0))
    order = np.argsort(-s, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if not rest.size:
            break
        order = rest[box_iou(b[i:i + 1], b[rest])[0] <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)
