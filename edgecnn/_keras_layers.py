"""The zoo's custom Keras layers, outside :mod:`edgecnn.train` so that loading a ``.keras`` file
that uses them (export, the ``bench --compare`` baselines) needs no training code.

Keras-only: importing this module imports Keras (TensorFlow quietly first, through
:func:`edgecnn._optional.require`) and registers the layers in Keras's serialization registry
under the ``edgecnn>`` package, the name ``.keras`` files record. It is imported inside the
functions that build or load Keras models, never by the runtime or serve stages.
"""

from __future__ import annotations

from typing import Any

from edgecnn._optional import require

keras = require("keras", "train")

__all__ = ["ChannelShuffle", "ChannelSplit", "ScaledBias", "TriangleSchedule"]


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
