"""Flip test-time augmentation baked into the exported graph (``edgecnn export --tta flip``).

The Keras model is wrapped before conversion: the batch and its mirror image go through the
network as one batch of 2N, and the two halves' logits are averaged before the softmax. The ONNX
file then has the same input, output and card as the plain export (and the same weights, once),
but every image costs two forward passes: twice the FLOPs and about twice the latency. It
matches ``edgecnn evaluate --tta flip``, which averages the two views' log-probabilities (equal to
averaging logits: a softmax is unchanged by a shift per view).
"""

from __future__ import annotations

from typing import Any

from edgecnn._optional import require
from edgecnn.errors import ArtifactError, ConfigError
from edgecnn.export.variants import EXPORT_TTA

__all__ = ["tta_model"]


def _is_softmax_layer(layer: Any) -> bool:
    activation = getattr(getattr(layer, "activation", None), "__name__", "")
    return type(layer).__name__ == "Softmax" or (type(layer).__name__ == "Activation" and activation == "softmax")


def tta_model(model: Any, mode: str, *, layout: str = "nhwc") -> Any:
    """``model`` (one image input, one classifier output) under ``mode`` test-time augmentation.

    Raises:
        ConfigError: for an unknown mode.
        ArtifactError: for a model that is not a single-input, single-output classifier.
    """
    if mode not in EXPORT_TTA:
        raise ConfigError(f"Export test-time augmentation must be one of {', '.join(EXPORT_TTA)}, got {mode!r}.")
    if mode == "none":
        return model
    keras = require("keras", "train")
    ops = keras.ops
    if len(model.inputs) != 1 or len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise ArtifactError(f"--tta flip averages the class scores of a classifier with one image input; {model.name} "
                            f"has {len(model.inputs)} inputs and outputs of shapes "
                            f"{[tuple(o.shape) for o in model.outputs]}.")
    last = model.layers[-1]
    # Average logits when the softmax is a layer of its own (every zoo model); otherwise average the
    # log-probabilities of a softmax output (the same thing), or the raw scores of a logits output.
    if _is_softmax_layer(last):
        scores, finish = keras.Model(model.inputs, last.input), "softmax"
    else:
        activation = getattr(getattr(last, "activation", None), "__name__", "")
        scores, finish = model, ("log_softmax" if activation == "softmax" else "mean")
    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), name="images")
    width_axis = 3 if layout == "nchw" else 2
    both = ops.concatenate([inputs, ops.flip(inputs, axis=width_axis)], axis=0)
    out = scores(both)
    if finish == "log_softmax":
        out = ops.log(ops.maximum(out, 1e-30))
    plain, mirrored = ops.split(out, 2, axis=0)
    mean = (plain + mirrored) * 0.5
    if finish != "mean":
        mean = keras.layers.Activation("softmax", name="probabilities", dtype="float32")(mean)
    return keras.Model(inputs, mean, name=f"{model.name}_tta_flip")
