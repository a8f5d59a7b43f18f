"""Export stage: a run, Keras, SavedModel, TFLite or ONNX model -> verified ONNX with the model card
embedded, quantized variants, Triton.

Importing this package imports nothing: each name of ``__all__`` is loaded from its module on
first use (PEP 562), so ``import edgecnn.export.variants`` (the CLI's ``--help``) loads neither
numpy nor onnx nor onnxruntime. Heavy dependencies (tensorflow, tf2onnx, onnxruntime.quantization)
are imported inside the functions that need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgecnn.export.accuracy_aware import AccuracyAwareConfig, AccuracyAwareResult, accuracy_aware_quantize
    from edgecnn.export.config import ExportConfig
    from edgecnn.export.onnx import DEFAULT_OPSET, convert_keras, embed_card, load_onnx, read_card, save_onnx
    from edgecnn.export.pipeline import export_model, export_onnx_file, export_run
    from edgecnn.export.quant_config import (
        CALIBRATION_METHODS,
        CPU_TARGETS,
        DynamicInt8Config,
        Fp16Config,
        QuantizeConfig,
        StaticInt8Config,
    )
    from edgecnn.export.quantize import quantize_model
    from edgecnn.export.report import ExportReport, VariantResult
    from edgecnn.export.triton import triton_config, write_triton_model
    from edgecnn.export.variants import QUANTIZE_MODES, variant_filename

# name -> the module that defines it
_HOMES = {
    **dict.fromkeys(("AccuracyAwareConfig", "AccuracyAwareResult", "accuracy_aware_quantize"), "accuracy_aware"),
    **dict.fromkeys(("DEFAULT_OPSET", "convert_keras", "embed_card", "load_onnx", "read_card", "save_onnx"), "onnx"),
    **dict.fromkeys(("ExportConfig",), "config"),
    **dict.fromkeys(("export_model", "export_onnx_file", "export_run"), "pipeline"),
    **dict.fromkeys(("QuantizeConfig", "StaticInt8Config", "DynamicInt8Config", "Fp16Config", "CALIBRATION_METHODS",
                     "CPU_TARGETS"), "quant_config"),
    "quantize_model": "quantize",
    **dict.fromkeys(("ExportReport", "VariantResult"), "report"),
    **dict.fromkeys(("triton_config", "write_triton_model"), "triton"),
    **dict.fromkeys(("QUANTIZE_MODES", "variant_filename"), "variants"),
}

__all__ = [
    "DEFAULT_OPSET", "QUANTIZE_MODES", "CALIBRATION_METHODS", "CPU_TARGETS",
    "ExportConfig", "QuantizeConfig", "StaticInt8Config", "DynamicInt8Config", "Fp16Config", "ExportReport",
    "VariantResult",
    "export_model", "export_run", "export_onnx_file", "convert_keras", "quantize_model",
    "embed_card", "read_card", "load_onnx", "save_onnx", "variant_filename",
    "triton_config", "write_triton_model",
    "AccuracyAwareConfig", "AccuracyAwareResult", "accuracy_aware_quantize",
]


def __getattr__(name: str) -> Any:
    """Load ``name`` from its module on first use (then it is a plain attribute of the package).

    Raises:
        AttributeError: for a name that is not in ``__all__`` (a submodule is then imported by the
            import system itself, as ``from edgecnn.export import onnx`` does).
    """
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
