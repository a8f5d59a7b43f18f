"""ShuffleNetV2-style nets (Ma et al., 2018): channel split, channel shuffle, width multiplier."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecnn.train.architectures._common import BN_MOMENTUM, classifier_head, keras_api
from edgecnn.train.registry import register_model

if TYPE_CHECKING:
    import keras

# Stage output channels per width multiplier (paper, table 5), and the last 1x1 conv.
_WIDTHS = {0.25: (24, 48, 96, 512), 0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024),
           1.5: (176, 352, 704, 1024), 2.0: (244, 488, 976, 2048)}


def _cbr(x, filters, name, act=True):
    layers = keras_api().layers
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if act else x


def _dw(x, strides, name):
    layers = keras_api().layers
    x = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name=f"{name}_dw")(x)
    return layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(x)


def _shuffle_unit(x, out_ch: int, strides: int, name: str):
    from edgecnn._keras_layers import ChannelShuffle, ChannelSplit

    layers = keras_api().layers
    if strides == 1:
        left, right = ChannelSplit(name=f"{name}_split")(x)
        branch_ch = out_ch // 2
    else:
        left = _cbr(_dw(x, strides, f"{name}_b1"), out_ch // 2, f"{name}_b1_pw")
        right = x
        branch_ch = out_ch - out_ch // 2
    right = _cbr(right, branch_ch, f"{name}_b2_pw1")
    right = _dw(right, strides, f"{name}_b2")
    right = _cbr(right, branch_ch, f"{name}_b2_pw2")
    y = layers.Concatenate(name=f"{name}_concat")([left, right])
    return ChannelShuffle(2, name=f"{name}_shuffle")(y)


def _shufflenet_v2(num_classes, input_shape, *, width: float, repeats, small_input: bool,
                   dropout: float, name: str) -> keras.Model:
    if width not in _WIDTHS:
        raise ValueError(f"ShuffleNetV2 width must be one of {sorted(_WIDTHS)}, got {width}.")
    keras = keras_api()
    layers = keras.layers
    *stage_ch, last_ch = _WIDTHS[width]
    inputs = keras.Input(input_shape, name="images")
    stem_ch = 24
    x = layers.Conv2D(stem_ch, 3, strides=1 if small_input else 2, padding="same", use_bias=False,
                      name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    if not small_input:
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for s, (ch, n) in enumerate(zip(stage_ch, repeats), start=2):
        for i in range(n):
            x = _shuffle_unit(x, ch, 2 if i == 0 else 1, name=f"stage{s}_unit{i + 1}")
    x = _cbr(x, last_ch, "head")
    return keras.Model(inputs, classifier_head(x, num_classes, dropout=dropout), name=name)


@register_model("shufflenet_v2", input_size=(32, 32), family="shufflenet")
def shufflenet_v2(num_classes: int, *, input_shape=(32, 32, 3), width: float = 1.0,
                  dropout: float = 0.2) -> keras.Model:
    """ShuffleNetV2 for 32x32 inputs (stride-1 stem, no stem pooling), width multiplier."""
    return _shufflenet_v2(num_classes, input_shape, width=width, repeats=(4, 8, 4), small_input=True,
                          dropout=dropout, name="shufflenet_v2")


@register_model("shufflenet_v2_224", input_size=(224, 224), family="shufflenet")
def shufflenet_v2_224(num_classes: int, *, input_shape=(224, 224, 3), width: float = 1.0,
                      dropout: float = 0.2) -> keras.Model:
    """ShuffleNetV2 with the paper's stride-2 stem and stem pooling, for 224x224 inputs."""
    return _shufflenet_v2(num_classes, input_shape, width=width, repeats=(4, 8, 4), small_input=False,
                          dropout=dropout, name="shufflenet_v2_224")


@register_model("shufflenet_v2_tiny", input_size=(32, 32), family="shufflenet")
def shufflenet_v2_tiny(num_classes: int, *, input_shape=(32, 32, 3), dropout: float = 0.0) -> keras.Model:
    """ShuffleNetV2 0.25x with one unit per stage (tests)."""
    return _shufflenet_v2(num_classes, input_shape, width=0.25, repeats=(1, 2, 1), small_input=True,
                          dropout=dropout, name="shufflenet_v2_tiny")
