"""The Open Inference Protocol, driven by Triton's own Python client (tritonclient.http) unchanged."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from edgecnn.runtime import Classifier, default_model_path
from tests.serve.conftest import TOKEN, running_server

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

NAME = "seed_cnn_cifar10"


@pytest.fixture(scope="module")
def server():
    with running_server(None, max_batch=16, max_delay_ms=2) as srv:
        yield srv


@pytest.fixture()
def client(server):
    c = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    test = np.asarray(Image.open(default_model_path().parents[1] / "cifar10_sample" / "test.webp"))
    return np.stack([test[:32, 32 * i:32 * (i + 1)] for i in range(4)])  # four real test images


@pytest.fixture(scope="module")
def reference(pixels) -> tuple[Classifier, np.ndarray]:
    clf = Classifier(default_model_path())
    return clf, clf.predict_proba(pixels)


def _infer(client, x: np.ndarray, datatype: str, *, binary: bool = True, outputs=None):
    inp = httpclient.InferInput("images", list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=binary)
    return client.infer(NAME, [inp], outputs=outputs)


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    meta = client.get_model_metadata(NAME)
    assert meta["name"] == NAME and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 32, 32, 3]}]
    assert meta["outputs"][0]["shape"] == [-1, 10]
    server = client.get_server_metadata()
    assert server["name"] == "edgecnn" and "binary_tensor_data" in server["extensions"]
    assert not client.is_model_ready("nope")


def test_model_config_for_tritonclient(client):
    """Issue 21 §3: tritonclient's get_model_config() was a 404."""
    config = client.get_model_config(NAME)
    assert config["name"] == NAME and config["max_batch_size"] == 16
    assert config["input"] == [{"name": "images", "data_type": "TYPE_FP32", "dims": [32, 32, 3]}]
    assert config["output"][0]["dims"] == [10] and config["platform"] == "onnxruntime_onnx"
    version = client.get_model_metadata(NAME)["versions"][0]
    assert client.get_model_config(NAME, model_version=version)["name"] == NAME
    with pytest.raises(InferenceServerException) as err:
        client.get_model_config("nope")
    assert err.value.status() == "404"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_fp32_tensors_match_the_runtime(client, pixels, reference, binary):
    clf, proba = reference
    result = _infer(client, clf.preprocess(pixels), "FP32", binary=binary)
    np.testing.assert_allclose(result.as_numpy("probabilities"), proba, rtol=1e-5, atol=1e-6)
    assert result.get_response()["model_name"] == NAME


def test_uint8_pixels_and_bytes_images(client, pixels, reference):
    _, proba = reference
    np.testing.assert_allclose(_infer(client, pixels, "UINT8").as_numpy("probabilities"), proba, rtol=1e-5,
                               atol=1e-6)
    pngs = []
    for px in pixels:
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, "PNG")
        pngs.append(buf.getvalue())
    images = np.array(pngs, dtype=np.object_)
    np.testing.assert_allclose(_infer(client, images, "BYTES").as_numpy("probabilities"), proba, rtol=1e-5, atol=1e-6)


def test_classification_extension(client, pixels, reference):
    clf, proba = reference
    out = httpclient.InferRequestedOutput("probabilities", binary_data=True, class_count=3)
    top = _infer(client, clf.preprocess(pixels), "FP32", outputs=[out]).as_numpy("probabilities")
    assert top.shape == (4, 3)
    score, index, label = top[0][0].decode().split(":")
    best = int(proba[0].argmax())
    assert int(index) == best and label == clf.labels[best] and abs(float(score) - proba[0, best]) < 1e-5


def test_errors_are_v2_json_4xx(client, reference, pixels):
    clf, _ = reference
    x = clf.preprocess(pixels)
    with pytest.raises(InferenceServerException, match="has the input 'images', not 'x'") as err:
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        client.infer(NAME, [inp])
    assert err.value.status() == "422"
    with pytest.raises(InferenceServerException, match="takes FP32") as err:
        _infer(client, x[:, :16], "FP32")
    assert err.value.status() == "422"
    with pytest.raises(InferenceServerException, match="No model named") as err:
        client.infer("nope", [httpclient.InferInput("images", [1, 32, 32, 3], "FP32")])
    assert err.value.status() == "404"


def test_token_protects_v2_but_not_its_probes(model_dir):
    with running_server(model_dir / "tiny_nhwc.onnx", token=TOKEN) as srv:
        anon = httpclient.InferenceServerClient(srv.url.removeprefix("http://"))
        assert anon.is_server_live() and anon.is_server_ready()
        with pytest.raises(InferenceServerException, match="bearer token"):
            anon.get_model_metadata("tiny_nhwc")
        authed = httpclient.InferenceServerClient(srv.url.removeprefix("http://"))
        meta = authed.get_model_metadata("tiny_nhwc", headers={"Authorization": f"Bearer {TOKEN}"})
        assert meta["inputs"][0]["shape"] == [-1, 8, 8, 3]
        anon.close()
        authed.close()


# ------------------------------------------- issue 21 §1.1: bodies that gave a 500 and two tracebacks
def _spec(**over):
    return {"name": "images", "datatype": "FP32", "shape": [1, 32, 32, 3], "data": [0.0] * 3072, **over}


@pytest.mark.parametrize("body, status, says", [
    ({"inputs": [_spec(datatype="BYTES", shape=[1], data=["中"])]}, 400, "latin-1"),
    ({"inputs": [_spec(datatype="BYTES", shape=[1], data=["\U0001F600"])]}, 400, "latin-1"),
    ({"inputs": [_spec(datatype="BYTES", shape=[1], data=["\ud800"])]}, 400, "latin-1"),
    ({"inputs": [_spec()], "outputs": [{"name": "probabilities", "parameters": ["binary_data"]}]}, 400, "parameters"),
    ({"inputs": [_spec()], "outputs": [{"name": "probabilities", "parameters": "binary"}]}, 400, "parameters"),
    ({"inputs": [_spec()], "parameters": ["x"]}, 400, "parameters"),
    ({"inputs": [_spec(parameters="binary")]}, 400, "parameters"),
    ({"inputs": [_spec(shape=[10 ** 400])]}, 400, "shape"),
    ({"inputs": [_spec(shape=[2 ** 62, 2 ** 62])]}, 400, "shape"),
    ({"inputs": [_spec(shape=[True, 32, 32, 3])]}, 400, "shape"),
    ({"inputs": [_spec(shape=[0, 32, 32, 3], data=[])]}, 400, "no rows"),
    ({"inputs": [_spec(datatype="UINT8", shape=[1, 32], data=[0] * 32)]}, 422, "UINT8"),
])
def test_hostile_v2_bodies_are_one_json_4xx_without_a_traceback(server, body, status, says, caplog):
    import httpx

    data = json.dumps(body, ensure_ascii=True).replace("\\\\ud800", "\\ud800").encode()
    with caplog.at_level("DEBUG"):
        res = httpx.post(f"{server.url}/v2/models/{NAME}/infer", content=data, timeout=10)
    assert res.status_code == status, res.text
    assert says in res.json()["error"], res.json()
    assert "Traceback" not in caplog.text and "Exception in ASGI" not in caplog.text


def test_v2_parser_fuzzed_on_every_field_answers_4xx_or_a_tensor():
    """hypothesis builds requests from every field of the protocol with values of every JSON
    type (and binary tails): the parser returns a tensor or raises a 4xx ServeError, nothing else."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from edgecnn.serve.config import ServeConfig
    from edgecnn.serve.errors import ServeError
    from edgecnn.serve.models import load_models
    from edgecnn.serve.v2 import parse_infer_request

    (model,) = load_models(None, ServeConfig()).values()
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2, 2 ** 70), st.floats(allow_nan=True),
                        st.text(max_size=4))
    anything = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                            max_leaves=8)
    params = st.one_of(anything, st.fixed_dictionaries({}, optional={
        "binary_data_size": st.one_of(st.integers(-5, 5000), anything), "classification": anything,
        "binary_data": anything, "binary_data_output": anything}))
    shape = st.one_of(anything, st.lists(st.one_of(st.integers(-1, 40), st.booleans(), st.just(10 ** 30)),
                                         max_size=5))
    spec = st.fixed_dictionaries({}, optional={
        "name": st.one_of(st.just("images"), anything), "datatype": st.sampled_from(
            ["FP32", "FP16", "FP64", "UINT8", "BYTES", "INT8", "BOOL", "x"]), "shape": shape,
        "data": st.one_of(anything, st.lists(st.floats(0, 255), max_size=40), st.lists(st.text(max_size=3),
                                                                                         max_size=3)),
        "parameters": params})
    request = st.fixed_dictionaries({"inputs": st.one_of(st.lists(spec, max_size=2), anything)}, optional={
        "id": anything, "parameters": params, "outputs": st.one_of(anything, st.lists(
            st.fixed_dictionaries({"name": st.one_of(st.just("probabilities"), anything)},
                                  optional={"parameters": params}), max_size=2))})

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(request, st.binary(max_size=64))
    def check(req, tail):
        head = json.dumps(req).encode()
        try:
            x, fits, answer = parse_infer_request(model, head + tail, str(len(head)) if tail else None, 64)
        except ServeError as err:
            assert 400 <= err.status < 500, err
            return
        assert x.ndim == 4 and len(fits) == x.shape[0] >= 1

    check()


@pytest.mark.parametrize("length", ["1_2", "+12", "12.0", "0x0c"])  # int() took the first two
def test_header_length_is_plain_digits(server, length):
    import httpx

    res = httpx.post(f"{server.url}/v2/models/{NAME}/infer", content=b'{"inputs": []}' + b"\0" * 8,
                     headers={"Inference-Header-Content-Length": length}, timeout=10)
    assert res.status_code == 400 and "must be the length of the JSON header" in res.json()["error"]


def test_a_bytes_tensor_of_two_million_elements_is_refused_before_parsing(server):
    """Issue 21 §1.3: 2M empty BYTES elements were unpacked (seconds of GIL) before their 413."""

    import httpx

    n = 2_000_000
    head = json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [n],
                                   "parameters": {"binary_data_size": 4 * n}}]}).encode()
    t0 = time.perf_counter()
    res = httpx.post(f"{server.url}/v2/models/{NAME}/infer", content=head + b"\0" * (4 * n),
                     headers={"Inference-Header-Content-Length": str(len(head))}, timeout=30)
    assert res.status_code == 413 and "rows in one request" in res.json()["error"]
    assert time.perf_counter() - t0 < 5


def test_multipart_with_100k_parts_stops_at_the_17th(server):
    import httpx

    body = b"".join(b"--xyz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\r\n" for _ in range(100_000))
    body += b"--xyz--\r\n"
    res = httpx.post(f"{server.url}/v1/models/{NAME}:predict", content=body,
                     headers={"Content-Type": "multipart/form-data; boundary=xyz"}, timeout=30)
    assert res.status_code in (400, 413), res.text
    if res.status_code == 400:
        assert "more than 16 parts" in res.json()["error"]["message"]


def test_rejected_requests_are_one_log_line_each_rate_limited(server, caplog):
    """Issue 21 §1.1: a flood of bad bodies wrote 11,450 tracebacks (56 MB) in 10 s. Each rejection
    is now one line, at most ten a second, the rest counted."""
    import httpx

    sent = 60
    with caplog.at_level("INFO", logger="edgecnn.serve.app"), httpx.Client() as client:
        first = int(time.monotonic())  # the log's windows are the server's whole seconds of the same clock
        for _ in range(sent):
            client.post(f"{server.url}/v2/models/{NAME}/infer", content=b"{not json", timeout=10)
        windows = int(time.monotonic()) - first + 1
    lines = [r for r in caplog.records if r.name == "edgecnn.serve.app" and "invalid_inference_request" in r.message]
    # at most ten lines in each second the flood spanned, however slow this machine was today
    assert 1 <= len(lines) <= 10 * windows and all("\n" not in r.getMessage() for r in lines)
    if 10 * windows < sent:  # some were dropped: they are counted, not lost
        assert len(lines) < sent
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("datatype, value, status", [("FP32", 0.5, 200), ("UINT8", 7, 200), ("UINT8", 300, 422),
                                                     ("UINT8", 1.5, 422), ("FP32", "x", 422)])
def test_a_large_json_body_is_parsed_in_the_worker_process_with_the_same_answers(server, reference, datatype,
                                                                                 value, status):
    """Issue 21 §1.3: a JSON body over 1 MiB is parsed in a low-priority process (orjson held the
    server's GIL for the whole parse); what it answers is what the in-process parser answers."""
    import httpx

    from edgecnn.serve._bigjson import LARGE_JSON_BYTES

    rows = 128
    body = {"inputs": [{"name": "images", "datatype": datatype, "shape": [rows, 32, 32, 3],
                        "data": [value] * (rows * 3072)}]}
    data = json.dumps(body).encode()
    assert len(data) > LARGE_JSON_BYTES
    res = httpx.post(f"{server.url}/v2/models/{NAME}/infer", content=data, timeout=60)
    assert res.status_code == status, res.text
    if status == 200:
        clf, _ = reference
        x = np.full((rows, 32, 32, 3), value, np.uint8 if datatype == "UINT8" else np.float32)
        want = clf.predict_proba(x) if datatype == "UINT8" else clf.run_all(x)[0]
        got = np.asarray(res.json()["outputs"][0]["data"]).reshape(rows, -1)
        np.testing.assert_allclose(got, want, atol=1e-5)
