"""Parameter and multiply-accumulate counts, by walking the layers (nested models too)."""

from __future__ import annotations

import math

import keras

import edgecnn.train._tf  # noqa: F401  (before keras: TensorFlow loads quietly)

__all__ = ["count_macs", "model_summary_row"]


def _spatial(shape) -> int:
    return int(math.prod(d for d in shape[1:-1] if d)) if len(shape) > 2 else 1


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (conv, depthwise, dense)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_macs(layer)
            continue
        try:
            out_shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            total += _spatial(out_shape) * kh * kw * out_shape[-1]
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            in_ch = layer.input.shape[-1] // layer.groups
            total += _spatial(out_shape) * kh * kw * in_ch * out_shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += int(layer.kernel.shape[0]) * int(layer.kernel.shape[1]) * _spatial(out_shape)
    return int(total)


def model_summary_row(model: keras.Model) -> dict[str, float]:
    """Parameters (total and trainable) and MFLOPs (= 2 x MACs / 1e6) of a built model."""
    macs = count_macs(model)
    return {
        "params": int(model.count_params()),
        "macs": macs,
        "mflops": 2 * macs / 1e6,
    }
