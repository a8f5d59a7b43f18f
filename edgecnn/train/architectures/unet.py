"""U-Net (Ronneberger et al., 2015) for semantic segmentation: an encoder of conv-conv-pool
levels, a decoder that upsamples and concatenates the encoder's map of the same size, and a 1x1
convolution to per-pixel class logits ``[N, H, W, C]`` (the ``logits`` output of a segment card)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecnn.train.architectures._common import conv_bn_act, keras_api, make_divisible
from edgecnn.train.registry import register_model

if TYPE_CHECKING:
    import keras


def _unet(num_classes: int, input_shape, *, filters: tuple[int, ...], width: float, dropout: float,
          name: str) -> keras.Model:
    keras = keras_api()
    layers = keras.layers
    levels = len(filters) - 1
    h, w = input_shape[:2]
    if h % 2 ** levels or w % 2 ** levels:
        raise ValueError(f"{name} needs input sides that are multiples of {2 ** levels}, got {h}x{w}")
    chans = [make_divisible(f * width) for f in filters]
    inputs = keras.Input(input_shape, name="images")
    x, skips = inputs, []
    for i, c in enumerate(chans[:-1]):
        x = conv_bn_act(x, c, 3, name=f"down{i}_a")
        x = conv_bn_act(x, c, 3, name=f"down{i}_b")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{i}_pool")(x)
    x = conv_bn_act(x, chans[-1], 3, name="bottom_a")
    x = conv_bn_act(x, chans[-1], 3, name="bottom_b")
    if dropout > 0:
        x = layers.Dropout(dropout, name="bottom_dropout")(x)
    for i in reversed(range(levels)):
        x = layers.Conv2DTranspose(chans[i], 2, strides=2, padding="same", name=f"up{i}_upsample")(x)
        x = layers.Concatenate(name=f"up{i}_concat")([x, skips[i]])
        x = conv_bn_act(x, chans[i], 3, name=f"up{i}_a")
        x = conv_bn_act(x, chans[i], 3, name=f"up{i}_b")
    logits = layers.Conv2D(num_classes, 1, name="logits", dtype="float32")(x)
    return keras.Model(inputs, logits, name=name)


@register_model("unet", input_size=(128, 128), family="unet", task="segment")
def unet(num_classes: int, *, input_shape=(128, 128, 3), width: float = 1.0, dropout: float = 0.0) -> keras.Model:
    """U-Net, 4 levels of 32-256 filters (the paper's 64-1024 at width 0.5 less a level)."""
    return _unet(num_classes, input_shape, filters=(32, 64, 128, 256), width=width, dropout=dropout, name="unet")


@register_model("unet_tiny", input_size=(128, 128), family="unet", task="segment")
def unet_tiny(num_classes: int, *, input_shape=(128, 128, 3), width: float = 1.0,
              dropout: float = 0.0) -> keras.Model:
    """U-Net, 3 levels of 16-64 filters: trains in minutes on a CPU."""
    return _unet(num_classes, input_shape, filters=(16, 32, 64), width=width, dropout=dropout, name="unet_tiny")
