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

__all__ = ["ChannelShuffle", "ChannelSplit"]


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
