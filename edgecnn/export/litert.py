"""Keras -> LiteRT (TFLite) with full-int8 post-training quantization.

int8 weights, activations, input and output, calibrated on representative images: the LiteRT
twin that ``edgecnn bench --compare tflite`` times next to the ONNX int8 model. TensorFlow (the
``[train]`` extra) is imported inside the function; importing this module is cheap.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from typing import Any

import numpy as np

from edgecnn._optional import require
from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError

__all__ = ["convert_litert_int8"]


def convert_litert_int8(model: Any, card: ModelCard, calibration: np.ndarray, *, source: str = "the model") -> bytes:
    """``model`` (a ``keras.Model``) as a full-int8 TFLite flatbuffer, calibrated on ``calibration``.

    Args:
        model: The Keras model, NHWC float input at the card's size.
        card: Its card: input size, name and the normalization applied to ``calibration``.
        calibration: uint8 NHWC pixels at the card's size.
        source: How error messages name the model (its file, say).

    Raises:
        ArtifactError: if the converter fails.
        MissingDependencyError: without TensorFlow.
    """
    tf = require("tensorflow", "train")
    from edgecnn.runtime.preprocess import normalize_batch

    nhwc = replace(card, layout="nhwc")
    h, w = card.input_size
    with tempfile.TemporaryDirectory() as tmp:
        # A SavedModel freezes Keras 3 variables for the converter; from_concrete_functions
        # leaves READ_VARIABLE ops that fail at conversion time.
        model.export(tmp, format="tf_saved_model", verbose=False,
                     input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32, name=card.input_name)])
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        xs = normalize_batch(calibration, nhwc)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([xs[i : i + 1]] for i in range(len(xs)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        try:
            return converter.convert()
        except Exception as err:  # the converter raises ConverterError, RuntimeError, ... for one cause
            raise ArtifactError(f"TFLite int8 conversion of {source} failed ({type(err).__name__}: {err}).") from err
