"""Preprocessing from the model card alone, identical to training's.

Training decodes every image to uint8 RGB at the card's ``input_size`` (Pillow bilinear resize),
then applies :func:`normalize_batch`; so does the runtime.
"""

from __future__ import annotations

import numpy as np

from edgecnn.card import ModelCard

__all__ = ["normalize_batch"]


def normalize_batch(x: np.ndarray, card: ModelCard) -> np.ndarray:
    """uint8 (or 0-255 float) NHWC RGB batch -> float32 model input in the card's layout.

    Applies channel order, ``(x - mean) / std`` per channel and the NHWC/NCHW layout.
    """
    x = np.asarray(x, dtype=np.float32)
    if card.channel_order == "BGR":
        x = x[..., ::-1]
    mean = np.asarray(card.mean, dtype=np.float32)
    inv_std = np.asarray([1.0 / s for s in card.std], dtype=np.float32)
    x = (x - mean) * inv_std
    if card.layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)
