"""airbench-style fast CIFAR net (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU",
arXiv 2404.00498): a frozen 2x2 whitening conv, then three blocks of conv-pool-BN-GELU-conv-BN-GELU
(64, 256, 256 filters), global max pooling and a bias-free linear layer scaled by 1/9.

What makes it train fast lives partly here and partly in the recipe (models/fast_cifar10.yaml):
- ``whiten``: a non-trainable conv of 2 x 12 filters over 2x2 patches. The training loop sets it
  from the eigenvectors of the training images' patch covariance (``whiten_init``, in
  :mod:`edgecnn.train.hooks`); only its bias (``whiten_bias``) trains.
- Identity ("dirac") initialization of every 3x3 conv's first ``in_channels`` filters: each block
  starts as a near-identity map plus random extra channels, an implicit residual.
- Batch norm without a learned scale (gamma fixed at 1) and with its bias in a :class:`ScaledBias`
  that trains 64x faster under SGD; moving statistics with momentum 0.6 (they follow the weights
  of a 10-epoch run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgecnn.train.architectures._common import keras_api
from edgecnn.train.registry import register_model

if TYPE_CHECKING:
    import keras

WHITEN_LAYER = "whiten"  # the conv that ``whiten_init`` sets (edgecnn.train.hooks)
WHITEN_BIAS_LAYER = f"{WHITEN_LAYER}_bias"  # its bias, held after ``whiten_bias_epochs``
BN_BIAS_SCALE = 8.0  # ScaledBias: 8**2 = airbench's 64x learning rate for batch-norm biases
LOGIT_SCALE = 1 / 9  # airbench's output scaling
BN_MOMENTUM = 0.6


def _bn_gelu(x, name: str):
    keras = keras_api()
    from edgecnn._keras_layers import ScaledBias

    x = keras.layers.BatchNormalization(center=False, scale=False, momentum=BN_MOMENTUM, epsilon=1e-5,
                                        name=f"{name}_bn")(x)
    x = ScaledBias(BN_BIAS_SCALE, name=f"{name}_bias")(x)
    return keras.layers.Activation("gelu", name=f"{name}_gelu")(x)


def _torch_init():
    """PyTorch's default conv/linear init (uniform, bound 1/sqrt(fan_in)), as in the reference."""
    return keras_api().initializers.VarianceScaling(1 / 3, mode="fan_in", distribution="uniform")


def _conv(x, filters: int, name: str):
    return keras_api().layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=_torch_init(),
                                     name=f"{name}_conv")(x)


def _block(x, filters: int, name: str):
    keras = keras_api()
    x = _conv(x, filters, f"{name}_1")
    x = keras.layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    x = _bn_gelu(x, f"{name}_1")
    x = _conv(x, filters, f"{name}_2")
    return _bn_gelu(x, f"{name}_2")


def dirac_init(model: keras.Model) -> None:
    """Set each 3x3 conv's first ``min(in, out)`` filters to the identity on the matching input channel."""
    for layer in model.layers:
        if layer.name.endswith("_conv") and tuple(layer.kernel.shape[:2]) == (3, 3):
            kernel = np.array(layer.kernel.numpy())
            n = min(kernel.shape[2], kernel.shape[3])
            kernel[..., :n] = 0.0
            kernel[1, 1, np.arange(n), np.arange(n)] = 1.0
            layer.kernel.assign(kernel)


def _airbench(num_classes, input_shape, *, widths: tuple[int, int, int], width: float, name: str) -> keras.Model:
    keras = keras_api()
    from edgecnn._keras_layers import ScaledBias

    layers = keras.layers
    inputs = keras.Input(input_shape, name="images")
    # 2 x (2*2*3) filters: the whitening eigenvectors and their negatives (GELU keeps both signs).
    x = layers.Conv2D(2 * 2 * 2 * input_shape[-1], 2, padding="valid", use_bias=False, trainable=False,
                      name=WHITEN_LAYER)(inputs)
    x = ScaledBias(1.0, name=WHITEN_BIAS_LAYER)(x)
    x = layers.Activation("gelu", name=f"{WHITEN_LAYER}_gelu")(x)
    for i, filters in enumerate(widths, start=1):
        x = _block(x, max(4, round(filters * width)), f"block{i}")
    x = layers.GlobalMaxPooling2D(name="features")(x)
    x = layers.Dense(num_classes, use_bias=False, kernel_initializer=_torch_init(), name="head")(x)
    x = layers.Rescaling(LOGIT_SCALE, name="logits")(x)
    outputs = layers.Activation("softmax", name="probabilities", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name=name)
    dirac_init(model)
    return model


@register_model("fast_cifar", input_size=(32, 32), family="airbench")
def fast_cifar(num_classes: int, *, input_shape=(32, 32, 3), width: float = 1.0) -> keras.Model:
    """airbench94's net: whitening conv, 64-256-256 conv-BN-GELU blocks (models/fast_cifar10.yaml)."""
    return _airbench(num_classes, input_shape, widths=(64, 256, 256), width=width, name="fast_cifar")


@register_model("fast_cifar_tiny", input_size=(32, 32), family="airbench")
def fast_cifar_tiny(num_classes: int, *, input_shape=(32, 32, 3)) -> keras.Model:
    """fast_cifar at 8-16-16 filters (tests)."""
    return _airbench(num_classes, input_shape, widths=(8, 16, 16), width=1.0, name="fast_cifar_tiny")
