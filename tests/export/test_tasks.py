"""Export -> int8 -> predict for detectors and segmenters made by other tools, judged by their
task metric against fp32 (mAP@0.5 of the boxes, mIoU of the masks) on unlabelled images."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecnn.cli import main

pytestmark = pytest.mark.export
pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[2]
FOREIGN = ROOT / "tests" / "data" / "foreign"


def _scenes(folder: Path, size: int, count: int = 40) -> Path:
    spec = importlib.util.spec_from_file_location("make_foreign_models", ROOT / "tools" / "make_foreign_models.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)  # numpy + Pillow only at import; torch is imported by its makers
    tool.write_scenes(folder, count, size, seed=7)
    return folder


def _export(args: list[str]) -> dict:
    res = CliRunner().invoke(main, ["export", *args])
    assert res.exit_code == 0, res.output
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "export_report.json").read_text())


def test_detector_int8_keeps_the_fp32_boxes(tmp_path):
    report = _export([str(FOREIGN / "yolov8_shapes.onnx"), "-q", "int8", "--max-accuracy-drop", "5",
                      "--calibration-data", str(_scenes(tmp_path / "scenes", 160)), "--out", str(tmp_path / "det")])
    int8 = next(v for v in report["variants"] if v["precision"] == "int8")
    assert int8["metric"] == "map50" and int8["metric_value"] >= 0.95 and int8["passed"]
    assert int8["settings"]["op_types"] == ["Conv", "MatMul", "Gemm"]
    fp32 = next(v for v in report["variants"] if v["precision"] == "fp32")
    assert int8["size_bytes"] < 0.5 * fp32["size_bytes"]
    res = CliRunner().invoke(main, ["predict", str(tmp_path / "det" / "model.int8.onnx"),
                                    str(tmp_path / "scenes" / "scene0000.png"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["task"] == "detect" and data["predictions"][0]["detections"]


def test_segmenter_int8_keeps_the_fp32_masks(tmp_path):
    report = _export([str(FOREIGN / "lraspp_shapes.onnx"), "--task", "segment", "--preprocess", "imagenet",
                      "--labels", "background,red,green,blue", "-q", "int8", "--max-accuracy-drop", "5",
                      "--calibration-data", str(_scenes(tmp_path / "scenes", 128)), "--out", str(tmp_path / "seg")])
    int8 = next(v for v in report["variants"] if v["precision"] == "int8")
    assert int8["metric"] == "miou" and int8["metric_value"] >= 0.95 and int8["passed"]
    res = CliRunner().invoke(main, ["predict", str(tmp_path / "seg" / "model.int8.onnx"),
                                    str(tmp_path / "scenes" / "scene0001.png"), "--json"])
    assert res.exit_code == 0, res.output
    seg = json.loads(res.stdout)["predictions"][0]["segmentation"]
    assert seg["width"] == 128 and {c["label"] for c in seg["classes"]} <= {"background", "red", "green", "blue"}


def test_end2end_detector_int8_is_judged_by_map(tmp_path):
    """The YOLOv8 file with its NMS in the graph ([1, 100, 6] rows, tools/make_nms_models.py): the
    int8 variant is judged by mAP@0.5 against the fp32 rows, and its export still answers with boxes."""
    report = _export([str(FOREIGN / "yolov8_shapes_end2end.onnx"), "-q", "int8", "--max-accuracy-drop", "5",
                      "--calibration-data", str(_scenes(tmp_path / "scenes", 160)), "--out", str(tmp_path / "e2e")])
    int8 = next(v for v in report["variants"] if v["precision"] == "int8")
    assert int8["metric"] == "map50" and int8["metric_value"] >= 0.9 and int8["passed"], int8
    res = CliRunner().invoke(main, ["predict", str(tmp_path / "e2e" / "model.int8.onnx"),
                                    str(tmp_path / "scenes" / "scene0000.png"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["task"] == "detect" and data["predictions"][0]["detections"]


def test_task_metric_of_detectors_with_nms_in_the_graph():
    from edgecnn.card import ModelCard
    from edgecnn.export.verify import task_agreement

    e2e = ModelCard(name="e", task="detect", input_size=(64, 64), output_kind="end2end")
    rows = np.zeros((2, 10, 6), np.float32)
    rows[:, 0] = [5, 5, 25, 25, 0.9, 1]
    rows[:, 1] = [30, 30, 60, 60, 0.8, 0]
    assert task_agreement("detect", [rows], [rows], e2e).value == 1.0
    moved = rows.copy()
    moved[:, :2, [0, 2]] = moved[:, :2, [2, 0]] + [[30, 30]]  # both boxes elsewhere
    assert task_agreement("detect", [rows], [moved], e2e).value == 0.0
    ssd = ModelCard(name="s", task="detect", input_size=(64, 64), output_kind="boxes-yxyx")
    boxes = np.tile(np.array([[0.1, 0.1, 0.4, 0.3], [0.5, 0.5, 0.9, 0.9]], np.float32), (2, 1, 1))
    classes, scores, count = np.array([[2.0, 0.0]] * 2), np.array([[0.9, 0.8]] * 2), np.array([2.0, 2.0])
    assert task_agreement("detect", [boxes, classes, scores, count], [boxes, classes, scores, count], ssd).value == 1.0
    fewer = [boxes, classes, scores, np.array([1.0, 1.0])]  # the variant lost its second box
    assert task_agreement("detect", [boxes, classes, scores, count], fewer, ssd).value == pytest.approx(0.5)


def test_task_metrics_of_the_guard():
    from edgecnn.card import ModelCard
    from edgecnn.export.verify import task_agreement

    rng = np.random.default_rng(0)
    det = ModelCard(name="d", task="detect", class_names=("a", "b"), input_size=(64, 64))
    out = np.zeros((2, 6, 84), np.float32)
    out[:, :4, 0] = [[20, 20, 10, 10]] * 2  # cx, cy, w, h
    out[:, 4, 0] = 0.9
    assert task_agreement("detect", [out], [out], det).value == 1.0
    moved = out.copy()
    moved[:, 0, 0] = 40  # the box went elsewhere: no overlap with the fp32 box
    assert task_agreement("detect", [out], [moved], det).value == 0.0
    seg = ModelCard(name="s", task="segment", class_names=("bg", "fg"), input_size=(8, 8), layout="nchw")
    logits = rng.normal(size=(2, 2, 8, 8)).astype(np.float32)
    assert task_agreement("segment", [logits], [logits], seg).value == 1.0
    assert task_agreement("segment", [logits], [-logits], seg).value == 0.0


@pytest.mark.slow
@pytest.mark.tf
def test_keras_applications_model_exports_with_its_preset(tmp_path):
    """A keras.applications MobileNetV2 (random weights: nothing can be downloaded here), saved by
    Keras as a user would, exported with the preprocessing preset of that family."""
    from edgecnn._optional import require

    keras = require("keras", "train")
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=3)
    model.save(tmp_path / "mnv2.keras")
    scenes = _scenes(tmp_path / "photos", 32, count=24)
    report = _export([str(tmp_path / "mnv2.keras"), "--preprocess", "tf", "--labels", "a,b,c", "-q", "fp16",
                      "--calibration-data", str(scenes), "--out", str(tmp_path / "out")])
    fp32 = report["variants"][0]
    assert report["task"] == "classify" and fp32["max_abs_diff"] < 1e-4
    from edgecnn.runtime import Classifier

    clf = Classifier(tmp_path / "out" / "model.onnx")
    assert clf.card.normalization == "preset:tf" and clf.card.mean == (127.5, 127.5, 127.5)
    assert clf.labels == ["a", "b", "c"]


def test_reexport_into_the_same_folder_leaves_no_stale_variant(tmp_path):
    """Issue 11: export A -q int8 --out X, then export B --out X, left A's int8 beside B's model;
    a killed export's staging folder stayed forever."""
    scenes = _scenes(tmp_path / "photos", 160, count=16)
    out = tmp_path / "X"
    _export([str(FOREIGN / "yolov8_shapes.onnx"), "-q", "int8", "--max-accuracy-drop", "50", "--calibration-data",
             str(scenes), "--out", str(out)])
    assert (out / "model.int8.onnx").is_file()
    dead = out / ".export-staging-999999999-abc"  # no such process
    dead.mkdir()
    (dead / "model.onnx").write_bytes(b"half")
    _export([str(FOREIGN / "lraspp_shapes.onnx"), "--task", "segment", "--calibration-data",
             str(_scenes(tmp_path / "seg", 128, count=8)), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "export_report.md", "model.onnx"]
