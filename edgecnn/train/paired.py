"""Training batches of segmentation and detection data: the same geometric transform for an
image and its mask or boxes, then the targets the model's loss takes.

Keras's own box-aware preprocessing layers were tried first and lost or moved boxes that their
masks kept (Keras 3.15, :mod:`edgecnn.train.detection`), so the transform is one Pillow affine
resample per image (bilinear for pixels, nearest for class indices) with the boxes' corners mapped
by the same matrix, in numpy. A box cut by the image border keeps its visible part; one less than
a third visible (or under 2 pixels) is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from PIL import Image

from edgecnn.task_data import IGNORE

__all__ = ["PairedAugment", "augment_pair", "TaskBatches", "FILL"]

FILL = 114  # the grey of the border a zoom-out or shift uncovers (Ultralytics' letterbox grey)
_MIN_VISIBLE = 1 / 3


@dataclass(frozen=True, kw_only=True)
class PairedAugment:
    """Random horizontal flip, zoom (a scale factor in ``scale``) and shift (up to ``translate``
    of each side)."""

    flip: bool = True
    scale: tuple[float, float] = (0.75, 1.25)
    translate: float = 0.1

    @property
    def enabled(self) -> bool:
        return self.flip or self.scale != (1.0, 1.0) or self.translate > 0


def augment_pair(image: np.ndarray, rng: np.random.Generator, augment: PairedAugment, *,
                 mask: np.ndarray | None = None,
                 boxes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """One random transform of ``image`` (H, W, 3) uint8, applied alike to its ``mask`` (H, W) and
    ``boxes`` (K, 5: ``class, x1, y1, x2, y2`` in pixels). Returns the three (None stays None)."""
    h, w = image.shape[:2]
    s = float(rng.uniform(*augment.scale))
    tx, ty = (float(rng.uniform(-augment.translate, augment.translate)) * d for d in (w, h))
    flip = bool(augment.flip and rng.random() < 0.5)
    # forward: u = s * (x - w/2) + w/2 + tx (then mirrored); Pillow wants the inverse, output -> input
    sign = -1.0 if flip else 1.0
    a, c = sign / s, (w / 2 - (w / 2 + tx) / s) if not flip else (w / 2 + (w / 2 - tx) / s)
    e, f = 1 / s, h / 2 - (h / 2 + ty) / s
    matrix = (a, 0.0, c, 0.0, e, f)
    out = np.asarray(Image.fromarray(image).transform((w, h), Image.Transform.AFFINE, matrix,
                                                      Image.Resampling.BILINEAR, fillcolor=(FILL,) * 3))
    if mask is not None:
        # the uncovered border is no class of the image: ignored by the loss (the model never sees
        # borders once deployed: the runtime stretches images to the input)
        mask = np.asarray(Image.fromarray(mask).transform((w, h), Image.Transform.AFFINE, matrix,
                                                          Image.Resampling.NEAREST, fillcolor=IGNORE))
    if boxes is not None and len(boxes):
        b = np.asarray(boxes, np.float32).copy()
        xs = s * (b[:, [1, 3]] - w / 2) + w / 2 + tx
        ys = s * (b[:, [2, 4]] - h / 2) + h / 2 + ty
        if flip:
            xs = w - xs[:, ::-1]
        full = (xs[:, 1] - xs[:, 0]) * (ys[:, 1] - ys[:, 0])
        xs, ys = np.clip(xs, 0, w), np.clip(ys, 0, h)
        b[:, [1, 3]], b[:, [2, 4]] = xs, ys
        bw, bh = xs[:, 1] - xs[:, 0], ys[:, 1] - ys[:, 0]
        keep = (bw >= 2) & (bh >= 2) & (bw * bh >= _MIN_VISIBLE * np.maximum(full, 1e-9))
        boxes = b[keep]
    return out, mask, boxes


class TaskBatches(keras.utils.PyDataset):
    """Batches ``(normalized images, targets)`` of one split for ``model.fit``: shuffled and
    augmented anew every epoch (from ``seed`` and the epoch alone, so a resumed run sees the batches
    an uninterrupted one would) when ``training``; in order and as they are otherwise.

    ``targets(images, masks_or_boxes)`` turns a batch's (augmented) masks or pixel boxes into what
    the loss takes.
    """

    def __init__(self, images: np.ndarray, labels: Any, *, batch_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], targets: Callable[[list[Any]], np.ndarray], training: bool = False,
                 augment: PairedAugment | None = None, seed: int = 0, first_epoch: int = 0) -> None:
        super().__init__()
        self.images, self.labels = images, labels
        self.batch_size, self.training, self.augment = batch_size, training, augment
        self.targets, self.seed, self.epoch = targets, seed, first_epoch
        self.mean = np.asarray(mean, np.float32).reshape(1, 1, 1, -1)
        self.std = np.asarray(std, np.float32).reshape(1, 1, 1, -1)
        self.order = self._order()

    def _order(self) -> np.ndarray:
        if not self.training:
            return np.arange(len(self.images))
        return np.random.default_rng((self.seed, self.epoch)).permutation(len(self.images))

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.training and n >= self.batch_size else -(-n // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        rng = np.random.default_rng((self.seed, self.epoch, index, 1))
        xs, ys = [], []
        for i in idx:
            image, label = self.images[i], self.labels[i]
            if self.training and self.augment is not None and self.augment.enabled:
                is_mask = isinstance(label, np.ndarray) and label.ndim == 2 and label.shape == image.shape[:2]
                image, mask, boxes = augment_pair(image, rng, self.augment, mask=label if is_mask else None,
                                                  boxes=None if is_mask else label)
                label = mask if is_mask else boxes
            xs.append(image)
            ys.append(label)
        x = (np.stack(xs).astype(np.float32) - self.mean) / self.std
        return x, self.targets(ys)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()
