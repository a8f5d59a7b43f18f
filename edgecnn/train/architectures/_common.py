"""Building blocks shared by the zoo. Layer names are deterministic: ONNX node names and
quantization exclusion lists depend on them."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from edgecnn._optional import require

if TYPE_CHECKING:  # Keras loads when a model is built, not when the zoo is listed
    import keras

__all__ = ["BN_MOMENTUM", "classifier_head", "conv_bn_act", "keras_api", "make_divisible", "probabilities"]

# Batch-norm moving-average momentum of the depthwise nets (PyTorch's 0.1 in Keras terms).
# With Keras's 0.99, a MobileNetV2 trained for a few hundred steps with a one-cycle schedule kept
# moving statistics so far behind its weights that inference-mode accuracy was chance (10%)
# while batch statistics gave 50%: short CPU budgets need statistics that follow the weights.
BN_MOMENTUM = 0.9


def keras_api() -> ModuleType:
    """Keras, imported (TensorFlow quietly first) when a model is built: registry look-ups of
    names stay free of TensorFlow, so ``edgecnn models`` and configs load in milliseconds."""
    return require("keras", "train")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without losing more than 10% (MobileNet)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def conv_bn_act(x, filters: int, kernel: int, *, strides: int = 1, name: str, act: str | None = "relu"):
    """Conv2D (no bias) + BatchNorm + optional activation."""
    layers = keras_api().layers
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    if act:
        x = layers.Activation(act, name=f"{name}_{act}")(x)
    return x


def classifier_head(x, num_classes: int, *, dropout: float = 0.0, pool: bool = True):
    """Global pooling ("features"), optional dropout, Dense "logits" and a softmax.

    Every zoo model ends with ``features -> [dropout] -> logits -> probabilities`` so transfer
    learning can cut at ``features`` and Grad-CAM can read ``logits``.
    """
    layers = keras_api().layers
    if pool:
        x = layers.GlobalAveragePooling2D(name="features")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    return probabilities(x)


def probabilities(logits):
    """The zoo's output layer: a softmax named ``probabilities`` computed in float32.

    Under a mixed-precision policy (``edgecnn train --precision bf16``) every other layer
    computes in bfloat16/float16; the softmax and so the loss stay float32 (Keras's mixed
    precision guide), and the model's output is float32 whatever the policy.
    """
    return keras_api().layers.Activation("softmax", name="probabilities", dtype="float32")(logits)


def functional(inputs, outputs, name: str) -> keras.Model:
    return keras_api().Model(inputs, outputs, name=name)
