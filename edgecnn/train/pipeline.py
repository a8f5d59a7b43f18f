"""tf.data input pipeline: shuffle, batch, augment (train only), normalize, prefetch.

A training set given ``epochs=(first, last)`` holds those epochs back to back, and each epoch's
order, alternating flips and whole-pixel translations come from ``(seed, epoch)`` alone (stateless
random ops): a run resumed at epoch ``first`` sees the batches an uninterrupted run would have.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

import edgecnn.train._tf  # noqa: F401  (before keras: TensorFlow loads quietly)
from edgecnn.train.config import AugmentConfig

__all__ = ["make_dataset", "augmenter"]


def augmenter(cfg: AugmentConfig, seed: int) -> keras.Sequential | None:
    """Batch-level random flip / rotation / translation (translation = pad + random crop)."""
    if not cfg.enabled:
        return None
    # float32 whatever the training precision: the pipeline's images are float32 (a layer built
    # under a mixed_bfloat16 policy would return bfloat16 and the normalization would not add up).
    f32 = {"dtype": "float32"}
    steps: list[keras.layers.Layer] = []
    if cfg.flip is True:  # "alternate" depends on the epoch: make_dataset does it
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed, **f32))
    if cfg.rotation_deg > 0:
        steps.append(keras.layers.RandomRotation(cfg.rotation_deg / 360.0, fill_mode=cfg.fill_mode, seed=seed + 1,
                                                 **f32))
    if cfg.translate > 0:
        steps.append(keras.layers.RandomTranslation(cfg.translate, cfg.translate, fill_mode=cfg.fill_mode,
                                                    seed=seed + 2, **f32))
    return keras.Sequential(steps, name="augment") if steps else None


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    batch_size: int,
    mean, std, channel_order: str = "RGB",
    training: bool = False,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    epochs: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """uint8 images + int labels -> batches of (normalized float32 NHWC, one-hot labels).

    The normalization is the runtime's :func:`edgecnn.runtime.preprocess.normalize_batch`:
    channel order, then ``(x - mean) * (1 / std)`` in float32. With ``training`` and ``epochs``, the
    epochs ``first..last-1`` back to back, :func:`steps_per_epoch` batches each (see the module doc).

    Raises:
        ValueError: for a training set with alternating flips or ``translate_px`` but no ``epochs``.
    """
    mean_t = tf.constant(np.asarray(mean, np.float32))
    inv_std = tf.constant(np.asarray([1.0 / s for s in std], np.float32))
    aug = augmenter(augment, seed) if (training and augment) else None
    if training and epochs is None and augment is not None and (augment.flip == "alternate" or augment.translate_px):
        raise ValueError("Alternating flips and translate_px depend on the epoch: pass epochs=(first, last).")

    def prepare(images, labels, epoch_aug=None):
        images = tf.cast(images, tf.float32)
        if epoch_aug is not None:
            images = epoch_aug(images)
        if aug is not None:
            images = aug(images, training=True)
        if channel_order == "BGR":
            images = images[..., ::-1]
        images = (images - mean_t) * inv_std
        return images, tf.one_hot(labels, num_classes)

    if training and epochs is not None:
        return _epochs_dataset(x, y, prepare, augment=augment or AugmentConfig(flip=False, translate=0.0),
                               batch_size=batch_size, seed=seed, epochs=epochs)
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))
    if training:
        ds = ds.shuffle(min(len(x), 20000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _epochs_dataset(x: np.ndarray, y: np.ndarray, prepare, *, augment: AugmentConfig, batch_size: int, seed: int,
                    epochs: tuple[int, int]) -> tf.data.Dataset:
    """Epochs ``first..last-1``, each a full permutation drawn from ``(seed, epoch)``, batched.

    airbench's two augmentations, stateless. Alternating flip: a fixed random half of the images
    (drawn once from ``seed``) is mirrored in even epochs, the other half in odd ones, so each image
    is seen both ways every two epochs instead of by chance. ``translate_px``: reflect-pad, then
    crop every image back at its own whole-pixel offset.
    """
    x_t, y_t = tf.constant(x), tf.constant(y.astype(np.int32))
    flip_even = tf.constant(np.random.default_rng([seed, 0xF11B]).random(len(x)) < 0.5)
    seed_t = tf.constant(seed, tf.int64)

    def one_epoch(epoch):
        order = tf.argsort(tf.random.stateless_uniform([len(x)], seed=tf.stack([seed_t, 2 * epoch])))

        def load(batch, index):
            def epoch_aug(images):
                if augment.flip == "alternate":
                    flip = tf.math.logical_xor(tf.gather(flip_even, index), tf.equal(epoch % 2, 1))
                    images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
                if augment.translate_px:
                    step_seed = tf.stack([seed_t, 2 * (epoch * 1_000_003 + batch) + 1])
                    images = _translate(images, augment.translate_px, step_seed)
                return images

            return prepare(tf.gather(x_t, index), tf.gather(y_t, index), epoch_aug)

        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size).enumerate()
        return batches.map(load, num_parallel_calls=tf.data.AUTOTUNE)

    return tf.data.Dataset.range(epochs[0], epochs[1]).flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)


def _translate(images: tf.Tensor, r: int, seed: tf.Tensor) -> tf.Tensor:
    """Shift each image by its own whole-pixel offset in [-r, r]^2 (reflect-padded, then cropped)."""
    h, w = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [r, r], [r, r], [0, 0]], mode="REFLECT")
    offsets = tf.random.stateless_uniform([tf.shape(images)[0], 2], seed=seed, minval=0, maxval=2 * r + 1,
                                          dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(h)[None, :]
    cols = offsets[:, 1:] + tf.range(w)[None, :]
    return tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))
