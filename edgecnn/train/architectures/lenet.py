"""LeNet-5 (LeCun et al., 1998) with ReLU and max-pooling, for 32x32 RGB."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecnn.train.architectures._common import keras_api, probabilities
from edgecnn.train.registry import register_model

if TYPE_CHECKING:
    import keras


def _lenet(num_classes: int, input_shape, *, width: float, dropout: float, name: str) -> keras.Model:
    keras = keras_api()
    layers = keras.layers
    c1, c2, f1, f2 = (max(2, round(v * width)) for v in (6, 16, 120, 84))
    inputs = keras.Input(input_shape, name="images")
    x = layers.Conv2D(c1, 5, activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(c2, 5, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(f1, activation="relu", name="fc1")(x)
    x = layers.Dense(f2, activation="relu", name="features")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, probabilities(x), name=name)


@register_model("lenet5", input_size=(32, 32), family="lenet")
def lenet5(num_classes: int, *, input_shape=(32, 32, 3), width: float = 1.0, dropout: float = 0.0) -> keras.Model:
    """LeNet-5: conv5(6)-pool-conv5(16)-pool-fc120-fc84."""
    return _lenet(num_classes, input_shape, width=width, dropout=dropout, name="lenet5")


@register_model("lenet5_tiny", input_size=(32, 32), family="lenet")
def lenet5_tiny(num_classes: int, *, input_shape=(32, 32, 3), dropout: float = 0.0) -> keras.Model:
    """LeNet-5 at half width (tests)."""
    return _lenet(num_classes, input_shape, width=0.5, dropout=dropout, name="lenet5_tiny")
