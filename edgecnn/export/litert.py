"""Keras -> LiteRT (TFLite) with full-int8 post-training quantization.

int8 weights, activations and input (and output, unless asked for float), calibrated on
representative images: ``edgecnn export -q litert-int8``'s file, and the LiteRT twin that
``edgecnn bench --compare tflite`` times next to the ONNX int8 model. TensorFlow (the
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

__all__ = ["convert_litert_int8", "embed_card_tflite"]


def convert_litert_int8(model: Any, card: ModelCard, calibration: np.ndarray, *, source: str = "the model",
                        float_output: bool = False) -> bytes:
    """``model`` (a ``keras.Model``) as a full-int8 TFLite flatbuffer, calibrated on ``calibration``.

    Args:
        model: The Keras model, NHWC float input at the card's size.
        card: Its card: input size, name and the normalization applied to ``calibration``.
        calibration: uint8 NHWC pixels at the card's size.
        source: How error messages name the model (its file, say).
        float_output: float32 output (the converter adds a dequantize op to the graph), as
            ``edgecnn export -q litert-int8`` writes it: exact probabilities, no 1/256 steps that
            tie the top classes; else int8 output. The input is int8 either way: the runtime
            maps uint8 pixels straight into it (:meth:`~edgecnn.runtime.litert_backend.LiteRtSession.pixel_session`).

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
        if not float_output:
            converter.inference_output_type = tf.int8
        try:
            return converter.convert()
        except Exception as err:  # the converter raises ConverterError, RuntimeError, ... for one cause
            raise ArtifactError(f"TFLite int8 conversion of {source} failed ({type(err).__name__}: {err}).") from err


def embed_card_tflite(tflite: bytes, card: ModelCard) -> bytes:
    """The flatbuffer with ``card`` as a ``metadata`` entry under :data:`~edgecnn.card.ONNX_METADATA_KEY`
    (read back by :func:`edgecnn.runtime.litert_backend.read_tflite_metadata`); an older card is replaced."""
    require("ai_edge_litert", "litert")
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    from edgecnn.card import ONNX_METADATA_KEY

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(card.to_json().encode("utf-8"), dtype=np.uint8)
    model.buffers = [*(model.buffers or []), buffer]
    entry = schema.MetadataT()
    entry.name = ONNX_METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    keep = [m for m in (model.metadata or []) if (m.name.decode() if isinstance(m.name, bytes) else m.name)
            != ONNX_METADATA_KEY]
    model.metadata = [*keep, entry]
    builder = flatbuffers.Builder(len(tflite) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
