"""Export stage: a run, Keras, SavedModel, TFLite or ONNX model -> verified ONNX with the model card
embedded, quantized variants, Triton.

Heavy dependencies (tensorflow, tf2onnx, onnx, onnxruntime.quantization) are imported inside the
functions that need them, so importing this package is cheap.
"""

from edgecnn.export.accuracy_aware import AccuracyAwareConfig, AccuracyAwareResult, accuracy_aware_quantize
from edgecnn.export.onnx import DEFAULT_OPSET, convert_keras, embed_card, load_onnx, read_card, save_onnx
from edgecnn.export.pipeline import ExportConfig, export_model, export_onnx_file, export_run, variant_filename
from edgecnn.export.quantize import CALIBRATION_METHODS, CPU_TARGETS, QUANTIZE_MODES, QuantizeConfig, quantize_model
from edgecnn.export.report import ExportReport, VariantResult
from edgecnn.export.triton import triton_config, write_triton_model

__all__ = [
    "DEFAULT_OPSET", "QUANTIZE_MODES", "CALIBRATION_METHODS", "CPU_TARGETS",
    "ExportConfig", "QuantizeConfig", "ExportReport", "VariantResult",
    "export_model", "export_run", "export_onnx_file", "convert_keras", "quantize_model",
    "embed_card", "read_card", "load_onnx", "save_onnx", "variant_filename",
    "triton_config", "write_triton_model",
    "AccuracyAwareConfig", "AccuracyAwareResult", "accuracy_aware_quantize",
]
