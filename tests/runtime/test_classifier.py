"""Classifier: card reading, exact preprocessing, predictions, providers and bad inputs."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError, ConfigError, InputError, ProviderError
from edgecnn.presets import ModelOverrides
from edgecnn.runtime import Classifier, Prediction, default_model_path, load_image, normalize_batch
from tests.runtime.conftest import encode, reference_logits, softmax

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_import_loads_no_tensorflow():
    code = ("import sys, edgecnn.runtime, edgecnn.runtime.benchmark, edgecnn.cli; "
            "print(sorted({'tensorflow', 'keras', 'tf2onnx', 'onnx'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_reads_card_and_providers(models):
    clf = Classifier(models["nhwc"])
    assert isinstance(clf.card, ModelCard) and clf.card.name == "tiny"
    assert clf.labels == ["cat", "dog", "bird", "fish"]
    assert clf.providers == ["CPUExecutionProvider"]
    assert clf.info.creation_s > 0


@pytest.mark.parametrize("name", ["nhwc", "nchw_logits"])
def test_probabilities_match_numpy(models, weights, pixels, name):
    clf = Classifier(models[name], threads=1)
    proba = clf.predict_proba(pixels)
    np.testing.assert_allclose(proba, softmax(reference_logits(pixels, weights)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


def test_predict_top_k(models, weights, pixels):
    clf = Classifier(models["nhwc"])
    preds = clf.predict(pixels, top_k=2)
    ref = softmax(reference_logits(pixels, weights))
    assert len(preds) == 3 and all(len(p) == 2 for p in preds)
    for row, p in zip(ref, preds):
        best = int(np.argmax(row))
        assert p[0] == Prediction(weights["labels"][best], best, pytest.approx(float(row[best]), rel=1e-5))
        assert p[0].probability >= p[1].probability
    assert len(clf.predict(pixels[:1], top_k=50)[0]) == 4  # clamped to the class count
    with pytest.raises(InputError, match="top_k"):
        clf.predict(pixels, top_k=0)


def test_all_input_kinds_agree(models, pixels, tmp_path):
    clf = Classifier(models["nhwc"])
    img = Image.fromarray(pixels[0])
    path = tmp_path / "a.png"
    img.save(path)
    variants = [pixels[0], pixels[0].astype(np.float32), img, encode(img), str(path), path]
    out = clf.predict_proba(variants)
    np.testing.assert_allclose(out, np.repeat(out[:1], len(variants), axis=0), rtol=1e-6)


def test_preprocessing_identical_to_training(models, tmp_path):
    """Same file -> same tensor as training's decoder (edgecnn.datasets.read_image) + normalize_batch."""
    from edgecnn.datasets import read_image

    rgb = np.random.default_rng(1).integers(0, 256, size=(21, 13, 3), dtype=np.uint8)
    path = tmp_path / "odd_size.png"
    Image.fromarray(rgb).save(path)
    clf = Classifier(models["nchw_logits"])
    train_tensor = normalize_batch(read_image(path, clf.card.input_size)[None], clf.card)
    np.testing.assert_array_equal(clf.preprocess([path]), train_tensor)
    assert clf.preprocess([path]).shape == (1, 3, 8, 8)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16"])
def test_converts_modes_like_training(mode):
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).convert(mode)
    data = encode(img, "TIFF" if mode == "CMYK" else "PNG")
    out = load_image(data, (8, 8))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 1), (8, 8, 4), (30, 20, 3)])
def test_array_shapes(models, shape):
    clf = Classifier(models["nhwc"])
    x = np.random.default_rng(3).integers(0, 256, size=shape, dtype=np.uint8)
    assert clf.load_image(x).shape == (8, 8, 3)


def test_no_card_needs_overrides(models, weights, pixels):
    clf = Classifier(models["nocard"], overrides=ModelOverrides(mean=(120, 110, 100), std=(60, 50, 40),
                                                                class_names=("cat", "dog", "bird", "fish")))
    assert clf.card.input_size == (8, 8) and clf.card.layout == "nhwc"
    np.testing.assert_allclose(clf.predict_proba(pixels), softmax(reference_logits(pixels, weights)), rtol=1e-5)
    assert Classifier(models["nocard"]).labels == ["0", "1", "2", "3"]  # labels from the output shape


def test_overrides_on_a_card(models):
    clf = Classifier(models["nhwc"], overrides=ModelOverrides(class_names=("a", "b", "c", "d"), mean=(0, 0, 0),
                                                              std=(1, 1, 1)))
    assert clf.labels == ["a", "b", "c", "d"] and clf.card.std == (1.0, 1.0, 1.0)
    with pytest.raises(ArtifactError, match="expects"):
        Classifier(models["nhwc"], overrides=ModelOverrides(input_size=(16, 16)))
    with pytest.raises(ConfigError, match="std"):  # refused by the overrides themselves, before the model opens
        Classifier(models["nhwc"], overrides=ModelOverrides(mean=(0, 0, 0), std=(0, 1, 1)))


def test_card_values_are_overrides_not_keywords(models):
    with pytest.raises(TypeError, match="overrides=ModelOverrides"):
        Classifier(models["nhwc"], labels=["a", "b", "c", "d"])


def test_cuda_request_on_cpu_build_raises(models):
    if HAS_CUDA:
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ProviderError, match="CUDAExecutionProvider.*CPUExecutionProvider"):
        Classifier(models["nhwc"], provider="cuda")


def test_cuda_request_names_the_gpu_install_step(models):
    if HAS_CUDA:
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ProviderError,
                       match="pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"):
        Classifier(models["nhwc"], provider="cuda")


@pytest.mark.parametrize("installed, conflict", [
    ({}, False),
    ({"onnxruntime": "1.32.0"}, False),
    ({"onnxruntime-gpu": "1.31.1"}, False),
    ({"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}, True),
])
def test_side_by_side_onnxruntime_builds_are_detected(installed, conflict):
    from edgecnn.runtime.session import onnxruntime_conflict

    message = onnxruntime_conflict(installed)
    assert (message is not None) == conflict
    if conflict:
        assert "onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1" in message
        assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in message
        assert "\n" not in message


def test_side_by_side_builds_named_in_the_cuda_error(models, monkeypatch):
    if HAS_CUDA:
        pytest.skip("this onnxruntime has CUDA")
    from importlib import metadata

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "1.31.1" if name == "onnxruntime-gpu" else real(name))
    with pytest.raises(ProviderError, match="Both onnxruntime .* and onnxruntime-gpu 1.31.1 are installed"):
        Classifier(models["nhwc"], provider="cuda")


def test_cuda_fallback_when_allowed_warns(models, caplog):
    if HAS_CUDA:
        pytest.skip("this onnxruntime has CUDA")
    with caplog.at_level(logging.WARNING):
        clf = Classifier(models["nhwc"], provider="cuda", allow_fallback=True)
    assert clf.providers == ["CPUExecutionProvider"]
    assert clf.info.fallback and "Falling back" in caplog.text


def test_auto_and_unknown_provider(models):
    assert Classifier(models["nhwc"], provider="auto").providers[0] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    with pytest.raises(ProviderError, match="Unknown provider"):
        Classifier(models["nhwc"], provider="tpu")


def test_corrupt_and_missing_onnx(models, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(models["nhwc"].read_bytes()[:200])
    with pytest.raises(ArtifactError, match="Cannot load .*bad.onnx as an ONNX model"):
        Classifier(bad)
    with pytest.raises(ArtifactError, match="does not exist"):
        Classifier(tmp_path / "missing.onnx")


def test_default_model_path():
    try:
        path = default_model_path()
    except ArtifactError as err:
        assert "edgecnn export" in str(err)
    else:
        assert path.name == "seed_cnn_cifar10.onnx" and path.is_file()


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 9, 8, 3), np.uint8), r"shape \(N, 8, 8, 3\)"),
    (np.zeros((2, 8, 8, 3), bool), "dtype bool"),
    (np.full((1, 8, 8, 3), np.nan, np.float32), "NaN"),
    (np.full((1, 8, 8, 3), -1.0, np.float32), "0-255"),
    (np.zeros((8, 8, 2), np.uint8), "HxWx3"),
    (np.zeros((2, 2, 8, 8, 3), np.uint8), "HxWx3"),
    (b"not an image at all", "Cannot read"),
    ([], "No images"),
    (12, "Cannot use a int"),
    ("/nonexistent/cat.jpg", "does not exist"),
])
def test_bad_inputs(models, bad, match):
    with pytest.raises(InputError, match=match):
        Classifier(models["nhwc"]).predict(bad)


def test_truncated_image(models, pixels):
    data = encode(Image.fromarray(np.repeat(np.repeat(pixels[0], 8, 0), 8, 1)), "JPEG")
    with pytest.raises(InputError, match="Cannot read"):
        Classifier(models["nhwc"]).predict(data[: len(data) // 2])


def test_huge_image_refused_before_decoding(models):
    clf = Classifier(models["nhwc"], max_pixels=10_000)
    big = encode(Image.new("RGB", (200, 100)))
    with pytest.raises(InputError, match="200x100 = 20,000 pixels"):
        clf.predict(big)
    with pytest.raises(InputError, match="pixels"):
        clf.predict(np.zeros((200, 100, 3), np.uint8))


def test_run_checks_the_tensor(models):
    clf = Classifier(models["nchw_logits"])
    assert clf.run(np.zeros((2, 3, 8, 8), np.float32)).shape == (2, 4)
    for bad, match in [(np.zeros((2, 8, 8, 3), np.float32), r"shape \(N, 3, 8, 8\)"),
                       (np.zeros((2, 3, 8, 8), np.int64), "float32"),
                       (np.full((1, 3, 8, 8), np.inf, np.float32), "NaN")]:
        with pytest.raises(InputError, match=match):
            clf.run(bad)
