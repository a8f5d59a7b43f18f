"""The runtime core: models from elsewhere (no card, dynamic sizes, gray, fixed batch, several
outputs), the one image loader against hostile files, and the commands on top of it."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgecnn.cli import main
from edgecnn.errors import ArtifactError, ConfigError, InputError
from edgecnn.presets import ModelOverrides
from edgecnn.runtime import Classifier, InferenceModel, load_model
from edgecnn.runtime.preprocess import Fitting, fit_image, load_image

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


def _save(path: Path, nodes, inputs, outputs, initializers=(), metadata=None) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def _pool_classifier(path: Path, *, channels: int = 3, classes: int = 4, hw=(8, 8), batch="N", layout="nchw",
                     softmax: bool = False) -> Path:
    """GlobalAveragePool -> Flatten -> MatMul (-> Softmax): a real, deterministic classifier."""
    h, w = hw
    shape = [batch, channels, h, w] if layout == "nchw" else [batch, h, w, channels]
    rng = np.random.default_rng(0)
    weights = helper.make_tensor("W", TensorProto.FLOAT, [channels, classes],
                                 rng.normal(size=channels * classes).tolist())
    nodes = [] if layout == "nchw" else [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2])]
    src = "x" if layout == "nchw" else "xt"
    nodes += [helper.make_node("GlobalAveragePool", [src], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
              helper.make_node("MatMul", ["f", "W"], ["logits" if softmax else "y"])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["y"], axis=1))
    return _save(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])], [weights])


def _two_outputs(path: Path) -> Path:
    """A 'raw' model: a feature map and its mean, neither a class vector."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3])
    nodes = [helper.make_node("Relu", ["x"], ["fmap"]),
             helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0)]
    return _save(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                 [helper.make_tensor_value_info("fmap", TensorProto.FLOAT, ["N", 3, 16, 16]),
                  helper.make_tensor_value_info("m", TensorProto.FLOAT, ["N"])], [axes])


def _png(tmp_path: Path, name: str, size=(20, 12), color=(200, 30, 40)) -> Path:
    path = tmp_path / name
    Image.new("RGB", size, color).save(path)
    return path


def _poison_dds() -> bytes:
    """A DDS whose pixel-format flags were mutated (issue 11): Pillow raises NotImplementedError."""
    buf = io.BytesIO()
    Image.new("RGB", (48, 40)).save(buf, "DDS")
    data = bytearray(buf.getvalue())
    struct.pack_into("<I", data, 80, 0x2000)
    return bytes(data)


# ------------------------------------------------------------------------------ card inference

def test_dynamic_size_needs_input_size_and_names_the_flag(tmp_path):
    path = _pool_classifier(tmp_path / "dyn.onnx", hw=("H", "W"))
    with pytest.raises(ArtifactError, match="--input-size HxW"):
        InferenceModel(path)
    clf = Classifier(path, overrides=ModelOverrides(input_size=(24, 16)))
    assert clf.card.input_size == (24, 16)
    assert clf.predict_proba(np.zeros((2, 24, 16, 3), np.uint8)).shape == (2, 4)


def test_cardless_assumptions_are_one_line_and_probabilities_are_detected(tmp_path):
    logits = Classifier(_pool_classifier(tmp_path / "logits.onnx"))
    probs = Classifier(_pool_classifier(tmp_path / "probs.onnx", softmax=True))
    line = logits.assumptions()
    assert line and "\n" not in line and "x / 255" in line
    px = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    # One graph ends in a softmax, the other does not: both give the same distribution.
    np.testing.assert_allclose(logits.predict_proba(px), probs.predict_proba(px), rtol=1e-5, atol=1e-6)


def test_labels_are_summarized_never_listed_in_full(tmp_path):
    model = InferenceModel(_pool_classifier(tmp_path / "many.onnx", classes=1000))
    assert model.card.num_classes == 1000
    assert len(model.assumptions()) < 400


def test_gray_model_runs_on_color_images(tmp_path):
    clf = Classifier(_pool_classifier(tmp_path / "gray.onnx", channels=1))
    assert clf.card.channels == 1 and clf.card.mean == (0.0,)
    x = clf.preprocess([_png(tmp_path, "c.png")])
    assert x.shape == (1, 1, 8, 8)
    expected = 0.299 * 200 + 0.587 * 30 + 0.114 * 40  # Pillow's L conversion
    assert abs(float(x.mean()) * 255 - expected) < 1.0


def test_fixed_batch_model_is_fed_in_chunks(tmp_path):
    path = _pool_classifier(tmp_path / "b1.onnx", batch=1)
    fixed, dynamic = Classifier(path), Classifier(_pool_classifier(tmp_path / "bn.onnx"))
    px = np.random.default_rng(2).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    assert fixed.fixed_batch == 1
    np.testing.assert_allclose(fixed.predict_proba(px), dynamic.predict_proba(px), rtol=1e-6)


def test_raw_model_gives_output_summaries(tmp_path):
    model = load_model(_two_outputs(tmp_path / "raw.onnx"))
    assert type(model) is InferenceModel and model.card.task == "raw" and not model.card.class_names
    (res,) = model.predict([_png(tmp_path, "a.png")])
    assert [o["name"] for o in res] == ["fmap", "m"]
    assert res[0]["shape"] == [3, 16, 16] and res[1]["shape"] == []
    with pytest.raises(ConfigError, match="raw model"):
        model.annotate(_png(tmp_path, "b.png"), res)


def test_raw_model_refuses_a_heads_parameter(tmp_path):
    """predict takes the parameters of the model's own head: a raw model has none, so ``top_k`` is a
    TypeError, as ``conf`` is on a classifier, instead of being ignored without a word."""
    model = load_model(_two_outputs(tmp_path / "raw.onnx"))
    with pytest.raises(TypeError, match="top_k"):
        model.predict([_png(tmp_path, "a.png")], top_k=3)


def test_classifier_refuses_another_task(tmp_path):
    with pytest.raises(ArtifactError, match="raw model, not a classifier"):
        Classifier(_two_outputs(tmp_path / "raw.onnx"))


# ------------------------------------------------------------------------------ the image loader

def test_poison_image_is_an_input_error_not_a_crash():
    with pytest.raises(InputError, match="Cannot read"):
        load_image(_poison_dds(), (8, 8))


@pytest.mark.parametrize("size, hw", [((640, 480), (320, 320)), ((100, 300), (160, 128)), ((64, 64), (64, 64))])
def test_letterbox_keeps_aspect_and_maps_boxes_back(size, hw):
    img = Image.new("RGB", size, (0, 0, 0))
    w, h = size
    img.paste((255, 255, 255), (w // 4, h // 4, w // 2, h // 2))  # a white box at a known place
    arr, info = fit_image(img, hw, fitting=Fitting(resize="letterbox", pad_value=114))
    assert arr.shape == (*hw, 3)
    assert abs(info.scale_x - info.scale_y) < 0.02  # aspect kept
    ys, xs = np.nonzero(arr[..., 0] > 200)
    found = info.to_original(np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32))[0]
    np.testing.assert_allclose(found, [w // 4, h // 4, w // 2, h // 2], atol=max(w, h) / min(hw) + 1)
    if hw[0] / h != hw[1] / w:
        assert (arr == 114).all(axis=-1).any()  # the border is padded grey


# ------------------------------------------------------------------------------------ commands

def test_predict_without_model_uses_the_packaged_one_and_says_so(tmp_path):
    res = CliRunner().invoke(main, ["predict", str(_png(tmp_path, "x.png")), "--json"])
    assert res.exit_code == 0, res.output
    assert "packaged reference model" in res.stderr
    assert json.loads(res.stdout)["predictions"][0]["top_k"]


def test_predict_poison_image_is_one_line(tmp_path):
    bad = tmp_path / "p.png"
    bad.write_bytes(_poison_dds())
    res = CliRunner().invoke(main, ["predict", str(bad)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Cannot read" in errors[0] and str(bad) in errors[0]


def test_predict_cardless_says_what_it_assumes_and_saves(tmp_path):
    model = _pool_classifier(tmp_path / "m.onnx", hw=(16, 16))
    res = CliRunner().invoke(main, ["predict", str(model), str(_png(tmp_path, "a.png")),
                                                    "--labels", "a,b,c,d", "--save", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "no model card; assuming" in res.stderr and "x / 255" in res.stderr
    saved = Image.open(tmp_path / "out" / "a.png")
    assert saved.size == (20, 12)


def test_predict_raw_model_table(tmp_path):
    res = CliRunner().invoke(main, ["predict", str(_two_outputs(tmp_path / "raw.onnx")), str(_png(tmp_path, "a.png"))])
    assert res.exit_code == 0, res.output
    assert "fmap" in res.output and "3x16x16" in res.output


def test_bench_without_labels_and_with_a_batch1_model(tmp_path):
    raw = _two_outputs(tmp_path / "raw.onnx")
    b1 = _pool_classifier(tmp_path / "b1.onnx", batch=1)
    res = CliRunner().invoke(main, ["bench", str(raw), str(b1), "--runs", "3", "--warmup", "0",
                                                    "--no-placement", "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert sorted((Path(r["model"]).name if "/" in r["model"] else r["model"], r["batch"], r["runner"]) for r in rows) \
        == sorted((m, b, runner) for m, b in [("raw", 1), ("raw", 32), ("b1", 1)]
                  for runner in ("onnxruntime", "onnxruntime+pixels"))
    assert "static batch size of 1" in res.output + res.stderr and "skipped 32" in res.output + res.stderr


def test_bench_refuses_a_batch_that_cannot_fit(tmp_path):
    res = CliRunner().invoke(main, ["bench", str(_pool_classifier(tmp_path / "m.onnx")), "--batch", "100000000"])
    assert res.exit_code == 1 and "Traceback" not in res.output and "smaller --batch" in res.output


def test_bench_interrupt_keeps_measured_points(tmp_path):
    from edgecnn.runtime.benchmark import BenchConfig, run_benchmark

    seen = []

    def stop_after_two(result):
        seen.append(result)
        if len(seen) == 2:
            raise KeyboardInterrupt

    config = BenchConfig(batch_sizes=(1, 2, 4), runs=2, warmup=0, placement=False)
    report = run_benchmark([_pool_classifier(tmp_path / "m.onnx")], config, on_result=stop_after_two)
    assert report.interrupted and len(report.results) == 2
    assert any("Interrupted" in n for n in report.notes)


def test_unreadable_bytes_message_has_no_object_address():
    with pytest.raises(InputError) as err:
        load_image(b"not an image", (8, 8))
    assert "the 12 bytes given" in str(err.value) and "0x" not in str(err.value) and "BytesIO" not in str(err.value)


def test_file_system_errors_are_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = CliRunner().invoke(main, ["predict", str(_png(tmp_path, "a.png")), "--save", str(blocker / "out")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "check the path" in res.output and str(blocker) in res.output


def test_model_declaring_a_huge_input_is_refused_before_allocating(tmp_path):
    path = _pool_classifier(tmp_path / "huge.onnx", hw=(100_000, 100_000))
    with pytest.raises(ArtifactError, match="100000x100000 = 10,000,000,000 pixels"):
        InferenceModel(path)
    res = CliRunner().invoke(main, ["bench", str(path)])
    assert res.exit_code == 1 and "Traceback" not in res.output and "over the limit" in res.output


def _needs_its_size(path: Path) -> Path:
    """A dynamic-height/width model that runs at 8x8 only (its Gemm takes 2x8x8 features): a 1x1
    profiling input fails in it, as in real exports with a fixed-size head."""
    rng = np.random.default_rng(0)
    init = [helper.make_tensor("w", TensorProto.FLOAT, [2, 3, 3, 3], rng.standard_normal(54).astype(np.float32)),
            helper.make_tensor("g", TensorProto.FLOAT, [128, 4], rng.standard_normal(512).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "g"], ["y"])]
    graph = helper.make_graph(nodes, "sized",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def test_bench_places_nodes_at_the_cards_input_size(tmp_path):
    """A dynamic height/width model benched at --input-size: the profiled placement run feeds that
    size, not 1x1 (which crashed in node placement)."""
    model = _needs_its_size(tmp_path / "sized.onnx")
    res = CliRunner().invoke(main, ["bench", str(model), "--input-size", "8x8", "--task", "raw", "--batch", "1",
                                    "--runs", "3", "--warmup", "0", "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    (placement,) = json.loads((tmp_path / "b.json").read_text())["placement"].values()
    assert placement["total"] >= 3 and placement["on_cpu"] == placement["total"]  # measured, at 8x8
    assert placement["summary"].startswith("nodes on CPU:")


def test_a_failing_placement_run_is_reported_not_raised(tmp_path, monkeypatch):
    from edgecnn.runtime.core import InferenceModel as Core

    def broken(self):
        raise RuntimeError("profiling went wrong")

    monkeypatch.setattr(Core, "node_placement", broken)
    model = _needs_its_size(tmp_path / "sized.onnx")
    res = CliRunner().invoke(main, ["bench", str(model), "--input-size", "8x8", "--task", "raw", "--batch", "1",
                                    "--runs", "3", "--warmup", "0", "--json", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    placement = json.loads((tmp_path / "b.json").read_text())["placement"]
    assert [p["summary"] for p in placement.values()] == ["placement unknown (profiling went wrong)"]
