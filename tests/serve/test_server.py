"""edgecnn serve against a real uvicorn server on a loopback port: results, batching, limits, errors."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import socket
import struct
import time
import urllib.parse
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from edgecnn.runtime import Classifier
from edgecnn.runtime.options import RuntimeOptions
from tests.serve.conftest import TOKEN, png, running_server, shapes_png


def _reference(model_dir, name, pixels):
    return Classifier(model_dir / f"{name}.onnx").predict_proba(pixels)


def _probs(body: dict) -> list[dict[int, float]]:
    return [{p["index"]: p["probability"] for p in pred["top_k"]} for pred in body["predictions"]]


def _assert_matches(body: dict, ref: np.ndarray) -> None:
    for got, row in zip(_probs(body), ref, strict=True):
        assert max(got, key=got.get) == int(np.argmax(row))
        for i, p in got.items():
            assert p == pytest.approx(float(row[i]), rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------------------ happy paths
def test_health_ready_and_model_list(live):
    with httpx.Client(base_url=live.url) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json() == {"status": "ready"}
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert set(models) == {"tiny_nhwc", "tiny_nchw_logits", "tiny_nocard"}
        nhwc = models["tiny_nhwc"]
        assert nhwc["card"]["class_names"] == ["cat", "dog", "bird", "fish"]
        assert nhwc["providers"] == ["CPUExecutionProvider"] and len(nhwc["version"]) == 12
        assert c.get("/v1/models/tiny_nhwc").json() == nhwc
        r = c.get("/v1/models/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert "/v1/models/{name}:predict" in c.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("name", ["tiny_nhwc", "tiny_nchw_logits"])
def test_every_input_kind_gives_the_classifier_result(live, model_dir, images, name):
    ref = _reference(model_dir, name, images[:2])
    clf = Classifier(model_dir / f"{name}.onnx")
    url = f"/v1/models/{name}:predict"
    with httpx.Client(base_url=live.url) as c:
        raw = c.post(url, content=png(images[0]), headers={"Content-Type": "image/png"}, params={"top_k": 4})
        assert raw.status_code == 200, raw.text
        body = raw.json()
        assert body["model"] == name and len(body["version"]) == 12 and len(body["predictions"]) == 1
        _assert_matches(body, ref[:1])
        form = c.post(url, files={"file": ("x.png", png(images[1]), "image/png")}, params={"top_k": 4})
        _assert_matches(form.json(), ref[1:2])
        tensors = c.post(url, json={"instances": clf.preprocess(images[:2]).tolist()}, params={"top_k": 4})
        _assert_matches(tensors.json(), ref)
        pixels = c.post(url, json={"instances": images[:2].tolist(), "input": "pixels"}, params={"top_k": 4})
        _assert_matches(pixels.json(), ref)
        octet = c.post(url, content=png(images[0], "BMP"), headers={"Content-Type": "application/octet-stream"})
        assert len(octet.json()["predictions"][0]["top_k"]) == 4  # default top_k 5, clamped to 4 classes
        top1 = c.post(url, content=png(images[0]), headers={"Content-Type": "image/png"}, params={"top_k": 1})
        assert len(top1.json()["predictions"][0]["top_k"]) == 1


def test_concurrent_requests_each_get_their_own_result(live, model_dir, images):
    """48 different images at once: batched together, every answer belongs to its own image."""
    ref = _reference(model_dir, "tiny_nhwc", images)
    batches_before = live.metric("edgecnn_batch_size_count", model="tiny_nhwc")

    async def one(client: httpx.AsyncClient, i: int) -> dict:
        r = await client.post("/v1/models/tiny_nhwc:predict", content=png(images[i]), params={"top_k": 4},
                              headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        return r.json()

    async def main() -> list[dict]:
        async with httpx.AsyncClient(base_url=live.url, limits=httpx.Limits(max_connections=48)) as client:
            return await asyncio.gather(*(one(client, i) for i in range(len(images))))

    for i, body in enumerate(asyncio.run(main())):
        _assert_matches(body, ref[i:i + 1])
    batches = live.metric("edgecnn_batch_size_count", model="tiny_nhwc") - batches_before
    assert batches < len(images)  # some requests shared a session call


def test_poison_image_fails_only_its_own_request(live, model_dir, images):
    """31 valid images and one mutated DDS batched together (issue 11): 31 answers and one 400."""
    import struct

    buf = io.BytesIO()
    Image.new("RGB", (48, 40)).save(buf, "DDS")
    poison = bytearray(buf.getvalue())
    struct.pack_into("<I", poison, 80, 0x2000)  # Pillow raises NotImplementedError on it
    ref = _reference(model_dir, "tiny_nhwc", images[:31])

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live.url, limits=httpx.Limits(max_connections=32)) as client:
            bodies = [png(images[i]) for i in range(31)]
            bodies.insert(15, bytes(poison))
            return await asyncio.gather(*(client.post("/v1/models/tiny_nhwc:predict", content=b, params={"top_k": 4},
                                                      headers={"Content-Type": "image/png"}) for b in bodies))

    responses = asyncio.run(main())
    bad = responses.pop(15)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_image"
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        _assert_matches(r.json(), ref[i:i + 1])


def test_batching_off_runs_one_request_per_call(model_dir, images):
    with running_server(model_dir / "tiny_nhwc.onnx", max_batch=1) as srv, httpx.Client(base_url=srv.url) as c:
        for i in range(3):
            r = c.post("/v1/models/tiny_nhwc:predict", content=png(images[i]), headers={"Content-Type": "image/png"})
            assert r.status_code == 200
        assert srv.metric("edgecnn_batch_size_count", model="tiny_nhwc") == 3  # the warm-up is not counted
        assert srv.metric("edgecnn_batch_size_sum", model="tiny_nhwc") == 3


def test_metrics(live):
    with httpx.Client(base_url=live.url) as c:
        c.get("/v1/models")
        c.post("/v1/models/tiny_nhwc:predict", content=b"xx", headers={"Content-Type": "text/plain"})
        text = c.get("/metrics").text
    for name in ("edgecnn_http_requests_total", "edgecnn_http_request_duration_seconds_bucket",
                 "edgecnn_batch_size_bucket", "edgecnn_queue_depth", "edgecnn_requests_in_flight",
                 "edgecnn_http_errors_total"):
        assert name in text
    assert 'edgecnn_http_requests_total{code="415",method="POST",route="/v1/models/{name}:predict"}' in text
    assert 'edgecnn_http_errors_total{code="415",error="unsupported_media_type"}' in text


# ----------------------------------------------------------------------------- bad input
def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's calling card)."""
    data = png(np.zeros((8, 8, 3), np.uint8))
    ihdr = struct.pack(">II", width, height) + data[24:29]
    return data[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + data[33:]


def _gray_png(side: int) -> bytes:
    return png(np.zeros((side, side), np.uint8))  # 1000x1000 zeros: ~1 KB of PNG, a million pixels


_PNG = {"Content-Type": "image/png"}
_JSON = {"Content-Type": "application/json"}
_OK = png(np.full((8, 8, 3), 7, np.uint8))

BAD_REQUESTS = [
    # id, headers, body, status, error code
    ("text-plain", {"Content-Type": "text/plain"}, _OK, 415, "unsupported_media_type"),
    ("no-content-type", {}, _OK, 415, "unsupported_media_type"),
    ("svg", {"Content-Type": "image/svg+xml"}, b"<svg/>", 415, "unsupported_media_type"),
    ("empty", _PNG, b"", 400, "empty_body"),
    ("garbage", _PNG, b"this is not an image", 400, "invalid_image"),
    ("truncated", _PNG, _OK[: len(_OK) // 2], 400, "invalid_image"),
    ("bomb-1mpx", _PNG, _gray_png(1000), 400, "invalid_image"),
    ("bomb-header", _PNG, _png_header_claiming(50_000, 50_000), 400, "invalid_image"),
    ("too-large", _PNG, b"\0" * (70 * 1024), 413, "body_too_large"),
    ("multipart-no-boundary", {"Content-Type": "multipart/form-data"}, b"--x--", 400, "invalid_multipart"),
    ("multipart-garbage", {"Content-Type": "multipart/form-data; boundary=zz"}, b"garbage", 400, "invalid_multipart"),
    ("json-too-many", _JSON, json.dumps({"instances": [0] * 300}).encode(), 413, "too_many_instances"),
    ("json-malformed", _JSON, b"{\"instances\": [", 400, "invalid_json"),
    ("json-not-utf8", _JSON, b"\xff\xfe\xfa", 400, "invalid_json"),
    ("json-deep", _JSON, b"[" * 20_000 + b"]" * 20_000, 400, "invalid_json"),
    ("json-list", _JSON, b"[1, 2]", 422, "invalid_tensor"),
    ("json-empty", _JSON, b'{"instances": []}', 422, "invalid_tensor"),
    ("json-unknown-key", _JSON, b'{"instances": [1], "x": 1}', 422, "invalid_tensor"),
    ("json-bad-kind", _JSON, b'{"instances": [1], "input": "jpeg"}', 422, "invalid_tensor"),
    ("json-shape", _JSON, json.dumps({"instances": np.zeros((1, 8, 3)).tolist()}).encode(), 422, "invalid_tensor"),
    ("json-nchw-to-nhwc", _JSON, json.dumps({"instances": np.zeros((1, 3, 8, 8)).tolist()}).encode(), 422,
     "invalid_tensor"),
    ("json-strings", _JSON, json.dumps({"instances": [[["1"] * 3] * 8] * 8}).encode(), 422, "invalid_tensor"),
    ("json-bools", _JSON, json.dumps({"instances": [[[[True] * 3] * 8] * 8]}).encode(), 422, "invalid_tensor"),
    ("json-ragged", _JSON, b'{"instances": [[1, 2], [3]]}', 422, "invalid_tensor"),
    ("json-nan", _JSON, json.dumps({"instances": [[[[float("nan")] * 3] * 8] * 8]}).encode(), 422, "invalid_tensor"),
    ("json-overflow", _JSON, json.dumps({"instances": [[[[1e300] * 3] * 8] * 8]}).encode(), 422, "invalid_tensor"),
    ("json-bigint", _JSON, json.dumps({"instances": [10**400]}).encode(), 422, "invalid_tensor"),
    ("pixels-range", _JSON, json.dumps({"instances": [[[[300] * 3] * 8] * 8], "input": "pixels"}).encode(), 422,
     "invalid_tensor"),
    ("pixels-shape", _JSON, json.dumps({"instances": [[[0] * 3] * 8], "input": "pixels"}).encode(), 422,
     "invalid_tensor"),
]


@pytest.mark.parametrize(("headers", "body", "status", "code"), [b[1:] for b in BAD_REQUESTS],
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_is_a_4xx_with_a_json_error(live, headers, body, status, code):
    with httpx.Client(base_url=live.url) as c:
        r = c.post("/v1/models/tiny_nhwc:predict", content=body, headers=headers)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/json"
        err = r.json()["error"]
        assert err["status"] == status and err["code"] == code and err["message"]
        ok = c.post("/v1/models/tiny_nhwc:predict", content=_OK, headers=_PNG)  # and the server goes on
        assert ok.status_code == 200


@pytest.mark.parametrize(("path", "params", "status", "code"), [
    ("/v1/models/nope:predict", {}, 404, "model_not_found"),
    ("/v1/models/..%2F..%2Fetc%2Fpasswd:predict", {}, 404, "not_found"),
    ("/v1/models/tiny_nhwc.onnx:predict", {}, 404, "model_not_found"),
    ("/v1/models/tiny_nhwc:predict", {"top_k": 0}, 422, "invalid_parameter"),
    ("/v1/models/tiny_nhwc:predict", {"top_k": "x"}, 422, "invalid_parameter"),
    ("/nowhere", {}, 404, "not_found"),
])
def test_bad_paths_and_parameters(live, path, params, status, code):
    with httpx.Client(base_url=live.url) as c:
        r = c.post(path, content=_OK, headers=_PNG, params=params)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code)
    assert live.metric("edgecnn_http_errors_total", code="500") == 0


def test_chunked_body_over_the_limit_is_413(live):
    def chunks():
        for _ in range(20):
            yield b"\0" * 8192

    with httpx.Client(base_url=live.url) as c:
        r = c.post("/v1/models/tiny_nhwc:predict", content=chunks(), headers=_PNG)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_wrong_method_is_405_json(live):
    with httpx.Client(base_url=live.url) as c:
        r = c.put("/v1/models")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_no_5xx_after_all_bad_input(live):
    text = httpx.get(f"{live.url}/metrics").text
    assert not [line for line in text.splitlines() if line.startswith("edgecnn_http_requests_total")
                and 'code="5' in line]


# ----------------------------------------------------------------------------------- token
def test_token_is_required_except_for_probes(model_dir):
    with running_server(model_dir, token=TOKEN) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/docs"),
                             ("POST", "/v1/models/tiny_nhwc:predict"), ("GET", "/nowhere")]:
            r = c.request(method, path, content=_OK, headers=_PNG)
            assert r.status_code == 401 and r.json()["error"]["code"] == "missing_token"
            assert r.headers["www-authenticate"] == "Bearer"
            bad = c.request(method, path, content=_OK, headers={**_PNG, "Authorization": f"Bearer {TOKEN}x"})
            assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_token"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/v1/models", headers=auth).status_code == 200
        assert c.post("/v1/models/tiny_nhwc:predict", content=_OK, headers={**_PNG, **auth}).status_code == 200
        spec = c.get("/openapi.json", headers=auth).json()
        assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


# --------------------------------------------------------------------- overload, shutdown
@pytest.fixture()
def slow_inference(monkeypatch):
    """Make every batched session call take ``seconds`` (the servers run in this process)."""
    from edgecnn.serve.models import ServedModel

    def slow(seconds: float) -> None:
        real = ServedModel.infer

        def infer(self, x):
            time.sleep(seconds)
            return real(self, x)

        monkeypatch.setattr(ServedModel, "infer", infer)

    return slow


def test_overload_is_503_with_retry_after_then_recovers(model_dir, images, slow_inference):
    slow_inference(0.3)
    with running_server(model_dir / "tiny_nhwc.onnx", max_batch=64, queue_size=3) as srv:
        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url) as client:
                return await asyncio.gather(*(client.post("/v1/models/tiny_nhwc:predict", content=png(images[i]),
                                                          headers=_PNG) for i in range(12)))

        responses = asyncio.run(main())
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 3 and codes.count(503) >= 1 and set(codes) == {200, 503}
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.headers["retry-after"].isdigit() and refused.json()["error"]["code"] == "overloaded"
        again = httpx.post(f"{srv.url}/v1/models/tiny_nhwc:predict", content=_OK, headers=_PNG)
        assert again.status_code == 200  # recovered
        assert srv.metric("edgecnn_http_requests_total", code="503") == codes.count(503)


def test_full_server_refuses_before_reading_the_upload(model_dir, images, slow_inference):
    """A fast-retrying client against a full queue costs its headers only: the 503 comes back
    although the announced body was never sent (and the body timeout is far away)."""
    import threading

    slow_inference(1.0)
    with running_server(model_dir / "tiny_nhwc.onnx", queue_size=1, body_timeout_s=30) as srv:
        busy = threading.Thread(target=lambda: httpx.post(f"{srv.url}/v1/models/tiny_nhwc:predict",
                                                          content=png(images[0]), headers=_PNG, timeout=10))
        busy.start()
        time.sleep(0.3)  # the one place is taken
        import socket
        from urllib.parse import urlparse

        u = urlparse(srv.url)
        with socket.create_connection((u.hostname, u.port), timeout=5) as sock:
            sock.sendall(b"POST /v1/models/tiny_nhwc:predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png"
                         b"\r\nContent-Length: 1000000\r\n\r\n")  # and no body at all
            answer = sock.recv(4096).decode()  # within the 5 s timeout, the body timeout being 30 s
        assert answer.startswith("HTTP/1.1 503") and '"overloaded"' in answer
        busy.join()


def test_request_timeout_is_503(model_dir, slow_inference):
    slow_inference(0.6)
    with running_server(model_dir / "tiny_nhwc.onnx", timeout_s=0.2) as srv:
        r = httpx.post(f"{srv.url}/v1/models/tiny_nhwc:predict", content=_OK, headers=_PNG)
        assert r.status_code == 503 and r.json()["error"]["code"] == "timeout" and "retry-after" in r.headers
        assert httpx.get(f"{srv.url}/healthz").status_code == 200


def test_graceful_shutdown_finishes_in_flight_requests(model_dir, images, slow_inference):
    slow_inference(0.5)
    with running_server(model_dir / "tiny_nhwc.onnx", max_batch=2) as srv:
        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url) as client:
                calls = [asyncio.create_task(client.post("/v1/models/tiny_nhwc:predict", content=png(images[i]),
                                                         headers=_PNG)) for i in range(5)]
                await asyncio.sleep(0.2)  # all five are queued or running (three 0.5 s batches)
                srv.server.should_exit = True  # what SIGTERM does
                return await asyncio.gather(*calls)

        assert [r.status_code for r in asyncio.run(main())] == [200] * 5


def test_a_lone_request_does_not_wait_for_the_batching_window(model_dir):
    with running_server(model_dir / "tiny_nhwc.onnx", max_delay_ms=2000) as srv:
        t0 = time.perf_counter()
        assert httpx.post(f"{srv.url}/v1/models/tiny_nhwc:predict", content=_OK, headers=_PNG).status_code == 200
        assert time.perf_counter() - t0 < 1.5


# -------------------------------------------------------------------------------- models
def test_directory_serves_only_its_own_valid_models(tmp_path, model_dir):
    served = tmp_path / "served"
    served.mkdir()
    (served / "good.onnx").write_bytes((model_dir / "tiny_nhwc.onnx").read_bytes())
    (served / "bad name!.onnx").write_bytes((model_dir / "tiny_nhwc.onnx").read_bytes())
    (served / "escape.onnx").symlink_to(model_dir / "tiny_nchw_logits.onnx")  # leads outside the folder
    (served / "notes.txt").write_text("not a model")
    with running_server(served) as srv:
        names = [m["name"] for m in httpx.get(f"{srv.url}/v1/models").json()["models"]]
        assert names == ["good"]


def test_static_batch_model_is_padded(tmp_path, images):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["probabilities"], axes=[1, 2], keepdims=0)], "fixed",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [4, 8, 8, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [4, 3])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "fixed4.onnx")
    with running_server(tmp_path / "fixed4.onnx", max_batch=32, max_pixels=1000) as srv:
        assert httpx.get(f"{srv.url}/v1/models").json()["models"][0]["max_batch"] == 4
        x = (images[:6].astype(np.float32) / 255).tolist()
        r = httpx.post(f"{srv.url}/v1/models/fixed4:predict", json={"instances": x}, params={"top_k": 3})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 6


def test_cmyk_jpeg_is_converted_to_rgb(live):
    cmyk = Image.new("CMYK", (8, 8))
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG")
    r = httpx.post(f"{live.url}/v1/models/tiny_nhwc:predict", content=buf.getvalue(),
                   headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200  # converted to RGB, as training does


@pytest.mark.gpu
def test_cuda_provider_is_used_when_asked(model_dir, images):
    with running_server(model_dir / "tiny_nhwc.onnx", runtime=RuntimeOptions(provider="cuda")) as srv:
        assert httpx.get(f"{srv.url}/v1/models").json()["models"][0]["providers"][0] == "CUDAExecutionProvider"
        r = httpx.post(f"{srv.url}/v1/models/tiny_nhwc:predict", content=png(images[0]), headers=_PNG)
        assert r.status_code == 200


def _stalled_body(url: str, path: str) -> socket.socket:
    """A client that sends its headers and 3 of the 1000 body bytes it announced, then stalls."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    sock = socket.create_connection((u.hostname, u.port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\nabc"
                 .encode())
    return sock


def test_stalled_body_gets_408_and_holds_no_queue_place(model_dir, images):
    """Issue 11: slow bodies took every queue place; now a place is taken once the body is complete."""
    with running_server(model_dir / "tiny_nhwc.onnx", queue_size=1, body_timeout_s=0.8) as srv:
        stalled = [_stalled_body(srv.url, "/v1/models/tiny_nhwc:predict") for _ in range(4)]
        try:
            with httpx.Client(base_url=srv.url) as c:
                r = c.post("/v1/models/tiny_nhwc:predict", content=png(images[0]),
                           headers={"Content-Type": "image/png"})
                assert r.status_code == 200, r.text  # the one queue place was free
            stalled[0].settimeout(5)
            answer = stalled[0].recv(4096).decode()
            assert answer.startswith("HTTP/1.1 408") and '"body_timeout"' in answer
        finally:
            for s in stalled:
                s.close()
        assert srv.metric("edgecnn_http_errors_total", code="408") >= 1


def test_client_disconnect_mid_body_is_not_a_server_error(model_dir):
    with running_server(model_dir / "tiny_nhwc.onnx", body_timeout_s=5) as srv:
        _stalled_body(srv.url, "/v1/models/tiny_nhwc:predict").close()
        time.sleep(0.5)
        with httpx.Client(base_url=srv.url) as c:
            assert c.get("/healthz").status_code == 200
        assert srv.metric("edgecnn_http_requests_total", code="500") == 0


def test_big_jpeg_is_decoded_at_reduced_scale():
    from edgecnn.runtime.preprocess import decode_image

    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(buf, "JPEG")
    img, _ = decode_image(buf.getvalue(), target=(32, 32))
    assert img.size == (500, 375)  # libjpeg's 1/8 scale: still larger than the target
    full, _ = decode_image(buf.getvalue())
    assert full.size == (4000, 3000)


def _raw(url: str, data: bytes, wait: float = 5.0) -> str:
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port)) as sock:
        sock.settimeout(wait)
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may close before it has read everything
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
        return b"".join(chunks).decode("latin-1")


def test_header_flood_gets_431_json_before_authentication(model_dir):
    """Issue 11: megabytes of headers were buffered before the token check; now 431 at 16 KiB."""
    with running_server(model_dir / "tiny_nhwc.onnx", token=TOKEN, max_header_bytes=4096) as srv:
        flood = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"X-Junk: " + b"a" * 200_000 + b"\r\n\r\n"
        answer = _raw(srv.url, flood)
        assert answer.startswith("HTTP/1.1 431") and '"headers_too_large"' in answer
        assert "application/json" in answer
        with httpx.Client(base_url=srv.url) as c:
            assert c.get("/healthz").status_code == 200


def test_fifty_pipelined_requests_on_one_connection_all_answer(model_dir):
    """Issue 21 §1.2: 50 valid 3.3 KB requests sent at once on one keep-alive connection got one
    431 and a reset (the head limit counted the earlier requests' bytes)."""
    with running_server(model_dir / "tiny_nhwc.onnx") as srv:
        one = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 3300 + b"\r\n\r\n")
        u = urllib.parse.urlsplit(srv.url)
        with socket.create_connection((u.hostname, u.port)) as sock:
            sock.settimeout(10)
            sock.sendall(one * 50)
            got = b""
            while got.count(b"HTTP/1.1 200") < 50:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        assert got.count(b"HTTP/1.1 200") == 50 and b"431" not in got


def test_a_large_head_in_one_read_is_still_431(model_dir):
    """A 20 KB head that arrives in a single read was parsed whole and answered 404."""
    with running_server(model_dir / "tiny_nhwc.onnx", max_header_bytes=16 * 1024) as srv:
        head = b"GET /nope HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 90)
                                                               for i in range(200)) + b"\r\n"
        assert 16 * 1024 < len(head) < 32 * 1024
        answer = _raw(srv.url, head)
        assert answer.startswith("HTTP/1.1 431") and '"headers_too_large"' in answer


def test_idle_connections_past_the_limit_make_room_for_new_ones(model_dir):
    """Issue 21 §1.6: under the usual 1024 open files, 2,000 idle connections made every legitimate
    request fail for seconds, silently. Past --max-connections the longest-idle keep-alive is
    closed for the newcomer, which is answered."""
    with running_server(model_dir / "tiny_nhwc.onnx", max_connections=4) as srv:
        u = urllib.parse.urlsplit(srv.url)
        idle = [socket.create_connection((u.hostname, u.port)) for _ in range(4)]
        time.sleep(0.3)
        with httpx.Client(base_url=srv.url) as c:
            assert all(c.get("/healthz").status_code == 200 for _ in range(3))
        idle[0].settimeout(5)
        assert idle[0].recv(10) == b""  # the oldest idle one was closed for the newcomer
        for s in idle:
            s.close()


def test_open_files_limit_is_raised_to_the_hard_limit():
    import resource

    from edgecnn.serve.server import raise_open_files_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert raise_open_files_limit() == (hard if hard != resource.RLIM_INFINITY else max(soft, 65536))


def test_uploads_are_admitted_by_bytes_in_flight(model_dir):
    """Issue 21 §1.4: 200 concurrent 5 MB PNGs peaked at 1.26 GB. Bodies in flight are bounded in
    bytes: past the budget a request gets 503 with Retry-After before its body is read."""
    with running_server(model_dir / "tiny_nhwc.onnx", max_inflight_bytes=1_000_000, max_body_bytes=2_000_000,
                        body_timeout_s=5) as srv:
        u = urllib.parse.urlsplit(srv.url)
        slow = socket.create_connection((u.hostname, u.port))
        slow.sendall(b"POST /v1/models/tiny_nhwc:predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 900000\r\n\r\n" + b"\0" * 1000)  # holds 900 kB of the budget
        time.sleep(0.3)
        with httpx.Client(base_url=srv.url) as c:
            busy = c.post("/v1/models/tiny_nhwc:predict", content=b"\0" * 200_000,
                          headers={"Content-Type": "image/png"})
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert "uploads in flight" in busy.json()["error"]["message"]
            slow.close()  # its reservation goes with it
            time.sleep(0.5)
            assert c.post("/v1/models/tiny_nhwc:predict", content=png(np.zeros((8, 8, 3), np.uint8)),
                          headers={"Content-Type": "image/png"}).status_code == 200


def test_slowloris_headers_are_closed_with_408(model_dir):
    with running_server(model_dir / "tiny_nhwc.onnx", header_timeout_s=0.5) as srv:
        answer = _raw(srv.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", wait=5)
        assert answer.startswith("HTTP/1.1 408") and '"header_timeout"' in answer


def test_malformed_http_is_a_json_400(live):
    answer = _raw(live.url, b"NOT HTTP AT ALL\r\n\r\n")
    assert answer.startswith("HTTP/1.1 400") and "application/json" in answer and '"invalid_http"' in answer


FOREIGN = Path(__file__).resolve().parents[1] / "data" / "foreign"


def test_serves_a_detector_boxes_in_image_pixels():
    from edgecnn.runtime import Detector

    with running_server(FOREIGN / "yolov8_shapes.onnx") as srv, httpx.Client(base_url=srv.url) as c:
        info = c.get("/v1/models/yolov8_shapes").json()
        assert info["task"] == "detect" and info["card"]["resize"] == "letterbox"
        r = c.post("/v1/models/yolov8_shapes:predict", content=shapes_png(), headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        (pred,) = r.json()["predictions"]
    local = Detector(FOREIGN / "yolov8_shapes.onnx").predict([shapes_png()])[0]
    assert [d["label"] for d in pred["detections"]] == [d.label for d in local]
    labels = {d["label"]: d["box"] for d in pred["detections"]}
    assert set(labels) == {"red", "blue"}
    np.testing.assert_allclose(labels["red"], [20, 30, 90, 120], atol=6)  # pixels of the 240x160 upload


def test_serves_a_segmenter_with_the_model_flags():
    from edgecnn.presets import parse_overrides

    flags = parse_overrides(task="segment", preprocess="imagenet", labels="background,red,green,blue")
    with running_server(FOREIGN / "lraspp_shapes.onnx", overrides=flags) as srv, httpx.Client(base_url=srv.url) as c:
        r = c.post("/v1/models/lraspp_shapes:predict", content=shapes_png(), headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        seg = r.json()["predictions"][0]["segmentation"]
    assert (seg["width"], seg["height"]) == (240, 160)
    shares = {c["label"]: c["fraction"] for c in seg["classes"]}
    assert shares["background"] > 0.5 and 0.1 < shares["red"] < 0.25 and 0.05 < shares["blue"] < 0.2


def _segment_flags():
    from edgecnn.presets import parse_overrides

    return parse_overrides(task="segment", preprocess="imagenet", labels="background,red,green,blue")


def test_predict_returns_the_class_map_when_asked_and_its_own_timing():
    from edgecnn.runtime import load_model

    flags = _segment_flags()
    image = shapes_png()
    with running_server(FOREIGN / "lraspp_shapes.onnx", overrides=flags) as srv, \
            httpx.Client(base_url=srv.url) as c:
        url, headers = "/v1/models/lraspp_shapes:predict", {"Content-Type": "image/png"}
        plain = c.post(url, content=image, headers=headers)
        asked = c.post(url, params={"mask": "true"}, content=image, headers=headers)
        assert c.post(url, params={"mask": "maybe"}, content=image, headers=headers).status_code == 422
    assert plain.status_code == 200 and asked.status_code == 200, asked.text
    seg = asked.json()["predictions"][0]["segmentation"]
    assert "mask_png" not in plain.json()["predictions"][0]["segmentation"]
    assert {k: v for k, v in seg.items() if k != "mask_png"} == plain.json()["predictions"][0]["segmentation"]
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(seg["mask_png"]))))
    local = load_model(FOREIGN / "lraspp_shapes.onnx", overrides=flags).predict([image])[0]
    assert mask.dtype == np.uint8 and mask.shape == (160, 240)
    np.testing.assert_array_equal(mask, local.mask)
    timing = re.fullmatch(r"predict;dur=(\d+\.\d\d)", asked.headers["server-timing"])
    assert timing and 0 < float(timing.group(1)) < 10_000


def test_mask_is_ignored_by_other_tasks(live, images):
    with httpx.Client(base_url=live.url) as c:
        url, body = "/v1/models/tiny_nhwc:predict", png(images[0])
        plain = c.post(url, content=body, headers={"Content-Type": "image/png"})
        asked = c.post(url, params={"mask": "true"}, content=body, headers={"Content-Type": "image/png"})
    assert asked.status_code == 200 and asked.json() == plain.json()


def test_mask_png_is_sixteen_bit_past_255_classes():
    from edgecnn.serve.models import mask_png

    mask = np.array([[0, 300], [7, 65535]], dtype=np.int64)
    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(mask_png(mask)))))
    np.testing.assert_array_equal(back, mask)
    small = np.asarray(Image.open(io.BytesIO(base64.b64decode(mask_png(np.array([[0, 255]]))))))
    assert small.dtype == np.uint8 and small.tolist() == [[0, 255]]


def test_heap_is_trimmed_once_idle_after_big_bodies(model_dir, images, monkeypatch):
    from edgecnn.serve import _memory

    if _memory._TRIM is None:
        pytest.skip("no malloc_trim in this C library")
    calls = []
    monkeypatch.setattr(_memory, "malloc_trim", lambda: calls.append(1) or True)
    with running_server(model_dir / "tiny_nhwc.onnx", max_body_bytes=4 * 1024 * 1024) as srv:
        trimmer = srv.server.config.app
        trimmer.threshold = 1024 * 1024
        with httpx.Client(base_url=srv.url) as c:
            big = png(np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8))
            for _ in range(2):
                assert c.post("/v1/models/tiny_nhwc:predict", content=big,
                              headers={"Content-Type": "image/png"}).status_code == 200
        time.sleep(0.3)
    assert trimmer.trims >= 1 and calls


def test_big_images_decode_on_the_low_priority_pool(model_dir, images):
    """A 2500x2000 upload (over 4 MP declared) is decoded on the heavy pool; small ones never are."""
    with running_server(model_dir / "tiny_nhwc.onnx", max_body_bytes=8 * 1024 * 1024) as srv:
        pools = srv.server.config.app.fastapi.state.decode_pool
        with httpx.Client(base_url=srv.url) as c:
            assert c.post("/v1/models/tiny_nhwc:predict", content=png(images[0]),
                          headers={"Content-Type": "image/png"}).status_code == 200
            assert not pools.heavy._threads
            big = png(np.zeros((2000, 2500, 3), np.uint8))
            r = c.post("/v1/models/tiny_nhwc:predict", content=big, headers={"Content-Type": "image/png"},
                       params={"top_k": 1})
            assert r.status_code == 200, r.text
        assert len(pools.heavy._threads) == 1


def test_images_pixels_and_tensors_batched_together_each_enter_the_model_their_way(model_dir, images):
    """One micro-batch can hold encoded images and pixel instances (uint8, the mapping inside the
    backend) next to preprocessed tensor instances (float, the file's own input): each kind is its
    own call, and every answer is the one the runtime gives alone."""
    clf = Classifier(model_dir / "tiny_nhwc.onnx")
    ref = clf.predict_proba(images[:12])
    with running_server(model_dir / "tiny_nhwc.onnx", max_batch=32, max_delay_ms=50) as srv:
        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url, limits=httpx.Limits(max_connections=32)) as client:
                url = "/v1/models/tiny_nhwc:predict"
                calls = []
                for i in range(12):
                    if i % 3 == 0:
                        calls.append(client.post(url, content=png(images[i]), headers={"Content-Type": "image/png"}))
                    elif i % 3 == 1:
                        calls.append(client.post(url, json={"instances": [images[i].tolist()], "input": "pixels"}))
                    else:
                        tensor = clf.preprocess(images[i:i + 1])[0]
                        calls.append(client.post(url, json={"instances": [tensor.tolist()], "input": "tensor"}))
                return await asyncio.gather(*calls)

        responses = asyncio.run(main())
        assert srv.metric("edgecnn_batch_size_count", model="tiny_nhwc") >= 2  # at least one call per kind
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        got = _probs(r.json())[0]
        for index, p in got.items():
            assert p == pytest.approx(float(ref[i, index]), abs=1e-5)
