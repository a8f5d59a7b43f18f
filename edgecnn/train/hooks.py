"""What the fast recipe (models/fast_cifar10.yaml, after airbench94, arXiv 2404.00498) adds to
the training loop: a data-dependent initialization run once before fit, and a Lookahead callback.

- :func:`whiten_init` sets a model's ``whiten`` conv so that its outputs on 2x2 patches of the
  training images are decorrelated with unit variance (PCA whitening): the filters are the
  eigenvectors of the patch covariance divided by the square roots of their eigenvalues, followed
  by their negatives (so that the GELU after it passes both signs).
- :class:`FreezeAfter` holds a layer's weights still from a given epoch on (airbench trains the
  whitening conv's bias for 3 epochs only).
- :class:`Lookahead` is airbench's: an exponential average of the weights (batch-norm statistics
  included) that the weights are reset to every ``every`` steps (see
  :class:`edgecnn.train.config.LookaheadConfig`).
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np

import edgecnn.train._tf  # noqa: F401  (before keras: TensorFlow loads quietly)
from edgecnn.errors import ConfigError
from edgecnn.train.architectures.airbench import WHITEN_BIAS_LAYER, WHITEN_LAYER
from edgecnn.train.config import LookaheadConfig

log = logging.getLogger(__name__)

__all__ = ["WHITEN_LAYER", "WHITEN_BIAS_LAYER", "WHITEN_IMAGES", "FreezeAfter", "Lookahead", "has_whiten_layer",
           "patch_whitening", "whiten_init"]

WHITEN_IMAGES = 5000  # airbench estimates the patch covariance on 5,000 training images
WHITEN_EPS = 5e-4  # added to the eigenvalues: the near-null directions are not blown up


def has_whiten_layer(model: keras.Model) -> bool:
    return any(layer.name == WHITEN_LAYER for layer in model.layers)


def _patches(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """Every ``kh x kw`` patch (stride 1, valid) of NHWC images, flattened in (kh, kw, c) order: the
    order of a Keras conv kernel's first three axes."""
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # N, H', W', C, kh, kw
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, kh * kw * x.shape[-1])


def patch_whitening(x: np.ndarray, kernel_size: tuple[int, int], *, eps: float = WHITEN_EPS,
                    chunk: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and the whitening kernel ``(kh, kw, c, 2 * kh * kw * c)`` of normalized
    NHWC images' patches. The covariance is uncentred (the images are already normalized), as in
    airbench, and accumulated in chunks so 5,000 images need no gigabyte of patches."""
    kh, kw = kernel_size
    d = kh * kw * x.shape[-1]
    cov, n = np.zeros((d, d)), 0
    for i in range(0, len(x), chunk):
        p = _patches(np.asarray(x[i:i + chunk], np.float64), kh, kw)
        cov += p.T @ p
        n += len(p)
    eigenvalues, eigenvectors = np.linalg.eigh(cov / max(n, 1))
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    filters = eigenvectors / np.sqrt(np.maximum(eigenvalues, 0.0) + eps)  # columns: one filter each
    kernel = np.concatenate([filters, -filters], axis=1).reshape(kh, kw, x.shape[-1], 2 * d)
    return eigenvalues, kernel.astype(np.float32)


def whiten_init(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """Set ``model``'s ``whiten`` conv from normalized training images (the first
    :data:`WHITEN_IMAGES`); returns the patch covariance's eigenvalues.

    Raises:
        ConfigError: if the model has no ``whiten`` conv of ``2 * kh * kw * channels`` filters.
    """
    if not has_whiten_layer(model):
        raise ConfigError(f"whiten_init needs a model with a '{WHITEN_LAYER}' conv (fast_cifar has one); "
                          f"{model.name} has none: remove whiten_init from the recipe.")
    layer = model.get_layer(WHITEN_LAYER)
    kh, kw, c, out = layer.kernel.shape
    if out != 2 * kh * kw * c:
        raise ConfigError(f"The '{WHITEN_LAYER}' conv of {model.name} has {out} filters; whiten_init sets "
                          f"2 x {kh}x{kw}x{c} = {2 * kh * kw * c}.")
    eigenvalues, kernel = patch_whitening(images[:WHITEN_IMAGES], (kh, kw))
    layer.kernel.assign(kernel)
    log.info("Whitening init from %d images: patch eigenvalues %.3g .. %.3g.", min(len(images), WHITEN_IMAGES),
             eigenvalues[0], eigenvalues[-1])
    return eigenvalues


class FreezeAfter(keras.callbacks.Callback):
    """From epoch ``epoch`` on, layer ``name``'s weights keep the values they had when it began.

    The compiled training step keeps updating them (Keras fixes its trainable variables at compile
    time), so they are put back after every step, before any later callback (Lookahead) reads them.
    A resumed run takes the values from its checkpoint, which hold them already.
    """

    def __init__(self, name: str, epoch: int) -> None:
        super().__init__()
        self.name, self.epoch = name, epoch
        self.held: list[tuple[Any, np.ndarray]] | None = None  # (variable, value), looked up once

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch >= self.epoch and self.held is None:
            self.held = [(w, np.array(w.numpy())) for w in self.model.get_layer(self.name).weights]
            log.info("%s is held from epoch %d on.", self.name, epoch + 1)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        for w, value in self.held or ():
            w.assign(value)


class Lookahead(keras.callbacks.Callback):
    """airbench's Lookahead over every float weight of the model (see :class:`LookaheadConfig`).

    The slow copy starts as the weights at the beginning of epoch ``start_epoch``; after each
    ``every``-th optimizer step it moves to ``slow + (1 - rho) * (fast - slow)`` and the model takes
    it; after an epoch's last step the model takes it again. Every epoch therefore ends with model ==
    slow copy: the epoch's checkpoint holds the whole state, and a resumed run rebuilds the copy from
    the loaded weights exactly.
    """

    def __init__(self, cfg: LookaheadConfig, *, total_steps: int) -> None:
        super().__init__()
        self.cfg, self.total_steps = cfg, max(1, total_steps)
        self.slow: list[np.ndarray] | None = None
        self._epoch = 0

    def _weights(self) -> list[Any]:
        return [w for w in self.model.weights if "float" in str(w.dtype)]

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch
        if epoch >= self.cfg.start_epoch and self.slow is None:
            self.slow = [np.array(w.numpy()) for w in self._weights()]

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.slow is None:
            return
        step = int(self.model.optimizer.iterations.numpy())
        if step % self.cfg.every == 0:
            rho = self.cfg.decay ** self.cfg.every * min(1.0, step / self.total_steps) ** self.cfg.power
            for w, slow in zip(self._weights(), self.slow):
                slow += (1.0 - rho) * (np.asarray(w.numpy()) - slow)
            self._load_slow()
        elif batch + 1 == self.params.get("steps"):
            self._load_slow()

    def _load_slow(self) -> None:
        for w, slow in zip(self._weights(), self.slow or []):
            w.assign(slow)
