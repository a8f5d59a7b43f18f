"""The zoo's custom Keras layers, outside :mod:`edgecnn.train` so that loading a ``.keras`` file
that uses them (export, the ``bench --compare`` baselines) needs no training code.

Keras-only: importing this module imports Keras (TensorFlow quietly first, through
:func:`edgecnn._optional.require`) and registers the layers in Keras's serialization registry
under the ``edgecnn>`` package, the name ``.keras`` files record. It is imported inside the
functions that build or load Keras models, never by the runtime or serve stages.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecnn._optional import require

keras: Any = require("keras", "train")

__all__ = [
    "AnchorDecode",
    "ChannelShuffle",
    "ChannelSplit",
    "FakeQuant",
    "QATConv2D",
    "QATDense",
    "QATDepthwiseConv2D",
    "ScaledBias",
    "TriangleSchedule",
    "anchor_points",
    "fake_quant_weights",
]


@keras.saving.register_keras_serializable(package="edgecnn")
class ChannelSplit(keras.layers.Layer):
    """Split the channel axis in two halves (converts to ONNX Slice)."""

    def call(self, x: Any) -> tuple[Any, Any]:
        half = x.shape[-1] // 2
        return x[..., :half], x[..., half:]

    def compute_output_shape(self, input_shape: tuple) -> tuple[tuple, tuple]:
        half = input_shape[-1] // 2
        return (tuple(input_shape[:-1]) + (half,), tuple(input_shape[:-1]) + (input_shape[-1] - half,))


@keras.saving.register_keras_serializable(package="edgecnn")
class ChannelShuffle(keras.layers.Layer):
    """Interleave ``groups`` channel groups: reshape, transpose, reshape (ONNX-friendly)."""

    def __init__(self, groups: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.groups = groups

    def call(self, x: Any) -> Any:
        ops = keras.ops
        _, h, w, c = x.shape
        y = ops.reshape(x, (-1, h, w, self.groups, c // self.groups))
        y = ops.transpose(y, (0, 1, 2, 4, 3))
        return ops.reshape(y, (-1, h, w, c))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "groups": self.groups}


@keras.saving.register_keras_serializable(package="edgecnn")
class ScaledBias(keras.layers.Layer):
    """Add a per-channel bias ``scale * b`` (converts to ONNX Add of a constant, folded away).

    Storing the bias divided by ``scale`` makes plain SGD move it ``scale**2`` times faster than the
    other weights without a per-variable learning rate: airbench's batch-norm biases train at 64x
    the learning rate (``scale=8``). Decoupled weight decay still shrinks it at the common rate.
    """

    def __init__(self, scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = float(scale)

    def build(self, input_shape: tuple) -> None:
        self.bias = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="bias")

    def call(self, x: Any) -> Any:
        return x + keras.ops.cast(self.bias, x.dtype) * self.scale

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package="edgecnn")
class TriangleSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-linear learning rate: ``start * lr`` at step 0, ``lr`` at ``peak_step``, ``end * lr`` at
    ``total_steps`` (and after). airbench94 uses start 0.2, peak at 23% of the steps, end 0.07."""

    def __init__(self, lr: float, total_steps: int, peak_step: int, start: float = 0.2, end: float = 0.07) -> None:
        self.lr, self.total_steps, self.peak_step = float(lr), int(total_steps), int(peak_step)
        self.start, self.end = float(start), float(end)

    def __call__(self, step: Any) -> Any:
        ops = keras.ops
        step = ops.cast(step, "float32")
        peak, total = float(max(1, self.peak_step)), float(max(self.peak_step + 1, self.total_steps))
        up = self.start + (1.0 - self.start) * step / peak
        down = 1.0 + (self.end - 1.0) * ops.minimum(step - peak, total - peak) / (total - peak)
        return self.lr * ops.where(step < peak, up, down)

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "total_steps": self.total_steps, "peak_step": self.peak_step, "start": self.start,
                "end": self.end}


# ------------------------------------------------------------------------ quantization-aware training
# The layers of a QAT model (edgecnn.train.qat builds it, edgecnn.export converts it): here because
# both sides must deserialize them. The activation quantizer is TensorFlow's own
# FakeQuantWithMinMaxVars, which tf2onnx turns into a QuantizeLinear/DequantizeLinear pair (uint8,
# per tensor). tf2onnx converts only ``narrow_range=False``, ``num_bits=8``, constant scalar
# min/max, and it rounds the zero point itself (numpy, half to even) where TensorFlow "nudges" it
# (half up): :class:`FakeQuant` hands the op a range whose zero point is already a whole number,
# so both agree (tests/train/test_qat.py checks it numerically). The weights are fake-quantized
# with plain ops (symmetric, per output channel or per tensor, ``max|w| / qmax``): their result is a
# constant in the traced graph, and edgecnn.export.qat stores it as int8 weights with a
# DequantizeLinear, the QDQ form onnxruntime runs on its int8 kernels.

_ACT_LEVELS = 255.0  # uint8 activations


@keras.saving.register_keras_serializable(package="edgecnn")
class FakeQuant(keras.layers.Layer):
    """Fake-quantize a tensor to uint8 with a learned range (``min <= 0 <= max``).

    ``lower``/``upper`` bound the range where the tensor is bounded anyway (0 after a ReLU, 6 after
    ReLU6), so the quantizer never spends levels outside it and onnxruntime can drop the ReLU.
    """

    def __init__(self, lower: float | None = None, upper: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lower = None if lower is None else float(lower)
        self.upper = None if upper is None else float(upper)
        self.bypass = False  # calibration reads float ranges through it (not saved)

    def build(self, input_shape: tuple) -> None:
        self.range_min = self.add_weight(shape=(), initializer="zeros", name="range_min")
        self.range_max = self.add_weight(shape=(), initializer="ones", name="range_max")

    def quant_range(self) -> tuple[Any, Any]:
        """The (min, max) handed to the op: clipped to the bounds, zero point a whole number."""
        ops = keras.ops
        lo, hi = ops.minimum(self.range_min, 0.0), ops.maximum(self.range_max, 0.0)
        if self.lower is not None:
            lo = ops.maximum(lo, self.lower)
        if self.upper is not None:
            hi = ops.minimum(hi, self.upper)
        hi = ops.maximum(hi, lo + 1e-6)
        scale = (hi - lo) / _ACT_LEVELS
        zero = ops.stop_gradient(ops.clip(ops.round(-lo / scale), 0.0, _ACT_LEVELS))
        return -zero * scale, (_ACT_LEVELS - zero) * scale

    def call(self, x: Any) -> Any:
        if self.bypass:
            return x
        tf = require("tensorflow", "train")
        lo, hi = self.quant_range()
        return tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8, narrow_range=False)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "lower": self.lower, "upper": self.upper}


def fake_quant_weights(kernel: Any, *, channel_axes: tuple[int, ...], qmax: int) -> Any:
    """``kernel`` on the symmetric grid ``scale * [-qmax, qmax]``, ``scale = max|w| / qmax`` per
    output channel (``channel_axes``: the kernel axes that index output channels; () per tensor);
    the gradient passes straight through."""
    ops = keras.ops
    axes = tuple(a for a in range(len(kernel.shape)) if a not in channel_axes)
    scale = ops.maximum(ops.max(ops.abs(kernel), axis=axes, keepdims=True) / qmax, 1e-12)
    quantized = ops.round(kernel / scale) * scale
    return kernel + ops.stop_gradient(quantized - kernel)


class _QATWeights:
    """Mixin: ``weight_bits`` (8, or 7 for AVX2 without VNNI) and ``per_channel`` of the kernel grid."""

    _channel_axes: tuple[int, ...] = (-1,)
    # Set by the Keras layer this mixes into (Conv2D, DepthwiseConv2D, Dense).
    kernel: Any
    bias: Any
    use_bias: bool
    activation: Any

    def _init_qat(self, weight_bits: int, per_channel: bool) -> None:
        self.weight_bits, self.per_channel = int(weight_bits), bool(per_channel)

    def quantized_kernel(self) -> Any:
        rank = len(self.kernel.shape)
        axes = tuple(a % rank for a in self._channel_axes) if self.per_channel else ()
        return fake_quant_weights(self.kernel, channel_axes=axes, qmax=2 ** (self.weight_bits - 1) - 1)

    def _qat_config(self) -> dict[str, Any]:
        return {"weight_bits": self.weight_bits, "per_channel": self.per_channel}

    def _bias_and_activation(self, y: Any) -> Any:
        """The convolution's bias (channels last) and activation, as Keras's own layers add them."""
        if self.use_bias:
            y = keras.ops.add(y, keras.ops.reshape(self.bias, (1,) * (len(y.shape) - 1) + (-1,)))
        return self.activation(y) if self.activation is not None else y


@keras.saving.register_keras_serializable(package="edgecnn")
class QATConv2D(_QATWeights, keras.layers.Conv2D):
    """``Conv2D`` computing with its fake-quantized kernel (per output channel: the last axis)."""

    def __init__(self, *args: Any, weight_bits: int = 8, per_channel: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_qat(weight_bits, per_channel)

    def call(self, inputs: Any) -> Any:
        y = self.convolution_op(inputs, self.quantized_kernel())
        return self._bias_and_activation(y)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._qat_config()}


@keras.saving.register_keras_serializable(package="edgecnn")
class QATDepthwiseConv2D(_QATWeights, keras.layers.DepthwiseConv2D):
    """``DepthwiseConv2D`` with its fake-quantized kernel (``(kh, kw, C, M)``: per channel over C and M)."""

    _channel_axes = (2, 3)

    def __init__(self, *args: Any, weight_bits: int = 8, per_channel: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_qat(weight_bits, per_channel)

    def call(self, inputs: Any) -> Any:
        y = keras.ops.depthwise_conv(inputs, self.quantized_kernel(), strides=self.strides, padding=self.padding,
                                     dilation_rate=self.dilation_rate, data_format=self.data_format)
        return self._bias_and_activation(y)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._qat_config()}


@keras.saving.register_keras_serializable(package="edgecnn")
class QATDense(_QATWeights, keras.layers.Dense):
    """``Dense`` with its fake-quantized kernel (``(in, out)``: per output unit)."""

    def __init__(self, *args: Any, weight_bits: int = 8, per_channel: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_qat(weight_bits, per_channel)

    def call(self, inputs: Any, training: Any = None) -> Any:
        y = keras.ops.matmul(inputs, self.quantized_kernel())
        if self.use_bias:
            y = keras.ops.add(y, self.bias)
        return self.activation(y) if self.activation is not None else y

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self._qat_config()}


def anchor_points(input_size: tuple[int, int], strides: tuple[int, ...]) -> np.ndarray:
    """The anchor points of an anchor-free detector, (A, 3) rows of ``x, y, stride`` in input
    pixels: the centre of every cell of each stride's grid, level by level, row-major (the order
    of :class:`AnchorDecode`'s output, and of the targets its loss is given)."""
    h, w = input_size
    rows = []
    for s in strides:
        ys, xs = np.meshgrid((np.arange(-(-h // s)) + 0.5) * s, (np.arange(-(-w // s)) + 0.5) * s, indexing="ij")
        rows.append(np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, s, dtype=np.float64)], axis=1))
    return np.concatenate(rows).astype(np.float32)


@keras.saving.register_keras_serializable(package="edgecnn")
class AnchorDecode(keras.layers.Layer):
    """Per-level raw head maps ``[N, h, w, 4 + C]`` -> one YOLOv8-layout output ``[N, 4 + C, A]``.

    The first four channels of a cell are its distances to the box's left, top, right and bottom
    edges in strides (softplus keeps them positive), the rest class logits (a sigmoid each). The
    output holds ``cx, cy, w, h`` in input pixels and the class probabilities: the layout the
    runtime's detect head decodes, so an exported model needs no custom post-processing.
    """

    def __init__(self, strides: tuple[int, ...] = (8, 16, 32), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.strides = tuple(int(s) for s in strides)

    def call(self, levels: list[Any]) -> Any:
        ops = keras.ops
        out = []
        for t, s in zip(levels, self.strides):
            h, w, ch = t.shape[1], t.shape[2], t.shape[3]
            ys, xs = np.meshgrid((np.arange(h) + 0.5) * s, (np.arange(w) + 0.5) * s, indexing="ij")
            px = ops.convert_to_tensor(xs.reshape(1, -1, 1).astype("float32"))
            py = ops.convert_to_tensor(ys.reshape(1, -1, 1).astype("float32"))
            t = ops.reshape(t, (-1, h * w, ch))
            dist = ops.softplus(t[..., :4]) * float(s)
            left, top, right, bottom = (dist[..., i:i + 1] for i in range(4))
            out.append(ops.concatenate([px + (right - left) / 2, py + (bottom - top) / 2, left + right, top + bottom,
                                        ops.sigmoid(t[..., 4:])], axis=-1))
        return ops.transpose(ops.concatenate(out, axis=1), (0, 2, 1))

    def compute_output_shape(self, input_shape: list[tuple]) -> tuple:
        anchors = sum(int(s[1]) * int(s[2]) for s in input_shape)
        return (input_shape[0][0], int(input_shape[0][3]), anchors)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "strides": list(self.strides)}
