"""edgecnn.presets: the model flags, the preset table and the card inferred from a graph signature
(pure functions, no TensorFlow or onnxruntime)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgecnn.card_inference import infer_card, metadata_labels, ultralytics_metadata
from edgecnn.errors import ArtifactError, ConfigError
from edgecnn.presets import (
    PREPROCESS_PRESETS,
    ModelOverrides,
    TensorInfo,
    parse_input_size,
    parse_labels,
    parse_overrides,
    short_list,
)


@pytest.mark.parametrize("text, size", [("224", (224, 224)), ("480x640", (480, 640)), ("480X640", (480, 640)),
                                        ("32,48", (32, 48)), (None, None)])
def test_parse_input_size(text, size):
    assert parse_input_size(text) == size


@pytest.mark.parametrize("text", ["0", "a x b", "1x2x3", "-4"])
def test_bad_input_size_names_the_flag(text):
    with pytest.raises(ConfigError, match="--input-size expects N or HxW"):
        parse_input_size(text)


def test_labels_from_a_file_or_a_list(tmp_path):
    (tmp_path / "l.txt").write_text("cat\n\ndog \n")
    assert parse_labels(str(tmp_path / "l.txt")) == ("cat", "dog")
    assert parse_labels("cat, dog,bird") == ("cat", "dog", "bird")
    with pytest.raises(ConfigError, match="is not a file"):
        parse_labels(str(tmp_path / "missing.txt"))
    # one inline name: a single-class model (a character detector's "char")
    assert parse_labels("char") == ("char",)
    for path_like in ("labels.txt", "coco.names", "data/classes"):  # a missing file, not a class name
        with pytest.raises(ConfigError, match="is not a file"):
            parse_labels(path_like)


def test_channels_order_flag_reaches_inferred_and_embedded_cards():
    flags = parse_overrides(channels_order="bgr")
    assert flags.channel_order == "BGR"
    card, _ = infer_card("m", inputs=[TensorInfo("x", (1, 3, 8, 8), "float32")],
                         outputs=[TensorInfo("y", (1, 4), "float32")], overrides=flags)
    assert card.channel_order == "BGR"
    assert flags.apply(card.replace(channel_order="RGB")).channel_order == "BGR"
    assert parse_overrides().apply(card).channel_order == "BGR"  # not given: the card's own stays
    with pytest.raises(ConfigError, match="--channels-order must be rgb or bgr"):
        ModelOverrides(channel_order="GBR")


@pytest.mark.parametrize("kwargs, match", [
    ({"preprocess": "unit", "mean": "1,2,3", "std": "1,1,1"}, "either --preprocess or --mean/--std"),
    ({"mean": "1,2,3"}, "--mean and --std go together"),
    ({"mean": "1,2,3", "std": "1,0,1"}, "--std must be positive"),
    ({"mean": "1,2,3", "std": "1,1,1", "channels": "1"}, "have 3 values but --channels is 1"),
    ({"mean": "1,2,3", "std": "1,2"}, "--std expects 1 or 3"),
    ({"preprocess": "caffe"}, "--preprocess must be one of unit, imagenet, tf, none"),
])
def test_contradictory_flags_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        parse_overrides(**kwargs)


@pytest.mark.parametrize("preset, channels, mean, std", [
    ("unit", 3, (0, 0, 0), (255, 255, 255)),
    ("imagenet", 3, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    ("tf", 1, (127.5,), (127.5,)),
    ("imagenet", 1, (114.495,), (57.63,)),
    ("none", 3, (0, 0, 0), (1, 1, 1)),
])
def test_presets_on_the_0_255_scale(preset, channels, mean, std):
    norm = parse_overrides(preprocess=preset).normalization(channels)
    assert norm["mean"] == pytest.approx(mean) and norm["std"] == pytest.approx(std, abs=1e-4)
    assert norm["normalization"] == f"preset:{preset}" and set(PREPROCESS_PRESETS) == {"unit", "imagenet", "tf", "none"}


def test_ultralytics_metadata_is_parsed_as_python_literals():
    meta = ultralytics_metadata({"imgsz": "[640, 480]", "names": "{0: 'person', 1: 'bicycle'}", "task": "detect",
                                 "stride": "32", "batch": "1", "args": "{'bad': "})
    assert meta == {"imgsz": [640, 480], "names": ["person", "bicycle"], "task": "detect", "stride": 32}
    assert ultralytics_metadata({"imgsz": "640", "names": "not a literal"}) == {"imgsz": [640, 640]}


def _infer(inp, outs, **kw):
    return infer_card("m", inputs=[TensorInfo("x", tuple(inp))], outputs=[TensorInfo(f"o{i}", tuple(o)) for i, o in
                                                                          enumerate(outs)], **kw)


@pytest.mark.parametrize("inp, layout, channels, size", [
    (["n", 3, 224, 224], "nchw", 3, (224, 224)),
    ([1, 224, 160, 3], "nhwc", 3, (224, 160)),
    (["n", 1, 28, 28], "nchw", 1, (28, 28)),
    ([None, 28, 28, 1], "nhwc", 1, (28, 28)),
])
def test_layout_channels_and_size_read_from_the_input(inp, layout, channels, size):
    card, _ = _infer(inp, [["n", 10]])
    assert (card.layout, card.channels, card.input_size) == (layout, channels, size)


def test_what_is_assumed_is_said_in_one_line_with_the_flags_to_change_it():
    card, assumed = _infer(["n", 3, 32, 32], [["n", 1000]], softmax_output=False)
    assert card.task == "classify" and card.output_kind == "logits" and card.num_classes == 1000
    assert assumed.startswith("m has no model card; assuming x / 255 (pass --preprocess or --mean/--std")
    assert "labels 0..999 (pass --labels FILE|a,b,c)" in assumed and "\n" not in assumed
    card, assumed = _infer(["n", 3, 32, 32], [["n", 2]], softmax_output=True,
                           overrides=parse_overrides(preprocess="imagenet", labels="cat,dog"))
    assert assumed is None and card.output_kind == "probabilities" and card.class_names == ("cat", "dog")


@pytest.mark.parametrize("outs, task, kind, classes", [
    ([[1, 84, 8400]], "detect", "yolov8", 80),  # YOLOv8n at 640x640: 80x80 + 40x40 + 20x20 anchors
    ([[1, 25200, 85]], "detect", "yolov5", 80),  # YOLOv5: 3 anchors per cell
    ([[1, 640, 640]], "raw", "raw", 0),  # a text-detection probability map is no 640-class classifier
    ([[1, 16800, 4], [1, 16800, 2]], "raw", "raw", 0),  # a two-output face detector is not refused
])
def test_task_from_output_shapes(outs, task, kind, classes):
    card, _ = _infer([1, 3, 640, 640], outs)
    assert (card.task, card.output_kind, card.num_classes) == (task, kind, classes)
    if task == "detect":
        assert card.resize == "letterbox" and card.stride == 32


@pytest.mark.parametrize("inp, outs, overrides, match", [
    (["n", 3, "h", "w"], [["n", 10]], {}, "has a dynamic height/width; pass --input-size HxW"),
    (["n", "c", "h", "w"], [["n", 10]], {"input_size": "32"}, "pass --layout nchw|nhwc and --channels 1|3"),
    ([1, 3, 3, 3], [[1, 10]], {}, "could be NCHW or NHWC; pass --layout"),
    (["n", 3, 32, 32], [["n", 10]], {"input_size": "64"}, "is fixed at 32x32; --input-size 64x64 does not fit"),
    (["n", 3, 32, 32], [["n", 10]], {"channels": "1"}, "has 3 channels in NCHW, not --channels 1"),
    (["n", 3, 32, 32], [["n", 10]], {"labels": "a,b"}, "10 classes but 2 labels"),
    (["n", 3, 32, 32], [["n", 4, 8]], {"task": "classify"}, r"is not a \(batch, classes\) score vector"),
])
def test_what_the_graph_cannot_say_names_the_flag(inp, outs, overrides, match):
    with pytest.raises(ArtifactError, match=match):
        _infer(inp, outs, overrides=parse_overrides(**overrides))


def test_flags_fill_a_dynamic_input():
    card, _ = _infer(["n", "h", "w", "c"], [["n", 5]], overrides=parse_overrides(input_size="96x128", channels="3",
                                                                                  layout="nhwc", task="classify"))
    assert (card.input_size, card.channels, card.layout) == ((96, 128), 3, "nhwc")


def test_an_embedded_card_wins_and_flags_override_it():
    from edgecnn.card import ModelCard

    card = ModelCard(name="e", class_names=("a", "b"), input_size=(32, 32), mean=(1, 2, 3), std=(4, 5, 6))
    got, assumed = infer_card("m", inputs=[TensorInfo("images", ("n", 32, 32, 3))], outputs=[TensorInfo("p", ("n", 2))],
                              embedded=card, overrides=ModelOverrides(class_names=("cat", "dog")))
    assert assumed is None and got.class_names == ("cat", "dog") and got.mean == (1, 2, 3)


def test_short_list_never_prints_hundreds_of_names():
    assert short_list([str(i) for i in range(1000)]) == "0, 1, 2, 3, 4, ... (1000 classes)"


def test_presets_is_stdlib_only():
    code = "import sys, edgecnn.presets; print(sorted({'numpy', 'onnx', 'onnxruntime', 'PIL'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_segmentation_by_flag():
    card, _ = _infer(["n", 3, 64, 64], [["n", 21, 64, 64]], overrides=parse_overrides(task="segment"))
    assert (card.task, card.output_kind, card.num_classes, card.resize) == ("segment", "logits", 21, "stretch")
    card, assumed = _infer(["n", 3, 64, 64], [["n", 21, 64, 64]])
    assert card.task == "raw" and "pass --task classify|detect|segment" in assumed


@pytest.mark.parametrize("props, names", [
    ({"character": "text\ntitle\nfigure\n"}, ("text", "title", "figure")),  # PaddleOCR/RapidOCR: one per line
    ({"names": "{0: 'cat', 1: 'dog'}"}, ("cat", "dog")),
    ({"labels": '["cat", "dog"]'}, ("cat", "dog")),
    ({"classes": "cat\n"}, None),  # one line: not a label list
    ({"author": "x"}, None),
])
def test_labels_from_a_files_own_metadata(props, names):
    assert metadata_labels(props) == names


def test_file_labels_are_used_where_their_count_fits():
    inp = [TensorInfo("x", (1, 3, 8, 8), "float32")]
    card, assumed = infer_card("m", inputs=inp, outputs=[TensorInfo("y", (1, 3), "float32")],
                               metadata={"character": "a\nb\nc"})
    assert card.class_names == ("a", "b", "c") and "labels 0..2" not in (assumed or "")
    card, assumed = infer_card("m", inputs=inp, outputs=[TensorInfo("y", (1, 4), "float32")],
                               metadata={"character": "a\nb\nc"})  # 4 classes, 3 names: not these
    assert card.class_names == ("0", "1", "2", "3") and "labels 0..3" in assumed
    card, _ = infer_card("m", inputs=inp, outputs=[TensorInfo("y", (1, 4), "float32")],
                         metadata={"character": "a\nb\nc"}, overrides=parse_overrides(labels="w,x,y,z"))
    assert card.class_names == ("w", "x", "y", "z")  # flags win


@pytest.mark.parametrize("out, size, meta, kind", [
    ([1, 3549, 6], (416, 416), {}, "yolox"),        # ddddocr's character detector: one prediction per cell
    ([1, 8400, 85], (640, 640), {}, "yolox"),       # YOLOX-s on COCO
    ([1, 25200, 85], (640, 640), {}, "yolov5"),     # three per cell
    ([1, 84, 8400], (640, 640), {}, "yolov8"),
])
def test_detection_layout_read_from_the_anchor_count(out, size, meta, kind):
    card, note = _infer([1, 3, *size], [out], metadata=meta, overrides=parse_overrides(task="detect"))
    assert (card.task, card.output_kind) == ("detect", kind)
    if kind == "yolox":  # YOLOX's own preprocessing is assumed, and said
        assert (card.resize, card.pad_value, card.channel_order, card.mean, card.std) == \
            ("keep-aspect", 114, "BGR", (0.0,) * 3, (1.0,) * 3)
        assert "YOLOX's preprocessing" in note
        flagged, _ = _infer([1, 3, *size], [out], overrides=parse_overrides(preprocess="unit", channels_order="rgb"))
        assert (flagged.channel_order, flagged.std, flagged.output_kind) == ("RGB", (255.0,) * 3, "yolox")


def test_ultralytics_files_are_never_read_as_yolox():
    """One prediction per cell in yolov5's [N, A, 5 + C] is YOLOX's layout, except in a file
    Ultralytics wrote (the project's rewritten yolov5-layout test file)."""
    meta = {"task": "detect", "names": "{0: 'a', 1: 'b', 2: 'c'}", "imgsz": "[160, 160]"}
    card, _ = _infer([1, 3, 160, 160], [[1, 525, 8]], metadata=meta)
    assert card.output_kind != "yolox"
