"""MobileNetV2-style nets (Sandler et al., 2018): inverted residuals with linear bottlenecks,
depthwise separable convolutions and a width multiplier, for 32x32 and 224x224 inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecnn.train.architectures._common import BN_MOMENTUM, classifier_head, keras_api, make_divisible
from edgecnn.train.registry import register_model

if TYPE_CHECKING:
    import keras

# (expansion t, output channels c, repeats n, first stride s) of the paper's table 2.
_IMAGENET_CFG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1))
# For 32x32 inputs the stem and the second stage keep stride 1, so the last feature map is 4x4.
_CIFAR_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_TINY_CFG = ((1, 16, 1, 1), (6, 24, 1, 2), (6, 32, 1, 2), (6, 64, 1, 2))


def _inverted_residual(x, expansion: int, filters: int, strides: int, name: str):
    layers = keras_api().layers
    in_ch = x.shape[-1]
    y = x
    if expansion != 1:
        y = layers.Conv2D(in_ch * expansion, 1, use_bias=False, name=f"{name}_expand")(y)
        y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_expand_bn")(y)
        y = layers.ReLU(6.0, name=f"{name}_expand_relu")(y)
    y = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name=f"{name}_depthwise")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_depthwise_bn")(y)
    y = layers.ReLU(6.0, name=f"{name}_depthwise_relu")(y)
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(y)
    # linear bottleneck: no activation
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_project_bn")(y)
    if strides == 1 and in_ch == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def _mobilenet_v2(num_classes, input_shape, *, cfg, width: float, stem_stride: int, last: int,
                  dropout: float, name: str) -> keras.Model:
    keras = keras_api()
    layers = keras.layers
    inputs = keras.Input(input_shape, name="images")
    x = layers.Conv2D(make_divisible(32 * width), 3, strides=stem_stride, padding="same", use_bias=False,
                      name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    block = 0
    for t, c, n, s in cfg:
        for i in range(n):
            x = _inverted_residual(x, t, make_divisible(c * width), s if i == 0 else 1, name=f"block{block}")
            block += 1
    # As in the paper, the last 1x1 conv is not narrowed for width < 1.
    last_ch = make_divisible(last * max(1.0, width))
    x = layers.Conv2D(last_ch, 1, use_bias=False, name="head_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="head_bn")(x)
    x = layers.ReLU(6.0, name="head_relu")(x)
    return keras.Model(inputs, classifier_head(x, num_classes, dropout=dropout), name=name)


@register_model("mobilenet_v2", input_size=(32, 32), family="mobilenet")
def mobilenet_v2(num_classes: int, *, input_shape=(32, 32, 3), width: float = 1.0, dropout: float = 0.2) -> keras.Model:
    """MobileNetV2 for 32x32 inputs (stride-1 stem and stage 2), width multiplier."""
    return _mobilenet_v2(num_classes, input_shape, cfg=_CIFAR_CFG, width=width, stem_stride=1, last=1280,
                         dropout=dropout, name="mobilenet_v2")


@register_model("mobilenet_v2_224", input_size=(224, 224), family="mobilenet")
def mobilenet_v2_224(num_classes: int, *, input_shape=(224, 224, 3), width: float = 1.0,
                     dropout: float = 0.2) -> keras.Model:
    """MobileNetV2 with the paper's ImageNet strides, for 224x224 (or 96-320) inputs."""
    return _mobilenet_v2(num_classes, input_shape, cfg=_IMAGENET_CFG, width=width, stem_stride=2, last=1280,
                         dropout=dropout, name="mobilenet_v2_224")


@register_model("mobilenet_v2_tiny", input_size=(32, 32), family="mobilenet")
def mobilenet_v2_tiny(num_classes: int, *, input_shape=(32, 32, 3), width: float = 0.35,
                      dropout: float = 0.0) -> keras.Model:
    """MobileNetV2 with one block per stage at width 0.35 (tests)."""
    return _mobilenet_v2(num_classes, input_shape, cfg=_TINY_CFG, width=width, stem_stride=1, last=128,
                         dropout=dropout, name="mobilenet_v2_tiny")
