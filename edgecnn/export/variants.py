"""The export variants, one row each: what ``edgecnn export -q`` can add beside the fp32 model,
and the export's other choice lists (source kinds, guard policies, test-time augmentation; the
quantization ones are in :mod:`edgecnn.export.quant_config`).

Stdlib only (the CLI's ``--help`` reads the choices from here). Each row says the variant's file
name, the sources it can be made from, whether it needs calibration images, what runs it and the
config type :func:`edgecnn.export.quantize.quantize_model` takes for it; the pipeline and the CLI
take every per-variant fact from this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecnn.errors import ConfigError
from edgecnn.export.quant_config import DynamicInt8Config, Fp16Config, StaticInt8Config

__all__ = ["Variant", "VARIANTS", "EXPORT_MODES", "QUANTIZE_MODES", "FP32", "variant", "variant_filename",
           "SOURCE_KINDS", "KERAS_SOURCES", "GUARD_POLICIES", "DEFAULT_MIN_SQNR_DB", "EXPORT_TTA"]

# Source kinds (edgecnn.export.sources.detect_kind): a run directory, a Keras file (.keras, .h5), a
# SavedModel directory, a TFLite or an ONNX file.
SOURCE_KINDS = ("run", "keras", "savedmodel", "tflite", "onnx")
KERAS_SOURCES = ("run", "keras")  # a Keras model to load: what --tta, --qat-epochs and LiteRT start from
_SOURCE_WORDS = {"run": "the run directory", "keras": ".keras or .h5 file", "savedmodel": "SavedModel directory",
                 "tflite": ".tflite file", "onnx": ".onnx file"}

# What a variant gets when the 95% interval of its loss straddles the budget (edgecnn.export.guard):
# lenient passes it with a note, strict refuses it.
GUARD_POLICIES = ("lenient", "strict")
DEFAULT_MIN_SQNR_DB = 20.0  # models without a task head: the least SQNR (dB) each output of a variant keeps
EXPORT_TTA = ("none", "flip")  # flip: test-time augmentation inside the graph (edgecnn.export.tta)


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One exported variant.

    Args:
        name: the ``-q`` value and the report's precision (``fp32`` for the base model).
        filename: the file it is written to in the export folder.
        sources: the source kinds it can be made from.
        why_sources: why only those (in the error for another source).
        calibrated: whether it needs calibration images (static int8).
        runtime: the backend its file runs on.
        quantize_config: the config type :func:`edgecnn.export.quantize.quantize_model` takes for
            it (None: not made by onnxruntime.quantization).
        help: one line for ``--help`` and the docs.
    """

    name: str
    filename: str
    sources: tuple[str, ...] = SOURCE_KINDS
    why_sources: str = ""
    calibrated: bool = False
    runtime: str = "onnxruntime"
    quantize_config: type[StaticInt8Config] | type[DynamicInt8Config] | type[Fp16Config] | None = None
    help: str = ""

    def check_source(self, kind: str) -> None:
        """Refuse a source kind this variant cannot be made from.

        Raises:
            ConfigError: naming the sources it takes.
        """
        if kind not in self.sources:
            allowed = ", ".join(_SOURCE_WORDS[k] for k in self.sources)
            raise ConfigError(f"{self.name} {self.why_sources}; this source is {kind}: export from {allowed} "
                              "instead.")


FP32 = Variant(name="fp32", filename="model.onnx", help="the verified float model (always written)")

VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant(name="int8", filename="model.int8.onnx", calibrated=True, quantize_config=StaticInt8Config,
            help="static int8 (QDQ), activations calibrated on real images"),
    Variant(name="int8-dynamic", filename="model.int8-dynamic.onnx", quantize_config=DynamicInt8Config,
            help="int8 weights, activations quantized per call"),
    Variant(name="fp16", filename="model.fp16.onnx", quantize_config=Fp16Config,
            help="float16 weights and activations"),
    Variant(name="litert-int8", filename="model.int8.tflite", sources=KERAS_SOURCES, calibrated=True,
            why_sources="converts Keras models with the TFLite converter", runtime="litert",
            help="a .tflite for LiteRT (XNNPack) from a Keras source, full int8 inside"),
)}

EXPORT_MODES = tuple(VARIANTS)
# The modes onnxruntime.quantization makes from the fp32 ONNX file (edgecnn.export.quantize).
QUANTIZE_MODES = tuple(name for name, v in VARIANTS.items() if v.quantize_config is not None)


def variant(name: str) -> Variant:
    """The row of ``name`` (``fp32`` included).

    Raises:
        KeyError: for a name not in the table (callers validate user input against
            :data:`EXPORT_MODES` first).
    """
    return FP32 if name == FP32.name else VARIANTS[name]


def variant_filename(name: str) -> str:
    """``model.onnx`` for fp32, ``model.<name>.onnx`` for a variant, ``model.int8.tflite`` for LiteRT's."""
    return variant(name).filename
