"""VGG-style nets: stacks of 3x3 conv + BN + ReLU, max-pooling, dropout (Simonyan & Zisserman)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecnn.train.architectures._common import classifier_head, conv_bn_act, keras_api
from edgecnn.train.registry import register_model

if TYPE_CHECKING:
    import keras


def _vgg(num_classes, input_shape, *, stages, width: float, dropout: float, name: str) -> keras.Model:
    keras = keras_api()
    layers = keras.layers
    inputs = keras.Input(input_shape, name="images")
    x = inputs
    for s, (filters, convs) in enumerate(stages, start=1):
        for c in range(1, convs + 1):
            x = conv_bn_act(x, max(4, round(filters * width)), 3, name=f"block{s}_{c}")
        x = layers.MaxPooling2D(2, name=f"block{s}_pool")(x)
        if dropout > 0:
            x = layers.Dropout(min(0.5, dropout * s / len(stages)), name=f"block{s}_dropout")(x)
    return keras.Model(inputs, classifier_head(x, num_classes, dropout=dropout), name=name)


@register_model("vgg11", input_size=(32, 32), family="vgg")
def vgg11(num_classes: int, *, input_shape=(32, 32, 3), width: float = 1.0, dropout: float = 0.3) -> keras.Model:
    """VGG-11-style: 64-128-256x2-512x2-512x2 with BN, global pooling head."""
    stages = ((64, 1), (128, 1), (256, 2), (512, 2), (512, 2))
    return _vgg(num_classes, input_shape, stages=stages, width=width, dropout=dropout, name="vgg11")


@register_model("vgg_small", input_size=(32, 32), family="vgg")
def vgg_small(num_classes: int, *, input_shape=(32, 32, 3), width: float = 1.0, dropout: float = 0.3) -> keras.Model:
    """Compact CIFAR VGG: (64x2)-(128x2)-(256x2) with BN, dropout, global pooling."""
    stages = ((64, 2), (128, 2), (256, 2))
    return _vgg(num_classes, input_shape, stages=stages, width=width, dropout=dropout, name="vgg_small")


@register_model("vgg_tiny", input_size=(32, 32), family="vgg")
def vgg_tiny(num_classes: int, *, input_shape=(32, 32, 3), dropout: float = 0.1) -> keras.Model:
    """Two 3x3 stages of 8 and 16 filters (tests)."""
    return _vgg(num_classes, input_shape, stages=((8, 1), (16, 1)), width=1.0, dropout=dropout, name="vgg_tiny")
