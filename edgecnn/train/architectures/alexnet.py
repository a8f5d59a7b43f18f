"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012): five convolutions with a large first kernel,
overlapping 3x3/2 max-pooling, and three dense layers with dropout, for 32x32 and 224x224 inputs.

Like torchvision's AlexNet, it has no local response normalization (later work found it adds
nothing) and one convolution per layer where the paper split them over two GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgecnn.train.architectures._common import keras_api, probabilities
from edgecnn.train.registry import register_model

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class _Layout:
    """Where the two input sizes differ: the first convolution and the grid the dense layers see."""

    stem_kernel: int
    stem_stride: int
    filters: tuple[int, int, int, int, int]
    dense: int
    grid: int  # side of the last feature map at the default input size (6 in the paper)


# The paper's ImageNet net: 11x11/4 stem, 96-256-384-384-256 filters, 4096-4096 dense, a 6x6 grid.
_IMAGENET = _Layout(stem_kernel=11, stem_stride=4, filters=(96, 256, 384, 384, 256), dense=4096, grid=6)
# For 32x32 the stem keeps the paper's proportion instead of its stride: 5x5/1 sees a sixth of the
# image as 11x11 sees a twentieth of 224; torchvision's widths; dense layers sized for a 3x3 grid.
_CIFAR = _Layout(stem_kernel=5, stem_stride=1, filters=(64, 192, 384, 256, 256), dense=1024, grid=3)
_TINY = _Layout(stem_kernel=5, stem_stride=1, filters=(8, 16, 24, 16, 16), dense=32, grid=3)


def _pool(x, name: str):
    """The paper's overlapping max-pooling (3x3, stride 2)."""
    if min(x.shape[1:3]) < 3:
        raise ValueError(f"the feature map before {name} is {x.shape[1]}x{x.shape[2]}, too small for AlexNet's "
                         "3x3 pooling; use larger inputs.")
    return keras_api().layers.MaxPooling2D(3, strides=2, name=name)(x)


def _to_grid(x, grid: int):
    """Average-pool a larger last feature map down to between ``grid`` and ``2 * grid - 1`` cells a
    side, so the dense layers keep about the paper's size at any input size (torchvision pools
    adaptively to exactly 6x6; one integer AveragePool keeps the ONNX graph plain)."""
    side = min(x.shape[1:3])
    if side < 2 * grid:
        return x
    k = side // grid
    return keras_api().layers.AveragePooling2D(k, strides=k, name="grid_pool")(x)


def _alexnet(num_classes: int, input_shape, *, layout: _Layout, width: float, dropout: float,
             name: str) -> keras.Model:
    keras = keras_api()
    layers = keras.layers
    f1, f2, f3, f4, f5, dense = (max(4, round(v * width)) for v in (*layout.filters, layout.dense))
    inputs = keras.Input(input_shape, name="images")
    # He initialization (He et al., 2015) for the ReLU layers: with Keras's Glorot default,
    # `edgecnn train --model alexnet` on 5,000 CIFAR-10 images stayed at chance (loss 2.303) for 5
    # epochs of the default recipe; without batch norm nothing else keeps the signal's scale.
    relu = dict(activation="relu", kernel_initializer="he_normal")
    x = layers.Conv2D(f1, layout.stem_kernel, strides=layout.stem_stride, padding="same", name="conv1", **relu)(inputs)
    x = _pool(x, "pool1")
    x = layers.Conv2D(f2, 5, padding="same", name="conv2", **relu)(x)
    x = _pool(x, "pool2")
    x = layers.Conv2D(f3, 3, padding="same", name="conv3", **relu)(x)
    x = layers.Conv2D(f4, 3, padding="same", name="conv4", **relu)(x)
    x = layers.Conv2D(f5, 3, padding="same", name="conv5", **relu)(x)
    x = _to_grid(_pool(x, "pool5"), layout.grid)
    x = layers.Flatten(name="flatten")(x)
    # Dropout after fc6 and fc7 as in the paper (Caffe's drop6/drop7); fc7 is the "features" layer
    # every zoo model ends in, so transfer learning and Grad-CAM find it by name.
    x = layers.Dense(dense, name="fc6", **relu)(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="fc6_dropout")(x)
    x = layers.Dense(dense, name="features", **relu)(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, probabilities(x), name=name)


@register_model("alexnet", input_size=(32, 32), family="alexnet")
def alexnet(num_classes: int, *, input_shape=(32, 32, 3), width: float = 1.0, dropout: float = 0.5) -> keras.Model:
    """AlexNet for 32x32 inputs: 5x5/1 stem, 64-192-384-256-256, fc 1024-1024, dropout 0.5."""
    return _alexnet(num_classes, input_shape, layout=_CIFAR, width=width, dropout=dropout, name="alexnet")


@register_model("alexnet_224", input_size=(224, 224), family="alexnet")
def alexnet_224(num_classes: int, *, input_shape=(224, 224, 3), width: float = 1.0,
                dropout: float = 0.5) -> keras.Model:
    """AlexNet as in the paper for 224x224: 11x11/4 stem, 96-256-384-384-256, fc 4096-4096."""
    return _alexnet(num_classes, input_shape, layout=_IMAGENET, width=width, dropout=dropout, name="alexnet_224")


@register_model("alexnet_tiny", input_size=(32, 32), family="alexnet")
def alexnet_tiny(num_classes: int, *, input_shape=(32, 32, 3), dropout: float = 0.2) -> keras.Model:
    """AlexNet's shape at 8-16-24-16-16 filters and fc 32-32 (tests)."""
    return _alexnet(num_classes, input_shape, layout=_TINY, width=1.0, dropout=dropout, name="alexnet_tiny")
