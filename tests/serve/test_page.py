"""The page to try a model at ``/`` of ``edgecnn serve`` (issue 23 §3).

Without a browser: its files, their content types, Content-Security-Policy and cache headers, who
may read them (everyone, even with a token; the API still needs it), ``--no-page``, and the
asset route refusing paths (what the API gained for the page, a segmenter's class map on request
and the server's own timing, is tested in test_server.py). In Debian's headless Chromium driven by Playwright (marked
``browser``; skipped without ``/usr/bin/chromium`` or the ``playwright`` package): real images
uploaded with the file input and the answer read from the DOM, for a classifier, a detector and
a segmenter, the API's error line, EXIF-turned photos, and the token typed into the page.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgecnn.runtime import Classifier, default_model_path
from tests.serve.conftest import TOKEN, Live, png, running_server, shapes_png

ROOT = Path(__file__).resolve().parents[2]
FOREIGN = ROOT / "tests" / "data" / "foreign"
CHROMIUM = Path("/usr/bin/chromium")
PAGE = {"/": "text/html", "/page/app.js": "text/javascript", "/page/style.css": "text/css"}
SEGMENT_FLAGS = {"task": "segment", "preprocess": "imagenet", "labels": "background,red,green,blue"}


def _segment_flags() -> Any:
    from edgecnn.presets import parse_overrides

    return parse_overrides(**SEGMENT_FLAGS)


# ------------------------------------------------------------------------- without a browser
def test_page_files_have_their_types_csp_and_cache_headers(live):
    with httpx.Client(base_url=live.url) as c:
        for path, media in PAGE.items():
            r = c.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith(media), (path, r.headers)
            csp = r.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'self';" in csp and "connect-src 'self'" in csp
            assert "unsafe" not in csp and "frame-ancestors 'none'" in csp
            assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-cache"
            again = c.get(path, headers={"If-None-Match": r.headers["etag"]})
            assert again.status_code == 304 and not again.content and again.headers["etag"] == r.headers["etag"]
            assert "://" not in r.text, f"{path} refers to another server"
        html = c.get("/").text
        assert "/" not in c.get("/openapi.json").json()["paths"]  # the page is no API
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="' in attrs and not body.strip() for attrs, body in scripts)  # no inline script
    assert not re.search(r"\son\w+\s*=|\sstyle\s*=", html)  # no inline handlers or styles


def test_page_is_public_with_a_token_and_never_holds_it(model_dir):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with running_server(model_dir, token=TOKEN) as srv, httpx.Client(base_url=srv.url) as c:
        served = b""
        for path in PAGE:
            r = c.get(path)
            assert r.status_code == 200, (path, r.text)
            served += r.content
        assert TOKEN.encode() not in served
        assert c.get("/v1/models").status_code == 401
        assert c.post("/v1/models/tiny_nhwc:predict", content=png(np.zeros((8, 8, 3), np.uint8)),
                      headers={"Content-Type": "image/png"}).status_code == 401
        assert c.get("/page/other.js").status_code == 401  # public means these files, nothing beside them
        assert c.get("/v1/models", headers=auth).status_code == 200


def test_no_page_leaves_slash_a_json_404(model_dir, monkeypatch):
    with running_server(model_dir, page=False) as srv, httpx.Client(base_url=srv.url) as c:
        for path in PAGE:
            r = c.get(path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
    from edgecnn.cli import main

    calls = []
    monkeypatch.setattr("edgecnn.serve.serve", lambda source, config: calls.append(config))
    assert CliRunner().invoke(main, ["serve", "--no-page"]).exit_code == 0
    assert CliRunner().invoke(main, ["serve"]).exit_code == 0
    assert [config.page for config in calls] == [False, True]


@pytest.mark.parametrize("path", ["/page/../app.py", "/page/..%2fapp.py", "/page/%2e%2e", "/page/%2e%2e%2f_page.py",
                                  "/page/..%5c_page.py", "/page/app.js/../../app.py", "/page//etc/passwd",
                                  "/page/app.js%00.py", "/page/index.html", "/page/", "/page/./app.js",
                                  "/index.html", "/page/App.js"])
def test_page_files_route_refuses_any_other_path(live, path):
    """Only the listed files, by exact name: a path never reaches the disk (sent raw, not normalized)."""
    host = live.url.removeprefix("http://")
    answer = _raw_get(host, path)
    assert answer.startswith(("HTTP/1.1 404", "HTTP/1.1 400")), answer[:200]
    assert "import" not in answer and "root:" not in answer


def _raw_get(host: str, path: str) -> str:
    import socket

    name, port = host.split(":")
    with socket.create_connection((name, int(port)), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("latin-1")


# -------------------------------------------------------------------------- in a real browser
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright: one per module."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no {CHROMIUM} (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright is not installed (the [dev] extra)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def photo_server(tmp_path_factory) -> Iterator[Live]:
    """The packaged CIFAR-10 classifier and the shapes detector, served together."""
    import shutil

    folder = tmp_path_factory.mktemp("page_models")
    shutil.copy(default_model_path(), folder)
    shutil.copy(FOREIGN / "yolov8_shapes.onnx", folder)
    with running_server(folder) as srv:
        yield srv


@pytest.fixture()
def open_page(browser) -> Iterator[Any]:
    """Opens the page of a server in a fresh context; fails the test on a script error or a
    Content-Security-Policy violation (an API's 4xx answer is logged by the browser too: allowed)."""
    pages, problems = [], []

    def opener(url: str) -> Any:
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        page.on("pageerror", lambda err: problems.append(str(err)))
        page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource")
                and problems.append(m.text))
        page.goto(url + "/")
        pages.append(page)
        return page

    yield opener
    for page in pages:
        page.close()
    assert not problems


def _upload(page: Any, path: Path, answers: int) -> None:
    """Choose ``path`` in the page's file input and wait for its ``answers``-th answer."""
    page.set_input_files("#file", str(path))
    page.wait_for_selector(f'#result[data-answers="{answers}"]', state="attached", timeout=15_000)


def _models_listed(page: Any) -> None:
    page.wait_for_selector("#model option", state="attached", timeout=15_000)
    page.wait_for_selector("#model-info:not(:empty)", timeout=15_000)


def _canvas_pixel(page: Any, x: int, y: int) -> list[int]:
    return page.evaluate("([x, y]) => Array.from(document.getElementById('view').getContext('2d')"
                         ".getImageData(x, y, 1, 1).data.slice(0, 3))", [x, y])


def _cifar_png(tmp_path: Path) -> Path:
    """A real CIFAR-10 test image of the packaged sample, scaled up 8x as a PNG."""
    from edgecnn.datasets import load_embedded_sample

    x_test = load_embedded_sample()[2]
    path = tmp_path / "cifar10_test_3.png"
    Image.fromarray(x_test[3]).resize((256, 256), Image.Resampling.NEAREST).save(path)
    return path


def _real_photo() -> Path:
    """chelsea.png (a cat) from scikit-image's wheel, through tools/foreign_fidelity.py's cache."""
    spec = importlib.util.spec_from_file_location("foreign_fidelity", ROOT / "tools" / "foreign_fidelity.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    try:
        return module.PHOTOS["chelsea.png"].fetch()
    except RuntimeError as err:
        pytest.skip(f"the real photo is unavailable: {err}")


@pytest.mark.browser
@pytest.mark.parametrize("image", ["cifar10", "photo"])
def test_page_classifies_a_real_image(open_page, photo_server, tmp_path, image):
    path = _cifar_png(tmp_path) if image == "cifar10" else _real_photo()
    page = open_page(photo_server.url)
    _models_listed(page)
    assert page.input_value("#model") == "seed_cnn_cifar10"
    _upload(page, path, 1)
    labels = page.locator("#top-k li .label").all_inner_texts()
    shown = [float(s.rstrip("%")) for s in page.locator("#top-k li .score").all_inner_texts()]
    expected = Classifier(default_model_path()).predict(path, top_k=5)[0]
    assert labels[0] == expected[0].label and labels == [p.label for p in expected]
    assert shown == pytest.approx([round(p.probability * 100, 1) for p in expected], abs=0.051)
    assert page.inner_text("#answer-title") == expected[0].label
    assert re.fullmatch(r"server \d+\.\d ms · round trip \d+\.\d ms", page.inner_text("#latency"))


@pytest.mark.browser
def test_page_draws_the_detectors_boxes(open_page, photo_server, tmp_path):
    from edgecnn.runtime.heads.draw import class_colour

    path = tmp_path / "shapes.png"
    path.write_bytes(shapes_png())
    api = httpx.post(f"{photo_server.url}/v1/models/yolov8_shapes:predict", content=path.read_bytes(),
                     headers={"Content-Type": "image/png"}).json()["predictions"][0]["detections"]
    page = open_page(photo_server.url)
    _models_listed(page)
    page.select_option("#model", "yolov8_shapes")
    page.wait_for_selector("#model-info:has-text('detect')")
    _upload(page, path, 1)
    assert api and page.locator("#detections li").count() == len(api)
    assert page.get_attribute("#view", "data-boxes") == str(len(api))
    assert page.locator("#detections li .label").all_inner_texts() == [d["label"] for d in api]
    for d in api:  # the left edge of each box, half way down, is drawn in the class's colour
        x1, y1, _, y2 = d["box"]
        assert _canvas_pixel(page, int(x1), round((y1 + y2) / 2)) == list(class_colour(d["index"])), d


@pytest.mark.browser
def test_page_overlays_the_mask_with_a_legend(open_page, tmp_path):
    from edgecnn.runtime.heads.draw import class_colour

    path = tmp_path / "shapes.png"
    path.write_bytes(shapes_png())
    with running_server(FOREIGN / "lraspp_shapes.onnx", overrides=_segment_flags()) as srv:
        seg = httpx.post(f"{srv.url}/v1/models/lraspp_shapes:predict", params={"mask": "true"},
                         content=path.read_bytes(), headers={"Content-Type": "image/png"}).json()
        page = open_page(srv.url)
        _models_listed(page)
        _upload(page, path, 1)
        seg = seg["predictions"][0]["segmentation"]
        assert page.locator("#legend li .label").all_inner_texts() == [c["label"] for c in seg["classes"]]
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(seg["mask_png"]))))
        original = np.asarray(Image.open(path).convert("RGB"))
        for x, y in [(55, 75), (180, 75), (5, 5)]:  # inside the red and the blue rectangles, background
            k = int(mask[y, x])
            want = original[y, x].astype(float)
            if k != 0:  # class 0 is "background": left unpainted
                want = want * 0.5 + np.asarray(class_colour(k)) * 0.5
            np.testing.assert_allclose(_canvas_pixel(page, x, y), want, atol=1, err_msg=f"({x}, {y}) class {k}")
        assert {int(mask[75, 55]), int(mask[75, 180])} == {1, 3}


@pytest.mark.browser
def test_page_shows_the_apis_error_line(open_page, photo_server, tmp_path):
    path = tmp_path / "not_an_image.png"
    path.write_bytes(b"hello, I am no PNG")
    message = httpx.post(f"{photo_server.url}/v1/models/seed_cnn_cifar10:predict", content=path.read_bytes(),
                         headers={"Content-Type": "image/png"}).json()["error"]["message"]
    page = open_page(photo_server.url)
    _models_listed(page)
    page.set_input_files("#file", str(path))
    page.wait_for_selector("#error:not([hidden])", timeout=15_000)
    assert page.inner_text("#error") == message and page.is_hidden("#result")


@pytest.mark.browser
def test_page_draws_what_the_server_saw_of_an_exif_turned_photo(open_page, photo_server, tmp_path):
    """The browser turns a JPEG by its EXIF orientation, the server reads the stored pixels: the page
    draws the stored pixels, so that boxes and masks land where the server found them."""
    stored = Image.new("RGB", (120, 60))
    quadrants = {(30, 15): (250, 0, 0), (90, 15): (0, 250, 0), (30, 45): (0, 0, 250), (90, 45): (250, 250, 0)}
    for (x, y), colour in quadrants.items():
        stored.paste(colour, (x - 30, y - 15, x + 30, y + 15))
    page = open_page(photo_server.url)
    _models_listed(page)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"turned_{orientation}.jpg"
        stored.save(path, exif=exif.tobytes(), quality=95)
        _upload(page, path, orientation)
        assert page.evaluate("[document.getElementById('view').width, document.getElementById('view').height]") \
            == [120, 60]
        for (x, y), colour in quadrants.items():
            np.testing.assert_allclose(_canvas_pixel(page, x, y), colour, atol=8, err_msg=f"EXIF {orientation}")


@pytest.mark.browser
def test_page_needs_the_typed_token(open_page, tmp_path):
    path = _cifar_png(tmp_path)
    with running_server(default_model_path(), token=TOKEN) as srv:
        with httpx.Client(base_url=srv.url) as c:
            missing = c.get("/v1/models").json()["error"]["message"]
            wrong = c.get("/v1/models", headers={"Authorization": "Bearer not-the-token"}).json()["error"]["message"]
        page = open_page(srv.url)
        page.wait_for_selector("#error:not([hidden])", timeout=15_000)
        assert page.inner_text("#error") == missing and page.is_disabled("#model")
        page.fill("#token", "not-the-token")
        page.press("#token", "Enter")
        page.wait_for_selector(f"#error:has-text('{wrong[:30]}')", timeout=15_000)
        page.fill("#token", TOKEN)
        page.press("#token", "Enter")
        _models_listed(page)
        assert page.is_hidden("#error")
        _upload(page, path, 1)
        expected = Classifier(default_model_path()).predict(path)[0][0].label
        assert page.locator("#top-k li .label").first.inner_text() == expected
        assert page.evaluate("sessionStorage.getItem('edgecnn.token')") == TOKEN  # the tab's storage, at most
