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
