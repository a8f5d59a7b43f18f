"""Self-contained ONNX files (issue 23 section 1): uint8 pixels in, the task's answers out, the same
answers as the two-part path (the file with its card, run by the runtime), from any onnxruntime."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError
from edgecnn.export import onnx as onnx_io
from edgecnn.export.self_contained import (
    CLASSIFY_OUTPUTS,
    DETECT_OUTPUT,
    SEGMENT_OUTPUT,
    SelfContainedSettings,
    make_self_contained,
)
from edgecnn.export.self_contained_check import agreement, boxes_match
from edgecnn.presets import ModelOverrides
from edgecnn.runtime import load_model
from edgecnn.runtime.core import InferenceModel

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_DATA = ROOT / "tests" / "runtime" / "data"
FOREIGN = ROOT / "tests" / "data" / "foreign"
SEED_ONNX = ROOT / "edgecnn" / "assets" / "models" / "seed_cnn_cifar10.onnx"
LRASPP = ModelOverrides(task="segment", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375),
                        class_names=("background", "red", "green", "blue"))


def self_contained(path: Path, overrides: ModelOverrides | None = None, card: ModelCard | None = None,
                   **settings) -> tuple[InferenceModel, InferenceModel, onnx.ModelProto]:
    """(two-part model, self-contained model, its proto) of ``path``."""
    two = load_model(path, overrides=overrides, card=card)
    proto, _ = make_self_contained(onnx_io.load_onnx(path, check=False), two.card,
                                   settings=SelfContainedSettings(**settings) if settings else None)
    return two, load_model(proto.SerializeToString()), proto


def scenes(n: int, size: int = 160, seed: int = 0) -> np.ndarray:
    """Red, green and blue rectangles on noisy light grey, as the shapes detectors were trained on."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = np.clip(rng.normal(225, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(base)
        draw = ImageDraw.Draw(img)
        for colour in rng.permutation([(220, 30, 30), (30, 200, 40), (30, 40, 220)])[:rng.integers(1, 4)]:
            x, y = rng.integers(0, size - 50, 2)
            w, h = rng.integers(25, 60, 2)
            draw.rectangle((int(x), int(y), int(x + w), int(y + h)), fill=tuple(int(c) for c in colour))
        out.append(np.asarray(img))
    return np.stack(out)


# ------------------------------------------------------------------------------- the file itself


@pytest.mark.parametrize("name", ["tiny_nchw_logits.onnx", "tiny_nhwc.onnx"])
@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_classifier_answers_as_the_two_part_path(name, order, rng):
    base = load_model(RUNTIME_DATA / name).card.replace(channel_order=order)
    two, one, proto = self_contained(RUNTIME_DATA / name, card=base)
    pixels = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    assert [o.name for o in proto.graph.output] == list(CLASSIFY_OUTPUTS)
    assert one.card.self_contained and one.card.input_dtype == "uint8"
    assert one.pixel_note == "in the file (self-contained)"
    np.testing.assert_allclose(one.predict_proba(pixels), two.predict_proba(pixels), atol=2e-7)
    assert [p[0].index for p in one.predict(pixels)] == [p[0].index for p in two.predict(pixels)]
    # the folded mapping is the card's: the same file with another card gives other answers
    other = load_model(RUNTIME_DATA / name, card=base.replace(mean=(0.0, 0.0, 0.0)))
    assert not np.allclose(other.predict_proba(pixels), one.predict_proba(pixels), atol=1e-3)


def test_plain_onnxruntime_gives_the_answers_with_no_edgecnn_code(rng):
    """What a C++/Java/Node app does: session.run on uint8 pixels, read probabilities and top-k."""
    two, _, proto = self_contained(RUNTIME_DATA / "tiny_nchw_logits.onnx", top_k=3)
    pixels = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = [(i.name, i.type, i.shape) for i in session.get_inputs()]
    assert inputs == [("pixels", "tensor(uint8)", ["batch", 8, 8, 3])]
    probs, scores, classes = session.run(None, {"pixels": pixels})
    np.testing.assert_allclose(probs, two.predict_proba(pixels), atol=2e-7)
    assert classes.shape == (16, 3) and classes.dtype == np.int64
    np.testing.assert_array_equal(classes, np.argsort(-probs, axis=1, kind="stable")[:, :3])
    np.testing.assert_allclose(scores, np.take_along_axis(probs, classes, axis=1))
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}  # standard ops only: no custom-op library
    card = json.loads({p.key: p.value for p in proto.metadata_props}["edgecnn.card"])
    assert card["self_contained"] is True and card["export"]["self_contained"]["top_k"] == 3
    assert card["export"]["self_contained"]["folded"]["preprocessing"].endswith("NCHW")


@pytest.mark.parametrize("name", ["yolov8_shapes.onnx", "yolov5layout_shapes.onnx"])
def test_detector_boxes_equal_the_runtime_decoding_and_nms(name):
    two, one, proto = self_contained(FOREIGN / name)
    images = scenes(24)
    assert [o.name for o in proto.graph.output] == [DETECT_OUTPUT]
    assert "NonMaxSuppression" in {n.op_type for n in proto.graph.node}
    assert one.card.output_kind == "end2end" and one.fixed_batch == 1  # NMS rows are per call: one image each
    ref, got = two.predict(images), one.predict(images)  # 24 images: the runtime feeds them one by one
    assert sum(len(r) for r in ref) >= 40  # real boxes on real scenes, not an empty comparison
    for r, g in zip(ref, got):
        ok, worst = boxes_match([(d.index, d.box) for d in r], [(d.index, d.box) for d in g])
        assert ok, (r, g, worst)
        assert [d.score for d in g] == pytest.approx([d.score for d in r], abs=1e-6)


def test_detector_thresholds_are_baked_and_said():
    two, one, _ = self_contained(FOREIGN / "yolov8_shapes.onnx", conf=0.6, max_det=1)
    images = scenes(12, seed=3)
    got = one.predict(images)
    assert all(len(g) <= 1 and all(d.score > 0.6 for d in g) for g in got)
    best = [r[:1] for r in two.predict(images, conf=0.6)]
    assert [[d.index for d in g] for g in got] == [[d.index for d in b] for b in best]
    assert one.card.export["self_contained"] | {} == {**one.card.export["self_contained"], "conf": 0.6, "max_det": 1}


def test_detector_with_nms_in_its_graph_keeps_its_outputs():
    two, one, proto = self_contained(FOREIGN / "yolov8_shapes_end2end.onnx")
    assert [o.name for o in proto.graph.output] == [o.name for o in two.graph_outputs]
    images = scenes(8, seed=1)
    for r, g in zip(two.predict(images), one.predict(images)):
        assert boxes_match([(d.index, d.box) for d in r], [(d.index, d.box) for d in g])[0]


def test_detector_with_separate_nms_outputs_becomes_rows():
    """TensorFlow's combined NMS (boxes y-first and normalized, scores, classes, a count): the
    self-contained file gives the same detections as [N, K, 6] rows, rows past the count zeroed."""
    two, one, proto = self_contained(FOREIGN / "tfnms_tiny.onnx")
    assert two.card.output_kind == "boxes-yxyx" and one.card.output_kind == "end2end"
    assert [o.name for o in proto.graph.output] == [DETECT_OUTPUT]
    images = np.random.default_rng(2).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    ref, got = two.predict(images, conf=0.05), one.predict(images, conf=0.05)
    assert sum(len(r) for r in ref) >= 6  # random weights, but boxes above 0.05 to compare
    for r, g in zip(ref, got):
        assert boxes_match([(d.index, d.box) for d in r], [(d.index, d.box) for d in g])[0]
        assert [d.score for d in g] == pytest.approx([d.score for d in r])
    rows = ort.InferenceSession(proto.SerializeToString()).run(None, {"pixels": images[:1]})[0]
    assert rows.shape == (1, 20, 6) and np.all(rows[0, np.count_nonzero(rows[0, :, 4]):] == 0)


def test_segmenter_class_map_equals_the_runtime_argmax():
    two, one, proto = self_contained(FOREIGN / "lraspp_shapes.onnx", LRASPP)
    images = scenes(6, size=128)
    assert [o.name for o in proto.graph.output] == [SEGMENT_OUTPUT] and one.card.output_kind == "class-map"
    for r, g in zip(two.predict(images), one.predict(images)):
        np.testing.assert_array_equal(g.mask, r.mask)
    assert len({c for r in two.predict(images) for c, _, _ in r.present()}) >= 3  # real classes were found
    check = agreement(two, one, images)
    assert (check.metric, check.value, check.passed) == ("miou", 1.0, True)


def test_photo_of_another_size_goes_through_the_same_fit():
    """The runtime fits a photo to the input size (letterbox here) and maps the boxes back, as for the
    two-part file; only the pixel mapping and the post-processing moved into the graph."""
    two, one, _ = self_contained(FOREIGN / "yolov8_shapes.onnx")
    img = Image.new("RGB", (480, 320), (230, 230, 230))
    draw = ImageDraw.Draw(img)
    draw.rectangle((40, 60, 180, 240), fill=(220, 30, 30))
    draw.rectangle((280, 100, 440, 200), fill=(30, 40, 220))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    ref, got = two.predict(buf.getvalue())[0], one.predict(buf.getvalue())[0]
    assert len(ref) >= 2 and (got.width, got.height) == (480, 320)
    assert boxes_match([(d.index, d.box) for d in ref], [(d.index, d.box) for d in got])[0]


# ------------------------------------------------------------------------------ what is refused


def test_raw_and_yolox_models_are_refused_in_one_line():
    raw = load_model(RUNTIME_DATA / "tiny_nhwc.onnx").card.replace(task="raw")
    with pytest.raises(ArtifactError, match="raw model.*--task"):
        make_self_contained(onnx_io.load_onnx(RUNTIME_DATA / "tiny_nhwc.onnx"), raw)
    yolox = load_model(FOREIGN / "yolov8_shapes.onnx").card.replace(output_kind="yolox")
    with pytest.raises(ArtifactError, match="yolox"):
        make_self_contained(onnx_io.load_onnx(FOREIGN / "yolov8_shapes.onnx"), yolox)


def test_a_card_saying_self_contained_on_a_float_file_is_refused():
    card = load_model(RUNTIME_DATA / "tiny_nhwc.onnx").card
    lying = card.replace(self_contained=True, input_dtype="uint8", mean=(0.0,) * 3, std=(1.0,) * 3)
    with pytest.raises(ArtifactError, match="self-contained.*tensor\\(float\\)"):
        InferenceModel(RUNTIME_DATA / "tiny_nhwc.onnx", card=lying)
    with pytest.raises(ArtifactError, match="uint8 RGB NHWC"):
        card.replace(self_contained=True)  # a self-contained card with a float mapping is not a card


def test_the_check_catches_a_file_that_answers_otherwise(rng):
    """The check can fail: a self-contained file folded with the wrong mean differs from the two-part path."""
    two = load_model(RUNTIME_DATA / "tiny_nchw_logits.onnx")
    wrong, _ = make_self_contained(onnx_io.load_onnx(RUNTIME_DATA / "tiny_nchw_logits.onnx"),
                                   two.card.replace(mean=(0.0, 0.0, 0.0)))
    pixels = rng.integers(0, 256, (200, 8, 8, 3), dtype=np.uint8)
    check = agreement(two, load_model(wrong.SerializeToString()), pixels)
    assert check.metric == "top1_identical" and not check.passed and check.value <= 0.95


def test_boxes_match_needs_one_to_one_same_class_pairs():
    a = [(0, (0, 0, 10, 10)), (1, (20, 20, 40, 40))]
    assert boxes_match(a, list(reversed(a))) == (True, 1.0)
    assert not boxes_match(a, [(0, (0, 0, 10, 10)), (0, (20, 20, 40, 40))])[0]  # a class changed
    assert not boxes_match(a, a[:1])[0]  # a box lost
    assert not boxes_match(a, [(0, (0, 0, 10, 10)), (1, (20, 20, 40, 41))])[0]  # IoU 0.952
    assert boxes_match([], []) == (True, 1.0)


# ------------------------------------------------------------------------------ export --self-contained


@pytest.fixture(scope="module")
def exported(tmp_path_factory, sample_data):
    """The packaged seed CNN exported fp32 + int8 + fp16, each with its self-contained file."""
    from edgecnn.export import ExportConfig, export_model

    root = tmp_path_factory.mktemp("self_contained")
    x_train, y_train, x_test, y_test = sample_data
    np.savez(root / "cifar.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    report = export_model(SEED_ONNX, out_dir=root / "out", calibration_data=root / "cifar.npz",
                          config=ExportConfig(quantize=("int8", "fp16"), self_contained=True))
    return root / "out", report, x_test


def test_export_writes_and_checks_a_self_contained_file_per_variant(exported):
    out, report, x_test = exported
    assert [(t.precision, t.file, t.metric, t.value, t.passed, t.images) for t in report.self_contained] == [
        (p, f, "top1_identical", 1.0, True, report.test_set["images"]) for p, f in
        (("fp32", "model.self-contained.onnx"), ("int8", "model.int8.self-contained.onnx"),
         ("fp16", "model.fp16.self-contained.onnx"))]
    for t in report.self_contained:
        model = load_model(out / t.file)
        assert model.card.self_contained and model.card.precision == t.precision
        two = load_model(out / t.file.replace(".self-contained", ""))
        assert [p[0].index for p in model.predict(x_test[:50])] == [p[0].index for p in two.predict(x_test[:50])]
    text = (out / "export_report.md").read_text()
    assert "## Self-contained files" in text and "model.int8.self-contained.onnx" in text
    from edgecnn.export.report import ExportReport

    assert ExportReport.load(out).self_contained == report.self_contained
    assert not list(out.glob(".export-staging-*"))


def test_cli_self_contained_prints_the_check_and_refuses_a_raw_model(exported, tmp_path, monkeypatch):
    from edgecnn.cli import main

    out, _, _ = exported
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["predict", str(out / "model.int8.self-contained.onnx"),
                                       str(ROOT / "edgecnn" / "assets" / "cifar10_sample" / "test.webp"), "--json"])
    assert result.exit_code == 0, result.output
    raw = CliRunner().invoke(main, ["export", str(RUNTIME_DATA / "tiny_nhwc.onnx"), "--task", "raw",
                                    "--self-contained", "--out", str(tmp_path / "raw")])
    assert raw.exit_code != 0 and "raw model" in raw.output and "Traceback" not in raw.output
    assert not (tmp_path / "raw").exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_self_contained_file_that_differs_fails_the_export_and_is_not_written(tmp_path, sample_data,
                                                                               monkeypatch):
    from edgecnn.export import ExportConfig, export_model
    from edgecnn.export import job as job_module

    def wrong_mean(proto, card, settings=None):
        return make_self_contained(proto, card.replace(mean=(0.0, 0.0, 0.0)), settings=settings)

    monkeypatch.setattr(job_module, "make_self_contained", wrong_mean)
    x_train, y_train, x_test, y_test = sample_data
    np.savez(tmp_path / "cifar.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    with pytest.raises(ArtifactError, match="does not answer as its variant.*top1 identical"):
        export_model(SEED_ONNX, out_dir=tmp_path / "out", calibration_data=tmp_path / "cifar.npz",
                     config=ExportConfig(self_contained=True))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["export_report.json", "export_report.md",
                                                                    "model.onnx"]
    report = json.loads((tmp_path / "out" / "export_report.json").read_text())
    assert report["status"] == "failed" and report["self_contained"][0]["file"] is None


@pytest.mark.slow
@pytest.mark.parametrize("name, overrides, size, metric, detail", [
    ("yolov8_shapes.onnx", None, 160, "detections_matched", "boxes on"),
    ("lraspp_shapes.onnx", LRASPP, 128, "miou", "pixels differ"),
])
def test_export_detector_and_segmenter_variants_self_contained(name, overrides, size, metric, detail, tmp_path):
    """fp32, int8 and fp16 of a real detector and segmenter: each self-contained file answers as its
    variant on real scenes (the held-out part of the calibration folder)."""
    from edgecnn.export import ExportConfig, export_model

    folder = tmp_path / "scenes"
    folder.mkdir()
    for i, image in enumerate(scenes(64, size=size, seed=5)):
        Image.fromarray(image).save(folder / f"s{i:02d}.png")
    report = export_model(FOREIGN / name, out_dir=tmp_path / "out", calibration_data=folder, overrides=overrides,
                          config=ExportConfig(quantize=("int8", "fp16"), self_contained=True,
                                              max_accuracy_drop=5.0))
    assert [(t.precision, t.metric, t.passed) for t in report.self_contained] == [
        (p, metric, True) for p in ("fp32", "int8", "fp16")]
    assert all(t.value >= 0.999 and detail in t.detail for t in report.self_contained)
    if metric == "detections_matched":  # boxes were there to compare
        assert all(int(t.detail.split()[0]) >= 30 for t in report.self_contained)
    for t in report.self_contained:
        assert load_model(tmp_path / "out" / t.file).card.self_contained
