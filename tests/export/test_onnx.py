"""Keras -> ONNX round trips over the zoo: parity, I/O names, batch axis, embedded card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgecnn.card import ONNX_METADATA_KEY, ModelCard
from tests.export.conftest import make_run

pytestmark = [pytest.mark.tf, pytest.mark.export]


def _tiny_models():
    """The classifiers' tiny models (segmenters and detectors export in tests/train/test_tasks.py)."""
    from edgecnn.train.registry import get_model_spec, list_models

    return [m for m in list_models() if m.endswith("_tiny") and get_model_spec(m).task == "classify"]


@pytest.mark.slow
@pytest.mark.parametrize("architecture", _tiny_models())
def test_every_tiny_zoo_model_exports_with_parity(tmp_path, sample3, architecture):
    from edgecnn.export import ExportConfig, export_run, read_card

    run = make_run(tmp_path / architecture, architecture, sample3, epochs=1)
    report = export_run(run, out_dir=tmp_path / "out", config=ExportConfig(parity_images=64, test_images=64))
    # export_run raises unless top-1 agreement is 100% and max |diff| <= atol; check the numbers anyway.
    assert report.parity["top1_agreement"] == 1.0
    assert report.parity["max_abs_diff"] <= 1e-4
    assert report.parity["batch1_max_abs_diff"] <= 1e-4
    card = read_card(tmp_path / "out" / "model.onnx")
    assert card.architecture == architecture and card.precision == "fp32"


@pytest.mark.slow
def test_keras_applications_transfer_model_exports(tmp_path, sample3):
    """A keras.applications backbone (MobileNetV2, random weights: no download) with the resize
    layer that transfer models put in front of it."""
    from edgecnn.export import ExportConfig, export_run
    from edgecnn.train.transfer import build_transfer_model

    model, pre = build_transfer_model("mobilenet_v2", 3, input_size=(32, 32), weights="none", backbone_input_size=64)
    run = make_run(tmp_path / "transfer", "transfer:mobilenet_v2", sample3, epochs=0, model=model,
                   mean=pre.mean, std=pre.std)
    report = export_run(run, out_dir=tmp_path / "out", config=ExportConfig(parity_images=32, test_images=32))
    assert report.parity["top1_agreement"] == 1.0


def test_io_names_batch_axis_and_card_round_trip(seed_run, seed_export):
    import onnx

    report, out = seed_export
    proto = onnx.load(str(out / "model.onnx"))
    (inp,), (outp,) = proto.graph.input, proto.graph.output
    assert inp.name == "images" and outp.name == "probabilities"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 32, 32, 3]
    assert outp.type.tensor_type.shape.dim[0].dim_param == "batch"

    written = ModelCard.load(seed_run)
    meta = {p.key: p.value for p in proto.metadata_props}
    card = ModelCard.from_json(meta[ONNX_METADATA_KEY])
    for key in ("name", "architecture", "class_names", "input_size", "mean", "std", "channel_order", "dataset"):
        assert getattr(card, key) == getattr(written, key), key
    assert card.layout == "nhwc" and card.output_kind == "probabilities" and card.precision == "fp32"
    assert card.metrics["test_accuracy"] == written.metrics["test_accuracy"]
    assert 0 < card.metrics["onnx_test_accuracy"] <= 1
    assert len(card.export["source_sha256"]) == 64
    assert card.export["opset"] == 17 and card.export["verification"]["top1_agreement"] == 1.0
    assert {"tensorflow", "tf2onnx", "onnx", "onnxruntime", "edgecnn"} <= set(card.versions)
    assert json.loads(card.to_json()) == json.loads(ModelCard.from_json(card.to_json()).to_json())


def test_runtime_preprocessing_from_card_alone_matches_keras(seed_run, seed_export, sample3):
    """The runtime's view: card from the file, normalize_batch, onnxruntime; equals Keras."""
    import keras
    import onnxruntime as ort

    from edgecnn.export import read_card
    from edgecnn.runtime.preprocess import normalize_batch

    _, out = seed_export
    card = read_card(out / "model.onnx")
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = sample3.x_test[:20]
    got = sess.run(None, {card.input_name: normalize_batch(x, card)})[0]
    want = keras.models.load_model(seed_run / "model.keras").predict(normalize_batch(x, card), verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_nchw_layout(tmp_path, seed_run, sample3):
    import onnxruntime as ort

    from edgecnn.export import ExportConfig, export_run, read_card
    from edgecnn.runtime.preprocess import normalize_batch

    export_run(seed_run, out_dir=tmp_path, config=ExportConfig(layout="nchw", parity_images=32, test_images=32))
    card = read_card(tmp_path / "model.onnx")
    assert card.layout == "nchw" and card.input_shape() == (None, 3, 32, 32)
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == ["batch", 3, 32, 32]
    probs = sess.run(None, {"images": normalize_batch(sample3.x_test[:4], card)})[0]
    assert probs.shape == (4, 3)


def test_unconvertible_op_is_named(tmp_path):
    import keras
    import tensorflow as tf

    from edgecnn.errors import ArtifactError
    from edgecnn.export._tf2onnx_compat import keras_to_onnx

    class Lgamma(keras.layers.Layer):
        def call(self, x):
            return tf.math.lgamma(x * x + 1.0)

    inputs = keras.Input((4, 4, 3), name="images")
    x = keras.layers.GlobalAveragePooling2D()(Lgamma()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    with pytest.raises(ArtifactError, match=r"cannot convert TensorFlow op Lgamma"):
        keras_to_onnx(model, input_shape=(4, 4, 3), input_name="images", output_name="probabilities", opset=17)
