"""``edgecnn export -q litert-int8``: a .tflite variant with the card inside, run by the runtime
core on LiteRT (XNNPack), judged by the same guard, measured by ``edgecnn tune``."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("ai_edge_litert")

from edgecnn.card import ONNX_METADATA_KEY, ModelCard  # noqa: E402
from edgecnn.cli import main  # noqa: E402
from edgecnn.errors import ArtifactError, ConfigError, ProviderError  # noqa: E402
from edgecnn.runtime import Classifier, InferenceModel  # noqa: E402
from edgecnn.runtime.backends.litert import read_tflite_metadata  # noqa: E402


@pytest.fixture(scope="module")
def litert_export(tmp_path_factory, seed_run):
    from edgecnn.export import ExportConfig, export_run

    out = tmp_path_factory.mktemp("litert") / "export"
    report = export_run(seed_run, out_dir=out, config=ExportConfig(quantize=("int8", "litert-int8"),
                                                                   max_accuracy_drop=10.0))
    return report, out


def test_export_writes_a_verified_tflite_with_its_card(litert_export, sample3):
    report, out = litert_export
    v = report.variant("litert-int8")
    assert v.file == "model.int8.tflite" and v.passed and (out / v.file).is_file()
    assert v.accuracy is not None and v.top1_agreement >= 0.8 and v.size_bytes < report.variant("fp32").size_bytes
    meta = read_tflite_metadata((out / v.file).read_bytes())
    card = ModelCard.from_json(meta[ONNX_METADATA_KEY].decode())
    assert card.precision == "litert-int8" and card.layout == "nhwc"
    assert list(card.class_names) == sample3.class_names
    assert card.metrics["onnx_test_accuracy"] == pytest.approx(v.accuracy, abs=1e-6)


def test_runtime_runs_the_tflite_like_the_onnx(litert_export, sample3):
    _, out = litert_export
    lite = Classifier(out / "model.int8.tflite", threads=1)
    fp32 = Classifier(out / "model.onnx")
    assert lite.backend == "litert" and lite.providers == ["LiteRT:CPU"] and lite.has_card
    x = sample3.x_test[:40]
    p_lite, p_fp32 = lite.predict_proba(x), fp32.predict_proba(x)
    assert p_lite.shape == p_fp32.shape and p_lite.dtype == np.float32
    assert np.mean(p_lite.argmax(1) == p_fp32.argmax(1)) >= 0.8
    assert np.allclose(p_lite.sum(1), 1.0, atol=0.02)
    # batch sizes change between calls (the interpreter is resized), results stay per image
    one = lite.predict_proba(x[:1])
    assert np.allclose(one[0], p_lite[0], atol=1e-6)
    # int8 input: uint8 pixels go through one lookup table per channel into it, no float pass;
    # a preprocessed float tensor is still accepted (quantized on the way in), with the same answers
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_path=str(out / "model.int8.tflite")).get_input_details()[0]
    # the normalization is inside the model: the int8 input is the pixel itself, pixel - 128
    assert detail["dtype"] == np.int8 and detail["quantization"] == (1.0, -128)
    assert lite.card.mean == (0.0, 0.0, 0.0) and lite.card.std == (1.0, 1.0, 1.0)
    assert lite.card.export["normalization_in_model"]["mean"] == list(fp32.card.mean)
    assert lite.pixels_in_graph and lite.pixel_note.startswith("LiteRT lookup table")
    from_floats = lite.probabilities(lite.run(lite.preprocess(x)))
    assert (from_floats.argmax(1) == p_lite.argmax(1)).all() and np.abs(from_floats - p_lite).max() < 0.02
    top = lite.predict([x[0]], top_k=2)[0]
    assert len(top) == 2 and top[0].label in sample3.class_names


def test_backend_and_file_kind_must_match(litert_export):
    _, out = litert_export
    with pytest.raises(ProviderError, match="LiteRT runs .tflite files"):
        InferenceModel(out / "model.int8.tflite", backend="openvino")
    with pytest.raises(ProviderError, match="LiteRT runs .tflite files"):
        InferenceModel(out / "model.onnx", backend="litert")
    with pytest.raises(ConfigError, match="IO binding"):
        InferenceModel(out / "model.int8.tflite", io_binding=True)


def test_corrupt_tflite_is_one_line(tmp_path, litert_export):
    _, out = litert_export
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ArtifactError, match="LiteRT cannot load bad.tflite"):
        InferenceModel(bad)
    half = tmp_path / "half.tflite"
    half.write_bytes((out / "model.int8.tflite").read_bytes()[:2000])
    with pytest.raises(ArtifactError, match="LiteRT cannot load half.tflite"):
        InferenceModel(half)


def test_tflite_without_card_is_inferred(tmp_path, litert_export):
    from edgecnn.runtime.backends.litert import LiteRtSession

    _, out = litert_export
    # A plain converter file: the same graph without edgecnn's metadata entry.
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel((out / "model.int8.tflite").read_bytes(), 0))
    model.metadata = [m for m in model.metadata if m.name not in (ONNX_METADATA_KEY, ONNX_METADATA_KEY.encode())]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    plain = tmp_path / "plain.tflite"
    plain.write_bytes(bytes(builder.Output()))
    assert ONNX_METADATA_KEY not in LiteRtSession(plain).get_modelmeta().custom_metadata_map
    m = InferenceModel(plain)
    assert not m.has_card and m.assumptions() and m.card.input_size == (32, 32)


def test_litert_needs_a_keras_source(tmp_path, litert_export):
    from edgecnn.export import ExportConfig, export_onnx_file

    _, out = litert_export
    with pytest.raises(ConfigError, match="litert-int8 converts Keras models"):
        export_onnx_file(out / "model.onnx", out_dir=tmp_path / "x",
                         config=ExportConfig(quantize=("litert-int8",), max_accuracy_drop=10.0))
    assert not (tmp_path / "x").exists()


def test_tune_measures_litert_and_deploys_it(tmp_path, litert_export):
    from edgecnn.tune import TuneConfig, tune

    _, out = litert_export
    d = tmp_path / "export"
    shutil.copytree(out, d)
    report = tune(d, TuneConfig(threads=(1,), backends=("onnxruntime", "litert"), max_drop_pp=100.0, seconds=0.05,
                                images=40, confirm=2))
    row = next(c for c in report.candidates if c["backend"] == "litert")
    assert row["config"] == "int8 litert" and row["file"] == "model.int8.tflite" and row["drop_pp"] is not None
    assert any(c.candidate.backend == "litert" for c in report.cells)
    # whatever won, a deploy.json naming the tflite opens on LiteRT
    from edgecnn._files import sha256_file
    from edgecnn.runtime.deploy import Deployment

    dep = Deployment(file="model.int8.tflite", variant="litert-int8", backend="litert", threads=1,
                     sha256=sha256_file(d / "model.int8.tflite"))
    (d / "deploy.json").write_text(dep.to_json())
    clf = Classifier.from_dir(d)
    assert clf.backend == "litert" and "model.int8.tflite on litert, 1 thread" in clf.deploy_note


def test_cli_predict_and_bench_a_tflite(tmp_path, litert_export, sample3):
    from PIL import Image

    _, out = litert_export
    img = tmp_path / "x.png"
    Image.fromarray(sample3.x_test[0]).save(img)
    runner = CliRunner()
    result = runner.invoke(main, ["predict", str(out / "model.int8.tflite"), str(img), "--json", "-k", "1"])
    assert result.exit_code == 0, result.output
    assert '"LiteRT:CPU"' in result.output
    result = runner.invoke(main, ["bench", str(out / "model.int8.tflite"), "--batch", "1,2", "--runs", "5",
                                  "--warmup", "1"])
    assert result.exit_code == 0, result.output
    assert "litert" in result.output


def test_peer_bench_tool_times_the_pick_against_litert_and_openvino(tmp_path, litert_export, seed_run):
    """tools/peer_bench.py, the issue-12/19 harness: edgecnn's tuned pick from uint8 pixels, each
    finalist's bare call with its input ready, LiteRT int8/fp32, OpenVINO with its
    PrePostProcessor and onnxruntime with the mapping in the graph, on the same images, in one run."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from edgecnn.tune import TuneConfig, tune

    _, out = litert_export
    d = tmp_path / "export"
    shutil.copytree(out, d)
    tune(d, TuneConfig(threads=(1,), max_drop_pp=100.0, seconds=0.05, images=40, confirm=1))
    result_file = tmp_path / "peer.json"
    tool = Path(__file__).resolve().parents[2] / "tools" / "peer_bench.py"
    done = subprocess.run([sys.executable, str(tool), str(seed_run), "--export", str(d), "--threads", "1",
                           "--batch", "1", "--seconds", "0.05", "--rounds", "1", "--images", "40",
                           "--out", str(result_file)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(result_file.read_text())["rows"]
    families = {r["family"] for r in rows}
    assert families == {"edgecnn", "bare", "litert", "openvino", "onnxruntime"}
    assert all(r["p50_ms"] > 0 for r in rows)
    assert all(0 <= r["top1"] <= 1 for r in rows if r["family"] != "bare")
    assert all(r["vs_bare"] > 0 for r in rows if r["family"] == "edgecnn")
    assert "/ best peer" in done.stdout and sum(1 for r in rows if r.get("pick")) == 1
    assert "from pixels / its bare call, input ready" in done.stdout


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_normalization_inside_the_tflite_is_the_cards(order):
    """-q litert-int8 puts the card's mapping in front of the Keras model (channel order, then
    (x - mean) / std), so the file takes pixels: the wrapped model on pixels is the model on the
    numpy path's input."""
    keras = pytest.importorskip("keras")
    from edgecnn.export.litert import _with_normalization
    from edgecnn.runtime.preprocess import normalize_batch

    card = ModelCard(name="m", class_names=["a"], input_size=(4, 5), mean=(120.0, 110.0, 100.0),
                     std=(60.0, 50.0, 40.0), channel_order=order)
    inner = keras.Sequential([keras.Input((4, 5, 3)), keras.layers.Flatten()])
    px = np.random.default_rng(0).integers(0, 256, size=(3, 4, 5, 3)).astype(np.uint8)
    got = np.asarray(_with_normalization(inner, card)(px.astype(np.float32)))
    want = normalize_batch(px, card).reshape(3, -1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_converter_says_nothing_on_the_terminal(seed_run, sample3, capfd):
    """Issue 21 §3: every litert-int8 export printed the SavedModel writer's "Assets written to"
    and the converter's C++ "fully_quantize: 0, inference_type: 6, ..." lines."""
    from edgecnn.card import ModelCard
    from edgecnn.export.litert import convert_litert_int8
    from edgecnn.train.loop import load_run_model

    blob = convert_litert_int8(load_run_model(seed_run), ModelCard.load(seed_run), sample3.x_train[:8])
    assert blob[4:8] == b"TFL3"
    err = capfd.readouterr().err
    assert "fully_quantize" not in err and "Assets written" not in err, err
