"""A small single-stage, anchor-free detector in the manner of YOLOv8 (without its distribution
focal loss): a strided conv backbone, a top-down feature pyramid at strides 8, 16 and 32, and a
decoupled head per level (box distances and class logits apart). :class:`edgecnn._keras_layers.AnchorDecode`
turns the heads into the ``[N, 4 + C, A]`` output the runtime's detect head decodes (``cx, cy, w,
h`` in input pixels, a sigmoid score per class), so an export is a ``yolov8`` card with no custom
post-processing. Training targets and loss: :mod:`edgecnn.train.detection`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from edgecnn.train.architectures._common import conv_bn_act, keras_api, make_divisible
from edgecnn.train.registry import register_model

if TYPE_CHECKING:
    import keras

STRIDES = (8, 16, 32)
PRIOR = 0.01  # initial class probability (RetinaNet's prior): the background's many anchors start quiet


def _stage(x, filters: int, *, name: str):
    """A stride-2 conv, then a residual pair of 3x3 convs."""
    x = conv_bn_act(x, filters, 3, strides=2, name=f"{name}_down", act="swish")
    y = conv_bn_act(x, filters, 3, name=f"{name}_a", act="swish")
    y = conv_bn_act(y, filters, 3, name=f"{name}_b", act="swish")
    return keras_api().layers.Add(name=f"{name}_add")([x, y])


def _head(x, num_classes: int, filters: int, *, name: str):
    keras = keras_api()
    layers = keras.layers
    box = conv_bn_act(x, filters, 3, name=f"{name}_box", act="swish")
    box = layers.Conv2D(4, 1, name=f"{name}_box_out", bias_initializer=keras.initializers.Constant(1.0))(box)
    cls = conv_bn_act(x, filters, 3, name=f"{name}_cls", act="swish")
    cls = layers.Conv2D(num_classes, 1, name=f"{name}_cls_out",
                        bias_initializer=keras.initializers.Constant(-math.log((1 - PRIOR) / PRIOR)))(cls)
    return layers.Concatenate(name=f"{name}_out")([box, cls])


def _anchorfree(num_classes: int, input_shape, *, filters: tuple[int, ...], width: float, name: str) -> keras.Model:
    from edgecnn._keras_layers import AnchorDecode

    keras = keras_api()
    layers = keras.layers
    h, w = input_shape[:2]
    if h % STRIDES[-1] or w % STRIDES[-1]:
        raise ValueError(f"{name} needs input sides that are multiples of {STRIDES[-1]}, got {h}x{w}")
    c = [make_divisible(f * width) for f in filters]
    inputs = keras.Input(input_shape, name="images")
    x = conv_bn_act(inputs, c[0], 3, strides=2, name="stem", act="swish")  # stride 2
    x = _stage(x, c[1], name="stage1")  # 4
    p3 = _stage(x, c[2], name="stage2")  # 8
    p4 = _stage(p3, c[3], name="stage3")  # 16
    p5 = _stage(p4, c[4], name="stage4")  # 32
    neck = c[2]
    n5 = conv_bn_act(p5, neck, 1, name="neck5", act="swish")
    n4 = layers.Concatenate(name="neck4_concat")([layers.UpSampling2D(2, name="neck5_up")(n5), p4])
    n4 = conv_bn_act(n4, neck, 3, name="neck4", act="swish")
    n3 = layers.Concatenate(name="neck3_concat")([layers.UpSampling2D(2, name="neck4_up")(n4), p3])
    n3 = conv_bn_act(n3, neck, 3, name="neck3", act="swish")
    heads = [_head(n, num_classes, neck, name=f"head{i}") for i, n in zip((3, 4, 5), (n3, n4, n5))]
    out = AnchorDecode(STRIDES, name="detections", dtype="float32")(heads)
    return keras.Model(inputs, out, name=name)


@register_model("anchorfree", input_size=(128, 128), family="anchorfree", task="detect")
def anchorfree(num_classes: int, *, input_shape=(128, 128, 3), width: float = 1.0) -> keras.Model:
    """Anchor-free YOLOv8-style detector, strides 8/16/32, 16-256 filters."""
    return _anchorfree(num_classes, input_shape, filters=(16, 32, 64, 128, 256), width=width, name="anchorfree")


@register_model("anchorfree_tiny", input_size=(128, 128), family="anchorfree", task="detect")
def anchorfree_tiny(num_classes: int, *, input_shape=(128, 128, 3), width: float = 1.0) -> keras.Model:
    """Anchor-free YOLOv8-style detector at half the width: trains in minutes on a CPU."""
    return _anchorfree(num_classes, input_shape, filters=(8, 16, 32, 64, 128), width=width, name="anchorfree_tiny")
