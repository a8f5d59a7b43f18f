"""tf.data input pipeline: cache, shuffle, batch, augment (train only), normalize, prefetch."""

from __future__ import annotations

import math

import numpy as np
import edgecnn.train._tf  # noqa: F401  (before keras: TensorFlow loads quietly)
import tensorflow as tf
import keras

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
    if cfg.flip:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed, **f32))
    if cfg.rotation_deg > 0:
        steps.append(keras.layers.RandomRotation(cfg.rotation_deg / 360.0, fill_mode=cfg.fill_mode, seed=seed + 1, **f32))
    if cfg.translate > 0:
        steps.append(keras.layers.RandomTranslation(cfg.translate, cfg.translate, fill_mode=cfg.fill_mode, seed=seed + 2,
                                                    **f32))
    return keras.Sequential(steps, name="augment")


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
) -> tf.data.Dataset:
    """uint8 images + int labels -> batches of (normalized float32 NHWC, one-hot labels).

    The normalization is the runtime's :func:`edgecnn.runtime.preprocess.normalize_batch`:
    channel order, then ``(x - mean) * (1 / std)`` in float32.
    """
    mean_t = tf.constant(np.asarray(mean, np.float32))
    inv_std = tf.constant(np.asarray([1.0 / s for s in std], np.float32))
    aug = augmenter(augment, seed) if (training and augment) else None

    def prepare(images, labels):
        images = tf.cast(images, tf.float32)
        if aug is not None:
            images = aug(images, training=True)
        if channel_order == "BGR":
            images = images[..., ::-1]
        images = (images - mean_t) * inv_std
        return images, tf.one_hot(labels, num_classes)

    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))
    if training:
        ds = ds.shuffle(min(len(x), 20000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))
