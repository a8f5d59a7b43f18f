"""The CNN of the CIFAR-10 tutorial (shared/seed), layer for layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecnn.train.architectures._common import keras_api, probabilities
from edgecnn.train.registry import register_model

if TYPE_CHECKING:
    import keras


@register_model("seed_cnn", input_size=(32, 32), family="seed")
def seed_cnn(num_classes: int, *, input_shape=(32, 32, 3), dropout: float = 0.0, width: float = 1.0) -> keras.Model:
    """Tutorial CNN: 3 convs (32-64-64), 2 max-pools, Dense(64), Dense(classes, softmax)."""
    keras = keras_api()
    layers = keras.layers
    c = [max(1, round(f * width)) for f in (32, 64, 64, 64)]
    inputs = keras.Input(input_shape, name="images")
    x = layers.Conv2D(c[0], 3, activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(c[1], 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Conv2D(c[2], 3, activation="relu", name="conv3")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(c[3], activation="relu", name="features")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    # Dense(10, softmax) of the tutorial, split so the logits stay addressable (Grad-CAM).
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = probabilities(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


@register_model("seed_cnn_tiny", input_size=(32, 32), family="seed")
def seed_cnn_tiny(num_classes: int, *, input_shape=(32, 32, 3), **kwargs) -> keras.Model:
    """Tutorial CNN at a quarter of the width (tests)."""
    kwargs.setdefault("width", 0.25)
    return seed_cnn(num_classes, input_shape=input_shape, **kwargs)
