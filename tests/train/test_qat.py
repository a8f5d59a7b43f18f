"""Quantization-aware training (edgecnn.train.qat -> edgecnn.export.qat): the fake-quant layers
convert to QDQ ONNX that matches TensorFlow, runs on onnxruntime's int8 kernels, and an
``export --qat-epochs`` variant passes the accuracy guard; user errors are one line."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytestmark = [pytest.mark.tf, pytest.mark.export]


def _to_onnx(model, shape, name="images"):
    from edgecnn.export._tf2onnx_compat import keras_to_onnx

    return keras_to_onnx(model, input_shape=shape, input_name=name, output_name="out", opset=17)


def _run(proto, x, optimized: Path | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _ops(proto) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in proto.graph.node))


@pytest.mark.parametrize("lo,hi", [(-1.0, 1.0), (-2.0, 2.0), (-1.3, 2.1), (0.0, 6.0), (-0.37, 0.05)])
def test_fake_quant_converts_to_a_qdq_pair_that_matches_tensorflow(lo, hi):
    """Symmetric ranges put TensorFlow's zero point on a .5 tie, which TF rounds up and tf2onnx to
    even: unnudged, every value would come out one step apart. FakeQuant's range avoids the tie."""
    import keras

    from edgecnn._keras_layers import FakeQuant

    inp = keras.Input((4, 4, 3))
    fq = FakeQuant()
    model = keras.Model(inp, fq(inp))
    fq.set_weights([np.float32(lo), np.float32(hi)])
    proto = _to_onnx(model, (4, 4, 3))
    assert _ops(proto) == {"QuantizeLinear": 1, "DequantizeLinear": 1}
    x = np.random.default_rng(0).normal(0, max(abs(lo), hi), (512, 4, 4, 3)).astype(np.float32)
    want, got = np.asarray(model(x)), _run(proto, x)
    step = (hi - lo) / 255
    assert np.abs(want - got).max() < 1e-5 * max(1.0, hi)  # no tie on random data: identical
    assert len(np.unique(np.round(got / step))) > 20  # really quantized, to the asked range
    assert got.min() >= min(lo, 0) - step and got.max() <= hi + step


def test_tf2onnx_refuses_narrow_range_which_fake_quant_never_uses():
    """Why FakeQuant passes narrow_range=False: tf2onnx 1.17 leaves a narrow-range op unconverted."""
    import keras
    import tensorflow as tf

    from edgecnn.errors import ArtifactError

    inp = keras.Input((2, 2, 1))
    out = keras.layers.Lambda(lambda t: tf.quantization.fake_quant_with_min_max_vars(t, -1.0, 1.0,
                                                                                     narrow_range=True))(inp)
    try:
        proto = _to_onnx(keras.Model(inp, out), (2, 2, 1))
    except ArtifactError:
        return
    assert "FakeQuantWithMinMaxVars" in _ops(proto)  # converted to nothing ONNX can run


@pytest.fixture(scope="module")
def mnv2_tiny():
    """mobilenet_v2_tiny with non-trivial batch-norm statistics, and normalized random images."""
    import keras

    from edgecnn.train.registry import build_model

    keras.utils.set_random_seed(0)
    model = build_model("mobilenet_v2_tiny", 10)
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 1.2, (192, 32, 32, 3)).astype(np.float32)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, rng.integers(0, 10, len(x)), epochs=1, batch_size=64, verbose=0)
    return model, x


def test_qat_model_folds_batch_norms_and_starts_where_the_float_model_is(mnv2_tiny):
    from edgecnn._keras_layers import FakeQuant, QATConv2D, QATDense, QATDepthwiseConv2D
    from edgecnn.train.qat import calibrate_ranges, qat_model

    model, x = mnv2_tiny
    qmodel, names = qat_model(model)
    kinds = collections.Counter(type(layer).__name__ for layer in qmodel.layers)
    assert kinds["BatchNormalization"] == 0
    source_kinds = collections.Counter(type(layer).__name__ for layer in model.layers)
    assert kinds["Identity"] == source_kinds["BatchNormalization"]
    assert all(isinstance(qmodel.get_layer(n), FakeQuant) for n in names) and "images_fq" in names
    for layer in model.layers:  # every weight layer computes with the int8 grid now
        if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense"):
            assert isinstance(qmodel.get_layer(layer.name), (QATConv2D, QATDepthwiseConv2D, QATDense))
    # after ReLU6 the range is bounded to [0, 6]; no quantizer between a convolution and its ReLU
    assert (qmodel.get_layer("stem_relu_fq").lower, qmodel.get_layer("stem_relu_fq").upper) == (0.0, 6.0)
    assert "stem_conv_fq" not in names and "stem_bn_fq" not in names and "probabilities_fq" not in names
    calibrate_ranges(qmodel, names, x)
    want, got = np.asarray(model(x, training=False)), np.asarray(qmodel(x, training=False))
    assert np.mean(want.argmax(1) == got.argmax(1)) >= 0.9
    assert np.abs(want - got).max() < 0.1


def test_qat_onnx_runs_on_int8_kernels_and_matches_keras(mnv2_tiny, tmp_path):
    import keras
    import onnx

    from edgecnn.export.qat import store_int8_weights
    from edgecnn.train.qat import calibrate_ranges, qat_model

    model, x = mnv2_tiny
    qmodel, names = qat_model(model)
    calibrate_ranges(qmodel, names, x)
    qmodel.save(tmp_path / "qat.keras")
    loaded = keras.models.load_model(tmp_path / "qat.keras", compile=False)  # the export side's view of it
    proto = store_int8_weights(_to_onnx(loaded, (32, 32, 3)), per_channel=True, qmax=127)
    onnx.checker.check_model(proto)
    ops = _ops(proto)
    assert ops["QuantizeLinear"] == len(names)
    int8 = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1]
    assert len(int8) == ops["Conv"] + ops.get("MatMul", 0)  # every weight stored as int8
    want = np.asarray(loaded(x, training=False))
    got = _run(proto, x, optimized=tmp_path / "opt.onnx")
    assert np.mean(want.argmax(1) == got.argmax(1)) >= 0.97
    assert np.abs(want - got).max() < 0.05
    fused = _ops(onnx.load(str(tmp_path / "opt.onnx")))
    assert fused.get("QLinearConv") == ops["Conv"] and "Conv" not in fused  # onnxruntime's int8 convolutions
    assert "Clip" not in fused  # ReLU6 folded into the uint8 range


def test_per_tensor_weights_use_one_scale(mnv2_tiny):
    import onnx

    from edgecnn.export.qat import store_int8_weights
    from edgecnn.train.qat import calibrate_ranges, qat_model

    model, x = mnv2_tiny
    qmodel, names = qat_model(model, per_channel=False, weight_bits=7)
    calibrate_ranges(qmodel, names, x[:64])
    proto = store_int8_weights(_to_onnx(qmodel, (32, 32, 3)), per_channel=False, qmax=63)
    inits = {i.name: i for i in proto.graph.initializer}
    weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized")
                 and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert weight_dq and all(len(inits[n.input[1]].dims) == 0 for n in weight_dq)
    assert max(np.abs(onnx.numpy_helper.to_array(inits[n.input[0]])).max() for n in weight_dq) == 63


def test_float_weights_are_not_passed_off_as_qat(mnv2_tiny):
    import keras

    from edgecnn._keras_layers import FakeQuant
    from edgecnn.errors import ArtifactError
    from edgecnn.export.qat import store_int8_weights

    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, keras.layers.Conv2D(4, 3)(FakeQuant()(inp)))
    with pytest.raises(ArtifactError, match="not on the int8 grid"):
        store_int8_weights(_to_onnx(model, (8, 8, 3)), per_channel=True, qmax=127)


# ------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory of seed_cnn_tiny on 3 classes of the embedded sample (1 epoch)."""
    import keras

    from edgecnn.card import ModelCard
    from edgecnn.datasets import load_dataset
    from edgecnn.runtime.preprocess import normalize_batch
    from edgecnn.train.registry import build_model

    keras.utils.set_random_seed(0)
    ds = load_dataset("sample", classes="0-2")
    card = ModelCard(name="tiny", architecture="mobilenet_v2_tiny", class_names=ds.class_names, input_size=(32, 32),
                     mean=(125.3, 123.0, 113.9), std=(63.0, 62.1, 66.7), normalization="dataset",
                     dataset=ds.describe())
    model = build_model("mobilenet_v2_tiny", ds.num_classes)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(normalize_batch(ds.x_train, card), ds.y_train, epochs=3, batch_size=32, verbose=0)
    root = tmp_path_factory.mktemp("runs") / "tiny"
    root.mkdir()
    model.save(root / "model.keras")
    card.save(root / "card.json")
    return root


def test_export_qat_epochs_writes_an_int8_variant_that_passes_the_guard(tiny_run, tmp_path, monkeypatch):
    from edgecnn.cli import main
    from edgecnn.export import read_card

    out = tmp_path / "export"
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    result = CliRunner().invoke(main, ["export", str(tiny_run), "-q", "int8", "--qat-epochs", "1", "--out", str(out),
                                       "--max-accuracy-drop", "10", "--cpu-target", "vnni"])
    assert result.exit_code == 0, result.output
    assert "QAT epoch 1/1" in result.output
    card = read_card(out / "model.int8.onnx")
    quant = card.export["quantization"]
    assert quant["method"] == "quantization-aware training" and quant["qat"]["epochs"] == 1
    assert quant["qat"]["train_images"] == 540 and quant["weight_bits"] == 8
    report = json.loads((out / "export_report.json").read_text())
    int8 = next(v for v in report["variants"] if v["precision"] == "int8")
    assert int8["passed"] and int8["ops"]["QuantizeLinear"] >= 10 and "Conv" in int8["ops"]
    assert int8["accuracy"] is not None and int8["top1_agreement"] >= 0.7
    assert list(work.iterdir()) == []  # the QAT model lived in a temporary folder, now gone


@pytest.mark.parametrize("args,message", [
    (["-q", "fp16", "--qat-epochs", "1"], "add -q int8"),
    (["-q", "int8", "--qat-epochs", "1", "--accuracy-aware"], "cannot be combined"),
])
def test_qat_option_errors_are_one_line(tiny_run, tmp_path, monkeypatch, args, message):
    from edgecnn.cli import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["export", str(tiny_run), "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []


def test_qat_on_an_onnx_source_asks_for_the_keras_model(tiny_run, tmp_path, monkeypatch):
    from edgecnn.cli import main

    onnx_file = tmp_path / "src" / "m.onnx"
    onnx_file.parent.mkdir()
    import keras

    from edgecnn.export._tf2onnx_compat import keras_to_onnx
    from edgecnn.export.onnx import save_onnx

    model = keras.models.load_model(tiny_run / "model.keras", compile=False)
    save_onnx(keras_to_onnx(model, input_shape=(32, 32, 3), input_name="images", output_name="out", opset=17),
              onnx_file)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    result = CliRunner().invoke(main, ["export", str(onnx_file), "-q", "int8", "--qat-epochs", "2",
                                       "--calibration-data", str(tmp_path / "src")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "fine-tunes a Keras model" in result.output and "onnx" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert list(work.iterdir()) == [] and not (tmp_path / "src" / "m.onnx-export").exists()
