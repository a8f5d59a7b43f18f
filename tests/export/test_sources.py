"""`edgecnn export SOURCE` on models made by other tools: Keras (.keras, .h5), a SavedModel, a
.tflite, ONNX from tf2onnx (opset 11, NCHW), a 1-channel classifier, an Ultralytics-style
detector graph; unlabelled calibration folders; bad inputs; evaluate and gradcam on a plain
Keras file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecnn.cli import main
from tests.export.conftest import yolo_like_onnx

pytestmark = [pytest.mark.tf, pytest.mark.export]

LABELS = "airplane,automobile,bird"


def _run(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)])


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def _one_line_error(result, match):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and match in lines[-1], result.output
    assert "Traceback" not in result.output


def _report(out):
    return json.loads((out / "export_report.json").read_text())


def _card(path):
    from edgecnn.export import read_card

    return read_card(path)


def _opset(path):
    import onnx

    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


@pytest.mark.slow
@pytest.mark.parametrize("name, kind", [("mine.keras", "keras"), ("mine.h5", "keras"),
                                        ("mine_savedmodel", "savedmodel"), ("mine.tflite", "tflite")])
def test_tensorflow_sources_export_verified(tmp_path, foreign, name, kind):
    out = tmp_path / "out"
    _ok(_run(foreign[name], "--out", out, "--calibration-data", foreign["labelled.npz"], "--preprocess", "unit",
             "--labels", LABELS, "-q", "int8", "--max-accuracy-drop", "10"))
    report = _report(out)
    assert report["source_kind"] == kind and report["task"] == "classify" and report["status"] == "ok"
    assert report["parity"]["top1_agreement"] == 1.0 and report["parity"]["max_abs_diff"] <= 1e-4
    fp32, int8 = report["variants"]
    # The fp32 ONNX scores exactly what the Keras model scores on the same 150 images.
    assert fp32["accuracy"] == pytest.approx(json.loads(foreign["accuracy.json"].read_text())["mine"], abs=1e-9)
    assert int8["metric"] == "top1_agreement" and int8["accuracy"] is not None
    card = _card(out / "model.int8.onnx")
    assert card.class_names == ("airplane", "automobile", "bird") and card.normalization == "preset:unit"
    assert card.output_kind == "probabilities" and card.export["source_kind"] == kind
    assert card.input_size == (32, 32) and card.layout == "nhwc" and card.precision == "int8"


@pytest.mark.slow
def test_keras_source_exported_as_nchw(tmp_path, foreign):
    out = tmp_path / "out"
    _ok(_run(foreign["mine.keras"], "--out", out, "--calibration-data", foreign["photos"], "--preprocess", "unit",
             "--layout", "nchw", "--labels", LABELS))
    card = _card(out / "model.onnx")
    assert card.layout == "nchw" and card.input_shape() == (None, 3, 32, 32)
    assert _report(out)["parity"]["max_abs_diff"] <= 1e-4


def test_onnx_at_opset_11_gets_a_loadable_per_channel_int8(tmp_path, foreign):
    from edgecnn.runtime import Classifier

    out = tmp_path / "out"
    _ok(_run(foreign["mine_opset11.onnx"], "--out", out, "--calibration-data", foreign["photos"], "--preprocess",
             "unit", "-q", "int8", "-q", "int8-dynamic", "--max-accuracy-drop", "10"))
    assert _opset(out / "model.onnx") == 11  # the fp32 file stays as given
    for name in ("model.int8.onnx", "model.int8-dynamic.onnx"):
        assert _opset(out / name) == 13
        clf = Classifier(out / name)
        assert clf.predict_proba(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 3)
    assert [v["settings"]["opset"] for v in _report(out)["variants"]] == [11, 13, 13]


def test_opset_flag_converts_an_onnx_source(tmp_path, foreign):
    out = tmp_path / "out"
    _ok(_run(foreign["mine_opset11.onnx"], "--out", out, "--calibration-data", foreign["photos"], "--preprocess",
             "unit", "--opset", "13"))
    assert _opset(out / "model.onnx") == 13
    card = _card(out / "model.onnx")
    assert card.export["opset"] == 13 and card.export["source_opset"] == 11
    assert _report(out)["parity"]["max_abs_diff"] <= 1e-5  # checked against the opset-11 original


def test_opset_upgrade_failure_names_the_opset(tmp_path, foreign, monkeypatch):
    import onnx

    from edgecnn.card import ModelCard
    from edgecnn.errors import ArtifactError
    from edgecnn.export import QuantizeConfig, quantize_model

    def refuse(model, target):
        raise RuntimeError("No adapter for Conv from 11 to 13")

    monkeypatch.setattr(onnx.version_converter, "convert_version", refuse)
    card = ModelCard(name="m", class_names=("a", "b", "c"), input_size=(32, 32), input_name="input")
    with pytest.raises(ArtifactError, match=r"opset 11 and per-channel int8 .* needs opset 13.*No adapter for Conv"):
        quantize_model(foreign["mine_opset11.onnx"], tmp_path / "q.onnx", card=card,
                       config=QuantizeConfig().for_mode("int8-dynamic"))


def test_nchw_onnx_layout_read_from_the_graph(tmp_path, foreign):
    out = tmp_path / "out"
    _ok(_run(foreign["mine_nchw.onnx"], "--out", out, "--calibration-data", foreign["labelled.npz"],
             "--preprocess", "unit"))
    card = _card(out / "model.onnx")
    assert card.layout == "nchw" and card.channels == 3 and card.input_size == (32, 32)
    assert card.class_names == ("0", "1", "2")  # the .npz names no classes: assumed, and said so
    accuracy = json.loads(foreign["accuracy.json"].read_text())["mine"]
    assert _report(out)["variants"][0]["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert "has no model card; assuming labels 0..2" in _report(out)["assumed"]


@pytest.mark.slow
def test_grayscale_classifier_exports(tmp_path, foreign):
    out = tmp_path / "out"
    _ok(_run(foreign["gray.keras"], "--out", out, "--calibration-data", foreign["labelled.npz"], "--preprocess",
             "unit", "--labels", LABELS, "-q", "int8", "--max-accuracy-drop", "10"))
    card = _card(out / "model.int8.onnx")
    assert card.channels == 1 and card.mean == (0.0,) and card.std == (255.0,)
    assert card.input_shape() == (None, 32, 32, 1)
    accuracy = json.loads(foreign["accuracy.json"].read_text())["gray"]
    assert _report(out)["variants"][0]["accuracy"] == pytest.approx(accuracy, abs=1e-9)


def test_unlabelled_folder_calibrates_and_is_judged_by_agreement(tmp_path, foreign):
    out = tmp_path / "out"
    result = _ok(_run(foreign["mine.keras"], "--out", out, "--calibration-data", foreign["photos"],
                      "--preprocess", "unit", "--labels", LABELS, "-q", "int8", "--max-accuracy-drop", "10"))
    report = _report(out)
    assert report["test_set"] == {"description": report["test_set"]["description"], "images": 48,
                                  "labeled": False, "shared_with_calibration": True}
    int8 = report["variants"][1]
    assert int8["accuracy"] is None and int8["accuracy_delta_pp"] is None
    assert int8["metric"] == "top1_agreement" and 0.9 <= int8["metric_value"] <= 1.0
    assert "agreement, not accuracy" in int8["guard"]
    md = (out / "export_report.md").read_text()
    assert "share the same 48 images" in md and "top-1 agreement with fp32 (no labels)" in md
    assert "share the same 48 images" in result.output


def test_ultralytics_metadata_detector_is_not_verified_as_a_classifier(tmp_path, foreign):
    src = yolo_like_onnx(tmp_path / "yolo.onnx", metadata={"imgsz": "[64, 64]", "names": "{0: 'cat', 1: 'dog'}",
                                                            "task": "detect", "stride": "32", "author": "Ultralytics"})
    out = tmp_path / "out"
    # Random weights: its int8 boxes are judged by mAP@0.5 against fp32 with a loose budget.
    result = _ok(_run(src, "--out", out, "--calibration-data", foreign["photos"], "-q", "int8",
                      "--max-accuracy-drop", "5"))
    assert "assuming" not in result.output  # everything came from the metadata
    card = _card(out / "model.int8.onnx")
    assert (card.task, card.output_kind, card.class_names) == ("detect", "yolov8", ("cat", "dog"))
    assert (card.input_size, card.layout, card.resize, card.stride) == ((64, 64), "nchw", "letterbox", 32)
    assert card.normalization == "ultralytics" and card.std == (255.0, 255.0, 255.0)
    report = _report(out)
    assert report["task"] == "detect" and report["parity"]["top1_agreement"] is None
    assert report["parity"]["max_abs_diff"] <= 1e-5 and report["variants"][0]["top1_agreement"] is None


@pytest.mark.parametrize("strides, task, kind", [((8, 16, 32), "detect", "yolov8"), ((8, 16), "raw", "raw")])
def test_task_read_from_output_shapes(tmp_path, foreign, strides, task, kind):
    """No metadata: a [1, 4+C, anchors] output at strides 8/16/32 is a YOLOv8 detector; an output
    whose last axis does not add up to those anchors is not a classifier either: raw."""
    src = yolo_like_onnx(tmp_path / "m.onnx", strides=strides)
    out = tmp_path / "out"
    _ok(_run(src, "--out", out, "--calibration-data", foreign["photos"]))
    card = _card(out / "model.onnx")
    assert (card.task, card.output_kind) == (task, kind)
    if task == "raw":
        assert "task raw for outputs [1, 6, 80] (pass --task classify|detect|segment)" in _report(out)["assumed"]


def test_chance_level_fp32_fails_and_names_the_preprocessing_flags(tmp_path, foreign):
    out = tmp_path / "out"
    result = _run(foreign["mine.keras"], "--out", out, "--calibration-data", foreign["labelled.npz"],
                  "--mean", "255,255,255", "--std", "1,1,1", "--labels", LABELS)
    _one_line_error(result, "--preprocess/--mean/--std/--layout/--channels")
    assert "at chance level (33.3% for 3 classes)" in result.output
    assert not list(out.glob("*.onnx")) and _report(out)["status"] == "failed"


def test_std_on_the_unit_scale_warns(caplog):
    from edgecnn.presets import parse_overrides

    with caplog.at_level(logging.WARNING):
        overrides = parse_overrides(mean="0.485,0.456,0.406", std="0.229,0.224,0.225")
    assert overrides.std == (0.229, 0.224, 0.225)
    assert "0-1 units were probably passed" in caplog.text and "--std" in caplog.text


def _dynamic_hw_onnx(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((3, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("Softmax", ["f"], ["p"])]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 3])], [w])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("case, match", [
    ("corrupt.keras", "Cannot load"),
    ("corrupt.h5", "Cannot load"),
    ("corrupt.tflite", "Cannot read"),
    ("corrupt.onnx", "not a valid ONNX model"),
    ("model.pt", "unknown model format '.pt'"),
    ("emptydir", "No model card (card.json) or SavedModel"),
    ("dynamic.onnx", "pass --input-size HxW"),
    ("no-data-int8", "pass --calibration-data DIR_OR_NPZ"),  # fp32 alone needs none (test_quantize_fixes)
    ("bad-labels", "3 classes but 2 labels"),
    ("bad-mean", "--mean expects 1 or 3 comma-separated numbers"),
])
def test_bad_sources_fail_in_one_line_and_leave_nothing(tmp_path, foreign, case, match):
    args = ["--calibration-data", foreign["photos"]]
    if case.startswith("corrupt") or case == "model.pt":
        src = tmp_path / case
        src.write_bytes(b"\x08\x07 not a model at all" * 20)
    elif case == "emptydir":
        src = tmp_path / case
        src.mkdir()
    elif case == "dynamic.onnx":
        src = _dynamic_hw_onnx(tmp_path / case)
    else:
        src = foreign["mine.keras"]
        args = {"no-data-int8": ["-q", "int8"], "bad-labels": args + ["--labels", "cat,dog"],
                "bad-mean": args + ["--mean", "1,2", "--std", "1,1,1"]}[case]
    out = tmp_path / "out"
    _one_line_error(_run(src, "--out", out, *args), match)
    assert not out.exists()


def test_evaluate_a_plain_keras_file(tmp_path, foreign):
    result = CliRunner().invoke(main, ["evaluate", str(foreign["mine.keras"]), "--data", str(foreign["labelled"]),
                                       "--preprocess", "unit", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "evaluation.json").read_text())
    assert metrics["class_names"] == ["airplane", "automobile", "bird"] and metrics["num_test"] > 0
    assert metrics["test_accuracy"] > 0.4
    # issue 21 §3: a folder without test/ was evaluated on a silent 10% split; now on all its images, said
    n = sum(1 for p in Path(foreign["labelled"]).rglob("*.png"))
    assert metrics["num_test"] == n and metrics["evaluated_on"] == f"all {n} images of labelled (it has no test split)"
    assert metrics["evaluated_on"] in result.output


def test_evaluate_a_plain_keras_file_without_data_names_the_flag(tmp_path, foreign):
    result = CliRunner().invoke(main, ["evaluate", str(foreign["mine.keras"]), "--out", str(tmp_path)])
    assert result.exit_code == 1 and "pass --data PATH" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("model", ["mine.keras", "gray.keras"])
def test_gradcam_on_a_plain_keras_file(tmp_path, foreign, model):
    image = foreign["photos"] / "000.png"
    result = CliRunner().invoke(main, ["gradcam", str(foreign[model]), str(image), "--out", str(tmp_path),
                                       "--preprocess", "unit", "--labels", LABELS])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "000.gradcam.png").is_file()
    assert result.output.split(":")[1].split()[0] in LABELS.split(",")


def _two_output_onnx(path):
    """A face-detector-shaped graph: boxes [1, A, 4] and scores [1, A, 2] from one backbone conv."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(0, 0.05, (6, 3, 8, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 6, -1], np.int64), "shape"),
             numpy_helper.from_array(np.array([4, 2], np.int64), "split")]
    nodes = [helper.make_node("Conv", ["images", "w"], ["c"], strides=[8, 8]),
             helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Split", ["t", "split"], ["boxes", "logits"], axis=2),
             helper.make_node("Softmax", ["logits"], ["scores"], axis=2)]
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])
    graph = helper.make_graph(nodes, "faces", [image],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 64, 4]),
                               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 64, 2])], inits)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_two_output_model_is_verified_output_by_output(tmp_path, foreign):
    src = _two_output_onnx(tmp_path / "faces.onnx")
    out = tmp_path / "out"
    _ok(_run(src, "--out", out, "--calibration-data", foreign["photos"], "--preprocess", "imagenet", "-q", "fp16"))
    report = _report(out)
    assert report["task"] == "raw" and report["parity"]["outputs"] == 2 and report["parity"]["top1_agreement"] is None
    fp16 = report["variants"][1]
    # A raw model is judged output by output: SQNR against fp32, and the softmax output's choices.
    assert fp16["passed"] and fp16["metric"] == "output_cosine" and fp16["metric_value"] > 0.9999
    names = [c["name"] for c in fp16["verdict"]["checks"]]
    assert names == ["SQNR of output 0", "SQNR of output 1", "expected arg-max cost of output 1 (2 choices)"]
    assert all(c["outcome"] == "kept" for c in fp16["verdict"]["checks"][:2])
    assert 0 < fp16["max_abs_diff"] < 1e-2 and _card(out / "model.fp16.onnx").task == "raw"
    assert "- fp16: SQNR of output 0" in (out / "export_report.md").read_text()


def test_onnxruntime_load_error_shows_its_cause_in_one_line(tmp_path, foreign, monkeypatch):
    """Without the opset upgrade, a per-channel int8 model at opset 11 cannot load: the one-line
    error carries onnxruntime's own reason, not only with --debug."""
    from edgecnn.export import quantize

    monkeypatch.setattr(quantize, "_per_channel_opset", lambda path, tmp, config: path)
    out = tmp_path / "out"
    result = _run(foreign["mine_opset11.onnx"], "--out", out, "--calibration-data", foreign["photos"],
                  "--preprocess", "unit", "-q", "int8")
    _one_line_error(result, "Unrecognized attribute: axis for operator DequantizeLinear")
    assert "onnxruntime cannot load the int8 model (opset 11)" in result.output
    assert not (out / "model.int8.onnx").exists()


def test_an_int8_variant_with_nothing_quantized_fails(tmp_path, foreign):
    """onnxruntime.quantization leaves this graph's Conv in float without a word: the export says so
    instead of writing a float model named int8."""
    src = _two_output_onnx(tmp_path / "faces.onnx")
    out = tmp_path / "out"
    _one_line_error(_run(src, "--out", out, "--calibration-data", foreign["photos"], "--preprocess", "imagenet",
                         "-q", "int8"), "quantized no node of this model to int8 (its ops: Conv x1")
    assert (out / "model.onnx").is_file() and not (out / "model.int8.onnx").exists()
