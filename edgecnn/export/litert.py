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

from edgecnn._optional import quiet_stderr, require
from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError

__all__ = ["convert_litert_int8", "embed_card_tflite", "pixels_card"]


def convert_litert_int8(model: Any, card: ModelCard, calibration: np.ndarray, *, source: str = "the model",
                        float_output: bool = False, pixels_in: bool = False) -> bytes:
    """``model`` (a ``keras.Model``) as a full-int8 TFLite flatbuffer, calibrated on ``calibration``.

    Args:
        model: The Keras model, NHWC float input at the card's size.
        card: Its card: input size, name and the normalization applied to ``calibration``.
        calibration: uint8 NHWC pixels at the card's size.
        source: How error messages name the model (its file, say).
        float_output: float32 output (the converter adds a dequantize op to the graph), as
            ``edgecnn export -q litert-int8`` writes it: exact probabilities, no 1/256 steps that
            tie the top classes; else int8 output. The input is int8 either way: the runtime
            maps uint8 pixels straight into it (:meth:`~edgecnn.runtime.backends.litert.LiteRtSession.pixel_session`).
        pixels_in: put the card's normalization (channel order, ``(x - mean) / std``) inside the
            model, in front of it, so that the input is the 0-255 pixel itself: calibrated on raw
            pixels with 0 and 255 both seen, the int8 input's scale is 1 and its zero point -128,
            and the runtime's whole preprocessing is ``pixel ^ 0x80``. The file's card must then
            say mean 0, std 1 (:func:`pixels_card`).

    Raises:
        ArtifactError: if the converter fails.
        MissingDependencyError: without TensorFlow.
    """
    tf = require("tensorflow", "train")
    from edgecnn.runtime.preprocess import normalize_batch

    nhwc = replace(card, layout="nhwc")
    h, w = card.input_size
    if pixels_in:
        model = _with_normalization(model, card)
        xs = np.asarray(calibration, dtype=np.float32).copy()
        # the input range the converter sees is the pixel range: 0 and 255 present, so scale 1, zero point -128
        xs[0].flat[0], xs[0].flat[1] = 0.0, 255.0
    else:
        xs = normalize_batch(calibration, nhwc)
    # The SavedModel writer's "Assets written to" and the converter's C++ "fully_quantize: 0, ..."
    # lines reached the terminal on every export; failures still arrive as exceptions.
    with tempfile.TemporaryDirectory() as tmp, quiet_stderr():
        # A SavedModel freezes Keras 3 variables for the converter; from_concrete_functions
        # leaves READ_VARIABLE ops that fail at conversion time.
        model.export(tmp, format="tf_saved_model", verbose=False,
                     input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32, name=card.input_name)])
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
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


def pixels_card(card: ModelCard) -> ModelCard:
    """The card of a ``pixels_in`` file: the normalization it records is inside the model, its
    input the RGB pixel itself (mean 0, std 1, RGB), the original kept in ``export``."""
    inside = {"mean": list(card.mean), "std": list(card.std), "channel_order": card.channel_order,
              "normalization": card.normalization}
    return card.replace(mean=(0.0,) * card.channels, std=(1.0,) * card.channels, channel_order="RGB",
                        normalization=f"in-model ({card.normalization})", layout="nhwc",
                        export={**card.export, "normalization_in_model": inside})


def _with_normalization(model: Any, card: ModelCard) -> Any:
    """``model`` behind a layer that maps 0-255 RGB pixels to its normalized input."""
    keras = require("keras", "train")

    inv = np.asarray([1.0 / s for s in card.std], dtype=np.float32)
    offset = (-np.asarray(card.mean, dtype=np.float32) * inv).astype(np.float32)
    h, w = card.input_size
    pixels = keras.Input((h, w, card.channels), name=card.input_name)
    x = pixels
    if card.channels == 3 and card.channel_order == "BGR":
        x = keras.layers.Lambda(lambda t: keras.ops.flip(t, axis=-1), name="edgecnn_rgb_to_bgr")(x)
    x = keras.layers.Rescaling(scale=inv.reshape(1, 1, 1, -1), offset=offset.reshape(1, 1, 1, -1),
                               name="edgecnn_normalize")(x)
    return keras.Model(pixels, model(x), name=f"{model.name}_from_pixels")


def embed_card_tflite(tflite: bytes, card: ModelCard) -> bytes:
    """The flatbuffer with ``card`` as a ``metadata`` entry under :data:`~edgecnn.card.ONNX_METADATA_KEY`
    (read back by :func:`edgecnn.runtime.backends.litert.read_tflite_metadata`); an older card is replaced."""
    require("ai_edge_litert", "litert")
    import flatbuffers  # type: ignore[import-untyped]  # no stubs, no py.typed
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
