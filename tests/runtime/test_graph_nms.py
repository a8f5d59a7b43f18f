"""Detectors that decode and suppress inside their own graph (issue 20 §2): the ``end2end``
[N, K, 6] rows of Ultralytics' ``export nms=True`` and the separate boxes/scores/classes of
TensorFlow's combined NMS (through tf2onnx) and TFLite's ``TFLite_Detection_PostProcess``, all made by
tools/make_nms_models.py from real foreign tools (tests/data/foreign/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from edgecnn.card import ModelCard
from edgecnn.cli import main
from edgecnn.presets import ModelOverrides
from edgecnn.runtime.heads import Detector, box_iou

FOREIGN = Path(__file__).parents[1] / "data" / "foreign"
YOLOV8 = FOREIGN / "yolov8_shapes.onnx"
END2END = FOREIGN / "yolov8_shapes_end2end.onnx"
TFNMS = FOREIGN / "tfnms_tiny.onnx"
SSD = FOREIGN / "ssd_tiny.tflite"


def shapes_photo(path: Path, size: tuple[int, int] = (300, 150)) -> Path:
    """A wide photo (not the model's square input) with a red and a blue rectangle."""
    img = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(img)
    draw.rectangle((20, 30, 90, 120), fill=(220, 40, 40))
    draw.rectangle((180, 40, 280, 100), fill=(50, 70, 230))
    img.save(path)
    return path


def predict_json(*args: str) -> dict:
    res = CliRunner().invoke(main, ["predict", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def same_boxes(a, b) -> None:
    """Same labels, each box matched by one with IoU >= 0.99 and the same score."""
    assert sorted(d.label for d in a) == sorted(d.label for d in b)
    for d in a:
        ious = [box_iou(np.array([d.box]), np.array([e.box]))[0, 0] for e in b if e.label == d.label]
        best = int(np.argmax(ious))
        assert ious[best] >= 0.99, (d, list(b))
        assert d.score == pytest.approx([e for e in b if e.label == d.label][best].score, abs=1e-4)


# ------------------------------------------------------------------------------ end2end
def test_end2end_is_read_as_detections(tmp_path):
    data = predict_json(str(END2END), str(shapes_photo(tmp_path / "p.png")))
    assert data["task"] == "detect"
    dets = data["predictions"][0]["detections"]
    assert {d["label"] for d in dets} == {"red", "blue"}
    red = next(d["box"] for d in dets if d["label"] == "red")
    np.testing.assert_allclose(red, [20, 30, 90, 120], atol=6)  # on the 300x150 photo, not the 160x160 input


def test_end2end_boxes_are_the_yolov8_decoding_of_the_same_network(tmp_path):
    e2e, raw = Detector(END2END), Detector(YOLOV8)
    assert e2e.output_kind == "end2end" and raw.output_kind == "yolov8"
    rng = np.random.default_rng(3)
    photos = [shapes_photo(tmp_path / "a.png"), shapes_photo(tmp_path / "b.png", (120, 200))]
    photos += [Image.fromarray(rng.integers(0, 255, (96, 140, 3), dtype=np.uint8))]
    for conf in (0.25, 0.05):
        wanted = raw.predict(photos, conf=conf)
        assert len(wanted[0]) and len(wanted[1])  # the photos' rectangles (the noise may have none)
        for got, want in zip(e2e.predict(photos, conf=conf), wanted):
            assert (got.width, got.height) == (want.width, want.height)
            same_boxes(got, want)


def test_end2end_max_det_and_conf_apply(tmp_path):
    (result,) = Detector(END2END).predict(shapes_photo(tmp_path / "p.png"), conf=0.01, max_det=1)
    assert len(result) == 1
    assert all(d.score > 0.9 for d in Detector(END2END).predict(shapes_photo(tmp_path / "p.png"), conf=0.9)[0])


def test_end2end_save_draws_the_boxes(tmp_path):
    photo = shapes_photo(tmp_path / "p.png")
    res = CliRunner().invoke(main, ["predict", str(END2END), str(photo), "--save", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    (drawn,) = (tmp_path / "out").iterdir()
    assert Image.open(drawn).size == (300, 150)


def test_end2end_file_with_task_raw_stays_raw(tmp_path):
    data = predict_json(str(END2END), str(shapes_photo(tmp_path / "p.png")), "--task", "raw")
    assert data["task"] == "raw"


# ------------------------------------------------------------------------------ boxes, scores, classes
def _raw_outputs(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x})))


def test_tf_combined_nms_via_tf2onnx_is_read_as_detections(tmp_path):
    photo = shapes_photo(tmp_path / "p.png", (128, 96))
    det = Detector(TFNMS)
    assert det.card.task == "detect" and det.output_kind == "boxes-yxyx" and det.card.resize == "stretch"
    (result,) = det.predict(photo, conf=0.3)
    out = _raw_outputs(TFNMS, det.preprocess(photo))
    n = int(out["num_detections"][0])
    keep = out["detection_scores"][0, :n] > 0.3
    yx = out["detection_boxes"][0, :n][keep]
    want = yx[:, [1, 0, 3, 2]] * np.array([128, 96, 128, 96])  # normalized yxyx -> the 128x96 photo's xyxy
    assert len(result) == keep.sum() > 0
    np.testing.assert_allclose(np.array([d.box for d in result]), want[np.argsort(-out["detection_scores"][0, :n][keep],
                                                                                   kind="stable")], atol=1e-3)
    assert sorted(d.index for d in result) == sorted(out["detection_classes"][0, :n][keep].astype(int).tolist())
    assert {d.label for d in result} <= {"0", "1", "2"}  # no labels in the file: the class index


def test_output_layout_flag_names_the_box_order(tmp_path):
    photo = str(shapes_photo(tmp_path / "p.png", (64, 64)))
    yx = predict_json(str(TFNMS), photo, "--conf", "0.3")["predictions"][0]["detections"]
    xy = predict_json(str(TFNMS), photo, "--conf", "0.3",
                      "--output-layout", "boxes-xyxy")["predictions"][0]["detections"]
    assert len(xy) == len(yx) > 0
    for a, b in zip(xy, yx):
        np.testing.assert_allclose(a["box"], [b["box"][i] for i in (1, 0, 3, 2)], atol=0.02)


def test_tflite_detection_postprocess_is_read_as_detections(tmp_path):
    pytest.importorskip("ai_edge_litert")
    photo = shapes_photo(tmp_path / "p.png", (200, 100))
    det = Detector(SSD, overrides=ModelOverrides(mean=(127.5,) * 3, std=(127.5,) * 3,
                                                 class_names=("red", "green", "blue")))
    assert det.output_kind == "boxes-yxyx"
    (result,) = det.predict(photo, conf=0.05)
    assert 0 < len(result) <= 20 and {d.label for d in result} <= {"red", "green", "blue"}
    boxes = np.array([d.box for d in result])
    assert (boxes[:, [0, 2]] <= 200).all() and (boxes[:, [1, 3]] <= 100).all() and boxes[:, 2:].max() > 64
    assert [d.score for d in result] == sorted((d.score for d in result), reverse=True)


def test_an_edgecnn_card_keeps_the_layout_without_labels():
    card = ModelCard(name="m", task="detect", input_size=(64, 64), output_kind="boxes-yxyx")
    assert ModelCard.from_json(card.to_json()).output_kind == "boxes-yxyx" and card.class_names == ()


@pytest.mark.parametrize("model, flags", [("face_detection_short_range.tflite", []),
                                          ("ch_PP-OCRv4_det_infer.onnx", ["--input-size", "64x64"])])
def test_outputs_no_layout_fits_stay_a_one_line_error_naming_the_new_layouts(model, flags, tmp_path):
    if model.endswith(".tflite"):
        pytest.importorskip("ai_edge_litert")
    img = tmp_path / "x.png"
    Image.new("RGB", (64, 64)).save(img)
    res = CliRunner().invoke(main, ["predict", str(FOREIGN / model), str(img), "--task", "detect", *flags,
                                    "--output-layout", "boxes-xyxy"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert "end2end" in res.output and "boxes-yxyx" in res.output and "--task raw" in res.output
