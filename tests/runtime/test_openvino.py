"""The OpenVINO backend of the runtime core, against onnxruntime on the same files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecnn.cli import main
from edgecnn.errors import ProviderError
from edgecnn.runtime import Classifier, default_model_path, load_model

pytest.importorskip("openvino")

FOREIGN = Path(__file__).resolve().parents[1] / "data" / "foreign"


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


def test_fp32_matches_onnxruntime_and_keeps_the_card(pixels):
    ort = Classifier(default_model_path())
    ov = Classifier(default_model_path(), backend="openvino", threads=1)
    assert ov.providers == ["OpenVINO:CPU"] and ov.card == ort.card and ov.info.requested == "openvino:CPU"
    np.testing.assert_allclose(ov.predict_proba(pixels), ort.predict_proba(pixels), atol=1e-5)


def test_int8_qdq_file_and_a_detector_run(pixels):
    int8 = Classifier(default_model_path().with_name("seed_cnn_cifar10.int8.onnx"), backend="openvino")
    assert int8.predict_proba(pixels).shape == (6, 10)
    det = load_model(FOREIGN / "yolov8_shapes.onnx", backend="openvino")
    ref = load_model(FOREIGN / "yolov8_shapes.onnx")
    px = np.random.default_rng(1).integers(0, 256, (1, 160, 160, 3), dtype=np.uint8)
    assert [d.label for d in det.predict(px)[0]] == [d.label for d in ref.predict(px)[0]]


def test_missing_device_and_unknown_backend_are_errors_not_substitutes():
    with pytest.raises(ProviderError, match="OpenVINO has no NPU device here"):
        Classifier(default_model_path(), backend="openvino", device="NPU")
    with pytest.raises(ProviderError, match="Unknown backend 'tvm'"):
        Classifier(default_model_path(), backend="tvm")
    with pytest.raises(ProviderError, match="with --backend openvino"):
        Classifier(default_model_path(), precision="bf16")


def test_bf16_runs_or_says_the_cpu_lacks_it(pixels):
    try:
        clf = Classifier(default_model_path(), backend="openvino", precision="bf16")
    except ProviderError as err:
        assert "lacks bf16 support" in str(err)
        return
    ref = Classifier(default_model_path()).predict_proba(pixels)
    assert np.abs(clf.predict_proba(pixels) - ref).max() < 0.05  # bf16: close, not equal


def test_predict_and_bench_side_by_side(tmp_path):
    res = CliRunner().invoke(main, ["predict", str(FOREIGN.parent.parent / "runtime" / "data" / "tiny_nhwc.onnx"),
                                    "--backend", "openvino", str(_png(tmp_path)), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["providers"] == ["OpenVINO:CPU"]
    res = CliRunner().invoke(main, ["bench", "--backend", "onnxruntime,openvino", "--runs", "3", "--warmup", "0",
                                    "--batch", "1", "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    runners = {r["runner"] for r in json.loads((tmp_path / "b.json").read_text())["results"]}
    assert runners == {"onnxruntime", "openvino", "onnxruntime+pixels", "openvino+pixels"}
    res = CliRunner().invoke(main, ["bench", "--backend", "tvm"])
    assert res.exit_code == 1 and "--backend takes onnxruntime, openvino" in res.output


def _png(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return path
