"""The export variants, one row each: what ``edgecnn export -q`` can add beside the fp32 model.

Stdlib only (the CLI's ``--help`` reads the choices from here). Each row says the variant's file
name, the sources it can be made from, and whether it needs calibration images; the pipeline and
the CLI take every per-variant fact from this table.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Variant", "VARIANTS", "EXPORT_MODES", "FP32", "variant", "variant_filename",
           "CALIBRATION_METHODS", "CPU_TARGETS", "CPU_TARGET_CHOICES"]

# Source kinds (edgecnn.export.sources.detect_kind): a run directory, a Keras file, a SavedModel
# directory, a TFLite or an ONNX file.
ALL_SOURCES = ("run", "keras", "h5", "savedmodel", "tflite", "onnx")
KERAS_SOURCES = ("run", "keras", "h5")

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
CPU_TARGETS = ("avx2", "vnni", "arm64")
CPU_TARGET_CHOICES = ("auto", *CPU_TARGETS)


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One exported variant.

    Args:
        name: the ``-q`` value and the report's precision (``fp32`` for the base model).
        filename: the file it is written to in the export folder.
        sources: the source kinds it can be made from.
        calibrated: whether it needs calibration images (static int8).
        runtime: the backend its file runs on.
        help: one line for ``--help`` and the docs.
    """

    name: str
    filename: str
    sources: tuple[str, ...] = ALL_SOURCES
    calibrated: bool = False
    runtime: str = "onnxruntime"
    help: str = ""


FP32 = Variant(name="fp32", filename="model.onnx", help="the verified float model (always written)")

VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant(name="int8", filename="model.int8.onnx", calibrated=True,
            help="static int8 (QDQ), activations calibrated on real images"),
    Variant(name="int8-dynamic", filename="model.int8-dynamic.onnx",
            help="int8 weights, activations quantized per call"),
    Variant(name="fp16", filename="model.fp16.onnx", help="float16 weights and activations"),
    Variant(name="litert-int8", filename="model.int8.tflite", sources=KERAS_SOURCES, calibrated=True,
            runtime="litert", help="a .tflite for LiteRT (XNNPack) from a Keras source, full int8 inside"),
)}

EXPORT_MODES = tuple(VARIANTS)


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
