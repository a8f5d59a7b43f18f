"""The variant table (edgecnn.export.variants): one row per -q mode, the export's choice lists, and
cheap to import (the CLI's --help reads it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_table_loads_neither_numpy_nor_onnx_nor_onnxruntime():
    code = ("import sys, edgecnn.export.variants; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'onnx', 'onnxruntime'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_package_still_offers_every_name_of_its_all():
    import edgecnn.export as export

    assert all(getattr(export, name) is not None for name in export.__all__)
    with pytest.raises(AttributeError):
        export.no_such_name  # noqa: B018


@pytest.mark.parametrize(("name", "filename"), [
    ("fp32", "model.onnx"), ("int8", "model.int8.onnx"), ("int8-dynamic", "model.int8-dynamic.onnx"),
    ("fp16", "model.fp16.onnx"), ("litert-int8", "model.int8.tflite"),
])
def test_each_variant_has_its_file(name, filename):
    from edgecnn.export.variants import variant_filename

    assert variant_filename(name) == filename


def test_onnxruntime_makes_the_quantize_modes_and_litert_needs_a_keras_source():
    from edgecnn.errors import ConfigError
    from edgecnn.export.variants import EXPORT_MODES, QUANTIZE_MODES, variant

    assert QUANTIZE_MODES == ("int8", "int8-dynamic", "fp16") and EXPORT_MODES == (*QUANTIZE_MODES, "litert-int8")
    for kind in ("run", "keras", "savedmodel", "tflite", "onnx"):
        variant("int8").check_source(kind)
    variant("litert-int8").check_source("keras")
    with pytest.raises(ConfigError, match=r"litert-int8 converts Keras models with the TFLite converter; this "
                                          r"source is onnx: export from the run directory, \.keras or \.h5 file"):
        variant("litert-int8").check_source("onnx")


def test_each_quantized_variant_has_its_config_type_and_describes_itself():
    """onnxruntime's shape (a config type per mode, one quantize call dispatching on it), not a mode
    string handed around with one config of every mode's options."""
    from edgecnn.export.quant_config import DynamicInt8Config, Fp16Config, QuantizeConfig, StaticInt8Config
    from edgecnn.export.variants import QUANTIZE_MODES, VARIANTS

    assert {m: VARIANTS[m].quantize_config for m in QUANTIZE_MODES} == {
        "int8": StaticInt8Config, "int8-dynamic": DynamicInt8Config, "fp16": Fp16Config}
    assert VARIANTS["litert-int8"].quantize_config is None  # the TFLite converter makes it
    options = QuantizeConfig.for_target("vnni", calibration_method="percentile", exclude_nodes=("conv1",))
    static = options.for_mode("int8", task="detect")
    assert isinstance(static, StaticInt8Config) and static.mode == "int8"
    assert static.op_types == ("Conv", "MatMul", "Gemm")  # the detector default of for_task
    assert static.describe() == {"per_channel": True, "reduce_range": False, "weight_type": "int8", "target": "vnni",
                                 "format": "QDQ", "activation_type": "uint8", "calibration_method": "percentile",
                                 "calibration_samples": 512, "exclude_nodes": ["conv1"],
                                 "exclude_op_types": ["Softmax"], "op_types": ["Conv", "MatMul", "Gemm"],
                                 "percentile": 99.999}
    assert options.for_mode("int8-dynamic").describe() == {"per_channel": True, "reduce_range": False,
                                                          "weight_type": "int8", "target": "vnni"}
    assert options.for_mode("fp16").describe() == {"keep_io_float32": True}
    assert options.static_int8() == options.for_mode("int8")


def test_quantize_model_refuses_a_config_of_no_mode(tmp_path):
    from edgecnn.errors import ConfigError
    from edgecnn.export.quant_config import QuantizeConfig
    from edgecnn.export.quantize import quantize_model

    with pytest.raises(ConfigError, match="QuantizeConfig.for_mode"):
        quantize_model(tmp_path / "a.onnx", tmp_path / "b.onnx", card=None, config=QuantizeConfig())
    with pytest.raises(ConfigError, match="mode 'litert-int8'; choose from int8, int8-dynamic, fp16"):
        QuantizeConfig().for_mode("litert-int8")
