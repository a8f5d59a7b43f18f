"""CIFAR ResNets (He et al., 2016, section 4.2): 6n+2 layers of basic blocks, 16-32-64 filters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecnn.train.architectures._common import classifier_head, conv_bn_act, keras_api
from edgecnn.train.registry import register_model

if TYPE_CHECKING:
    import keras


def _basic_block(x, filters: int, strides: int, name: str):
    layers = keras_api().layers
    shortcut = x
    y = conv_bn_act(x, filters, 3, strides=strides, name=f"{name}_1")
    y = conv_bn_act(y, filters, 3, name=f"{name}_2", act=None)
    if strides != 1 or x.shape[-1] != filters:
        # Projection shortcut (option B): a 1x1 conv converts cleanly to ONNX, unlike zero-padding.
        shortcut = conv_bn_act(x, filters, 1, strides=strides, name=f"{name}_proj", act=None)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def _cifar_resnet(num_classes, input_shape, *, n: int, width: float, dropout: float, name: str) -> keras.Model:
    keras = keras_api()
    filters = [max(4, round(f * width)) for f in (16, 32, 64)]
    inputs = keras.Input(input_shape, name="images")
    x = conv_bn_act(inputs, filters[0], 3, name="stem")
    for s, f in enumerate(filters, start=1):
        for b in range(1, n + 1):
            x = _basic_block(x, f, 2 if (s > 1 and b == 1) else 1, name=f"stage{s}_block{b}")
    return keras.Model(inputs, classifier_head(x, num_classes, dropout=dropout), name=name)


@register_model("resnet20", input_size=(32, 32), family="resnet")
def resnet20(num_classes: int, *, input_shape=(32, 32, 3), width: float = 1.0, dropout: float = 0.0) -> keras.Model:
    """ResNet-20 for CIFAR (0.27M params at width 1)."""
    return _cifar_resnet(num_classes, input_shape, n=3, width=width, dropout=dropout, name="resnet20")


@register_model("resnet56", input_size=(32, 32), family="resnet")
def resnet56(num_classes: int, *, input_shape=(32, 32, 3), width: float = 1.0, dropout: float = 0.0) -> keras.Model:
    """ResNet-56 for CIFAR (0.86M params at width 1)."""
    return _cifar_resnet(num_classes, input_shape, n=9, width=width, dropout=dropout, name="resnet56")


@register_model("resnet20_w2", input_size=(32, 32), family="resnet")
def resnet20_w2(num_classes: int, *, input_shape=(32, 32, 3), dropout: float = 0.0) -> keras.Model:
    """ResNet-20 at twice the width (32-64-128 filters)."""
    return _cifar_resnet(num_classes, input_shape, n=3, width=2.0, dropout=dropout, name="resnet20_w2")


@register_model("resnet_tiny", input_size=(32, 32), family="resnet")
def resnet_tiny(num_classes: int, *, input_shape=(32, 32, 3), dropout: float = 0.0) -> keras.Model:
    """ResNet-8 at half width (tests)."""
    return _cifar_resnet(num_classes, input_shape, n=1, width=0.5, dropout=dropout, name="resnet_tiny")
