"""The card's pixel mapping inside each backend (edgecnn.runtime.pixels): the same model input as
numpy's, bit for bit on onnxruntime and LiteRT, for every channel order, layout, dtype and batch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgecnn.card import ONNX_METADATA_KEY, ModelCard
from edgecnn.errors import InputError
from edgecnn.presets import ModelOverrides
from edgecnn.runtime import Classifier, default_model_path
from edgecnn.runtime.core import InferenceModel
from edgecnn.runtime.pixels import PixelMapping, fold_onnx, lookup_table

H, W = 6, 5


def reference(pixels: np.ndarray, card: ModelCard) -> np.ndarray:
    """The mapping written out plainly: RGB -> model channel order, (x - mean) / std as float32
    multiplies by the reciprocal, then the layout."""
    x = pixels.astype(np.float32)
    if card.channel_order == "BGR":
        x = x[..., [2, 1, 0]]
    inv = np.asarray([1.0 / s for s in card.std], np.float32)
    x = (x - np.asarray(card.mean, np.float32)) * inv
    return np.transpose(x, (0, 3, 1, 2)) if card.layout == "nchw" else x


def echo_model(path, card: ModelCard, *, dtype: int = TensorProto.FLOAT, batch: int | str = "N") -> str:
    """An ONNX file whose output is its own input, flattened (a ``raw`` model): what the backend
    feeds the graph, made visible."""
    c = card.channels
    shape = [batch, c, H, W] if card.layout == "nchw" else [batch, H, W, c]
    nodes = [helper.make_node("Flatten", ["x"], ["flat"])]
    nodes.append(helper.make_node("Cast", ["flat"], ["y"], to=TensorProto.FLOAT))
    graph = helper.make_graph(nodes, "echo", [helper.make_tensor_value_info("x", dtype, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, c * H * W])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {ONNX_METADATA_KEY: card.to_json()})
    onnx.save(model, str(path))
    return str(path)


def card_of(**kw) -> ModelCard:
    base = dict(name="echo", task="raw", input_size=(H, W), input_name="x", output_name="y", channels=3,
                mean=(120.0, 110.0, 100.0), std=(60.0, 50.0, 40.0), layout="nhwc")
    return ModelCard(**{**base, **kw})


CARDS = {
    "nhwc per-channel": card_of(),
    "nchw per-channel": card_of(layout="nchw"),
    "nhwc uniform": card_of(mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0)),
    "nchw uniform": card_of(layout="nchw", mean=(127.5,) * 3, std=(127.5,) * 3),
    "bgr nchw": card_of(layout="nchw", channel_order="BGR", mean=(103.53, 116.28, 123.675),
                        std=(57.375, 57.12, 58.395)),
    "bgr nhwc": card_of(channel_order="BGR"),
    "gray": card_of(channels=1, mean=(33.0,), std=(77.0,)),
}


@pytest.fixture(scope="module")
def px() -> np.ndarray:
    rng = np.random.default_rng(7)
    out = rng.integers(0, 256, size=(5, H, W, 3), dtype=np.uint8)
    out[0, 0, 0] = (0, 255, 128)  # both ends of the range
    return out


def pixels_for(card: ModelCard, px: np.ndarray) -> np.ndarray:
    return px[..., :1] if card.channels == 1 else px


@pytest.mark.parametrize("name", list(CARDS))
def test_onnxruntime_graph_gives_numpys_input_bit_for_bit(tmp_path, px, name):
    card = CARDS[name]
    model = InferenceModel(echo_model(tmp_path / "echo.onnx", card))
    assert model.pixels_in_graph and model.pixel_note.startswith("onnxruntime graph")
    p = pixels_for(card, px)
    got = model.run_pixels(p)[0]
    want = reference(p, card).reshape(len(p), -1)
    np.testing.assert_array_equal(got, want)
    # the numpy path (pixels_in_graph=False) and the float path of the same object agree too
    plain = InferenceModel(echo_model(tmp_path / "echo2.onnx", card), pixels_in_graph=False)
    assert not plain.pixels_in_graph and plain.pixel_note.startswith("numpy")
    np.testing.assert_array_equal(plain.run_pixels(p)[0], want)
    np.testing.assert_array_equal(model.run_all(model.preprocess(p))[0], want)


@pytest.mark.parametrize("batch", [1, 2, "N"])
def test_fixed_and_dynamic_batches_are_chunked_alike(tmp_path, px, batch):
    card = CARDS["nchw per-channel"]
    model = InferenceModel(echo_model(tmp_path / "echo.onnx", card, batch=batch))
    assert model.pixels_in_graph
    np.testing.assert_array_equal(model.run_pixels(px)[0], reference(px, card).reshape(len(px), -1))


def test_float16_input_gets_the_float32_result_cast(tmp_path, px):
    card = CARDS["nhwc per-channel"]
    model = InferenceModel(echo_model(tmp_path / "echo.onnx", card, dtype=TensorProto.FLOAT16))
    assert model.pixels_in_graph
    want = reference(px, card).astype(np.float16).astype(np.float32).reshape(len(px), -1)
    np.testing.assert_array_equal(model.run_pixels(px)[0], want)


def test_serialized_model_folds_and_reopens_its_float_session(tmp_path, px):
    card = CARDS["bgr nhwc"]
    data = open(echo_model(tmp_path / "echo.onnx", card), "rb").read()
    model = InferenceModel(data)
    assert model.pixels_in_graph and model._session is None  # one session held, the folded one
    want = reference(px, card).reshape(len(px), -1)
    np.testing.assert_array_equal(model.run_pixels(px)[0], want)
    np.testing.assert_array_equal(model.run_all(model.preprocess(px))[0], want)  # float session, opened now
    assert model.session.get_inputs()[0].type == "tensor(float)"


def test_float_pixels_and_wrong_shapes(tmp_path, px):
    card = CARDS["nhwc per-channel"]
    model = InferenceModel(echo_model(tmp_path / "echo.onnx", card))
    halves = px.astype(np.float32) + 0.5  # not uint8: numpy's path, values kept as given (no rounding)
    halves[halves > 255] = 255
    np.testing.assert_allclose(model.run_pixels(halves)[0], reference(halves, card).reshape(len(px), -1), rtol=1e-6)
    with pytest.raises(InputError, match=r"Expected pixels of shape \(N, 6, 5, 3\)"):
        model.run_pixels(px[:, :4])
    with pytest.raises(InputError, match="expected raw pixels in 0-255"):
        model.run_pixels(px.astype(np.int16) - 1)
    with pytest.raises(InputError, match="Expected pixels"):
        model.run_pixels(px[:0])


def test_files_that_cannot_carry_it_keep_numpy(tmp_path, px):
    card = CARDS["nhwc per-channel"]
    path = echo_model(tmp_path / "echo.onnx", card)
    proto = onnx.load(path)
    # an initializer is needed for external data to mean anything: add one the graph does not use
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(64, np.float32), "unused"))
    onnx.save(proto, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              size_threshold=0, location="ext.data")
    assert fold_onnx(tmp_path / "ext.onnx", card, "x") is None
    model = InferenceModel(tmp_path / "ext.onnx")
    assert not model.pixels_in_graph and "cannot carry" in model.pixel_note
    np.testing.assert_array_equal(model.run_pixels(px)[0], reference(px, card).reshape(len(px), -1))


@pytest.mark.parametrize("name", ["nhwc per-channel", "nchw per-channel", "bgr nchw", "gray"])
def test_openvino_preprocessor_matches_numpy(tmp_path, px, name):
    pytest.importorskip("openvino")
    card = CARDS[name]
    model = InferenceModel(echo_model(tmp_path / "echo.onnx", card), backend="openvino")
    assert model.pixels_in_graph and model.pixel_note.startswith("OpenVINO PrePostProcessor")
    p = pixels_for(card, px)
    # OpenVINO divides by std where numpy multiplies by its reciprocal: one rounding apart
    np.testing.assert_allclose(model.run_pixels(p)[0], reference(p, card).reshape(len(p), -1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["nhwc per-channel", "bgr nhwc", "gray", "nhwc uniform"])
def test_lookup_table_is_numpys_mapping(px, name):
    card = CARDS[name]
    m = PixelMapping.of(card)
    table = lookup_table(m)
    assert table.shape == (256, card.channels) and table.dtype == np.float32
    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(card.channels, axis=3)
    want = reference(values, card.replace(channel_order="RGB", input_size=(16, 16)))  # per model channel
    np.testing.assert_array_equal(table, want.reshape(256, card.channels))


def test_lookup_table_quantizes_like_tflite():
    m = PixelMapping.of(card_of(mean=(0.0,) * 3, std=(255.0,) * 3))
    q = lookup_table(m, dtype=np.int8, quantization=(1 / 255, -128))
    np.testing.assert_array_equal(q[:, 0], np.arange(256) - 128)  # scale 1/255: pixel - 128, exactly
    m = PixelMapping.of(card_of())
    q = lookup_table(m, dtype=np.int8, quantization=(0.02, 3))
    x = (np.arange(256, dtype=np.float32)[:, None] - np.float32([120, 110, 100])) * np.float32([1 / 60, 1 / 50, 1 / 40])
    np.testing.assert_array_equal(q, np.clip(np.rint(x.astype(np.float64) / 0.02) + 3, -128, 127).astype(np.int8))


def test_litert_lookup_matches_numpy_on_a_real_tflite(px):
    """MediaPipe's face detector (a float-input .tflite from a public wheel), with a per-channel
    mapping and BGR: the table feeds LiteRT exactly what numpy's path feeds it."""
    pytest.importorskip("ai_edge_litert")
    from pathlib import Path

    path = Path(__file__).parents[1] / "data" / "foreign" / "face_detection_short_range.tflite"
    kw = dict(overrides=ModelOverrides(mean=(120.0, 110.0, 100.0), std=(60.0, 50.0, 40.0), task="raw"))
    fast = InferenceModel(path, **kw)
    plain = InferenceModel(path, pixels_in_graph=False, **kw)
    assert fast.pixels_in_graph and fast.pixel_note.startswith("LiteRT lookup table")
    h, w = fast.card.input_size
    p = np.random.default_rng(1).integers(0, 256, size=(2, h, w, 3), dtype=np.uint8)
    for a, b in zip(fast.run_pixels(p), plain.run_pixels(p)):
        np.testing.assert_array_equal(a, b)


def test_packaged_model_answers_as_before(px):
    """seed_cnn fp32 and int8 on the embedded CIFAR-10 sample: the same probabilities from the
    folded graph as from numpy's path."""
    from edgecnn.datasets import load_embedded_sample

    images = load_embedded_sample()[2]
    for path in (default_model_path(), default_model_path().with_name("seed_cnn_cifar10.int8.onnx")):
        fast, plain = Classifier(path), Classifier(path, pixels_in_graph=False)
        assert fast.pixels_in_graph
        np.testing.assert_array_equal(fast.predict_proba(images), plain.predict_proba(images))
