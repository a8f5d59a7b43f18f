"""Training targets and loss of the zoo's anchor-free detector (:mod:`.architectures.anchorfree`).

KerasHub (0.32) was checked first: its detectors are RetinaNet (anchor boxes, box deltas) and
D-FINE (a transformer), neither with an anchor-free YOLO-layout head, and Keras's own box-aware
augmentation layers lost or garbled boxes that their masks kept (checked with RandomZoom and
RandomTranslation in Keras 3.15). So the target assignment is written here, small and tested on
hand-made boxes; the box term is Keras's ``compute_ciou`` and the class term a binary cross-entropy.

Assignment (ATSS-like, static, so it runs once per augmented image in numpy): each anchor point
inside a ground-truth box is a candidate for it; a virtual square of ``5 x stride`` around the
point is scored by its IoU with the box, the ``top_k`` best candidates become its positives (the
nearest point of the best-fitting level when the box holds no point), and an anchor claimed by two
boxes goes to the one it overlaps best. The loss: ``box_weight * (1 - CIoU)`` on positives plus
the cross-entropy of every anchor's class scores against an IoU-aware target (the positive's
current IoU with its box for its class, 0 elsewhere), both divided by the number of positives.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

__all__ = ["assign", "DetectionLoss", "ANCHOR_SCALE"]

ANCHOR_SCALE = 5.0  # the virtual anchor square's side, in strides (ATSS's 8 with a 4-8x smaller stride set)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box of ``a`` (M, 4) with every box of ``b`` (K, 4)."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def assign(points: np.ndarray, boxes: np.ndarray, *, top_k: int = 9) -> np.ndarray:
    """Targets of one image: (A, 5) rows ``x1, y1, x2, y2, class`` per anchor point, class -1 for
    background.

    Args:
        points: (A, 3) anchor points ``x, y, stride`` (:func:`edgecnn._keras_layers.anchor_points`).
        boxes: (K, 5) ground truth ``class, x1, y1, x2, y2`` in input pixels.
        top_k: positives per box at most.
    """
    targets = np.zeros((len(points), 5), np.float32)
    targets[:, 4] = -1
    boxes = np.asarray(boxes, np.float32).reshape(-1, 5)
    boxes = boxes[(boxes[:, 3] > boxes[:, 1]) & (boxes[:, 4] > boxes[:, 2])]
    if not len(boxes):
        return targets
    xy, stride = points[:, :2], points[:, 2:3]
    half = stride * ANCHOR_SCALE / 2
    virtual = np.concatenate([xy - half, xy + half], axis=1)
    fit = _iou_matrix(virtual, boxes[:, 1:])  # (A, K)
    inside = ((xy[:, None, 0] > boxes[None, :, 1]) & (xy[:, None, 0] < boxes[None, :, 3])
              & (xy[:, None, 1] > boxes[None, :, 2]) & (xy[:, None, 1] < boxes[None, :, 4]))
    score = np.where(inside, fit, -1.0)
    claim = np.full((len(points), len(boxes)), -1.0)
    for k in range(len(boxes)):
        candidates = np.flatnonzero(score[:, k] >= 0)
        if len(candidates):
            best = candidates[np.argsort(-score[candidates, k], kind="stable")[:top_k]]
        else:  # a box too small to hold a point: the nearest point of the level that fits it best
            centre = (boxes[k, 1:3] + boxes[k, 3:5]) / 2
            dist = np.linalg.norm(xy - centre, axis=1) / stride[:, 0]
            best = np.asarray([np.lexsort((dist, -np.round(fit[:, k], 6)))[0]])
        claim[best, k] = fit[best, k]
    owner = claim.argmax(axis=1)
    positive = claim.max(axis=1) >= 0
    targets[positive, :4] = boxes[owner[positive], 1:]
    targets[positive, 4] = boxes[owner[positive], 0]
    return targets


@keras.saving.register_keras_serializable(package="edgecnn")
class DetectionLoss(keras.losses.Loss):
    """The detector's loss on ``y_true`` (N, A, 5) targets of :func:`assign` and ``y_pred`` the
    model's (N, 4 + C, A) output; normalized by the batch's positives (see the module docstring)."""

    def __init__(self, box_weight: float = 5.0, name: str = "detection_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.box_weight = float(box_weight)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        ops = keras.ops
        pred = ops.transpose(ops.cast(y_pred, "float32"), (0, 2, 1))
        cxcy, wh = pred[..., :2], pred[..., 2:4]
        box = ops.concatenate([cxcy - wh / 2, cxcy + wh / 2], axis=-1)
        prob = ops.clip(pred[..., 4:], 1e-7, 1 - 1e-7)
        gt, cls = y_true[..., :4], y_true[..., 4]
        pos = ops.cast(cls >= 0, "float32")
        total = ops.maximum(ops.sum(pos), 1.0)
        lt, rb = ops.maximum(box[..., :2], gt[..., :2]), ops.minimum(box[..., 2:], gt[..., 2:])
        inter = ops.prod(ops.maximum(rb - lt, 0.0), axis=-1)
        union = ops.prod(box[..., 2:] - box[..., :2], axis=-1) + ops.prod(gt[..., 2:] - gt[..., :2], axis=-1) - inter
        iou = ops.stop_gradient(inter / ops.maximum(union, 1e-9))
        target = ops.one_hot(ops.cast(ops.maximum(cls, 0), "int32"), ops.shape(prob)[-1]) * (pos * iou)[..., None]
        bce = -(target * ops.log(prob) + (1 - target) * ops.log(1 - prob))
        ciou = keras.utils.bounding_boxes.compute_ciou(box, gt, "xyxy")
        per_image = ops.sum(bce, axis=(1, 2)) + self.box_weight * ops.sum((1 - ciou) * pos, axis=1)
        batch = ops.cast(ops.shape(pos)[0], "float32")
        return per_image * batch / total

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "box_weight": self.box_weight}
