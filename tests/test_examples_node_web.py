"""The Node.js and browser examples (issue 23 section 2): a self-contained file gives edgecnn's
answers outside Python.

``examples/node/predict.mjs`` (onnxruntime-node) and ``examples/web/`` (onnxruntime-web's WebAssembly
build in Debian's headless Chromium, driven by Playwright through the page's own file inputs) run the
files ``edgecnn export --self-contained`` writes; their JSON is compared with ``edgecnn predict
--json`` on the two-part file (the same variant with its card, run by edgecnn's runtime):

- the packaged CIFAR-10 classifier, fp32 and int8, on 100 CIFAR-10 test images (PNG, 32x32): the
  same top-1 class on every image;
- the YOLOv8 shapes detector on 12 synthetic scenes at its input size (160x160; Node also on a
  240x160 one it letterboxes): the same boxes, one to one, same class, IoU >= 0.99, and boxes
  found on most scenes;
- the LR-ASPP shapes segmenter on 6 scenes: the same classes and shares of the image.

Marked ``node`` (skipped without ``node`` or examples/node/node_modules: ``npm ci --ignore-scripts``
there) and ``browser`` (skipped without /usr/bin/chromium, the playwright package or
examples/web/node_modules).
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from edgecnn.export.self_contained_check import boxes_match

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "examples" / "node"
WEB_DIR = ROOT / "examples" / "web"
SEED_ONNX = ROOT / "edgecnn" / "assets" / "models" / "seed_cnn_cifar10.onnx"
FOREIGN = ROOT / "tests" / "data" / "foreign"
CIFAR10 = ROOT.parent / "shared" / "datasets" / "cifar10.npz"  # beside the clone, in CI and here
CHROMIUM = Path("/usr/bin/chromium")
IMAGES = 100
SEGMENT_FLAGS = ["--task", "segment", "--preprocess", "imagenet", "--labels", "background,red,green,blue"]

pytestmark = pytest.mark.export  # the files are made by edgecnn export (onnx)


# ------------------------------------------------------------------------------ models and images


def _cli(*args: str) -> str:
    """``edgecnn ARGS`` in this process; its standard output.

    Raises:
        AssertionError: when the command fails, with its output.
    """
    from edgecnn.cli import main

    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def _predict(model: Path, images: list[Path]) -> list[dict[str, Any]]:
    """``edgecnn predict MODEL IMAGES --json``'s predictions."""
    predictions: list[dict[str, Any]] = json.loads(_cli("predict", str(model), *map(str, images),
                                                        "--json"))["predictions"]
    return predictions


def _scenes(folder: Path, n: int, size: int, seed: int) -> list[Path]:
    """``n`` PNG scenes of 1-3 red, green and blue rectangles on noisy light grey (what the shapes models
    of tests/data/foreign were trained on), varied in place, size, count and background."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        grey = rng.integers(200, 240)
        img = Image.fromarray(np.clip(rng.normal(grey, 10, (size, size, 3)), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for colour in rng.permutation([(220, 30, 30), (30, 200, 40), (30, 40, 220)])[:rng.integers(1, 4)]:
            w, h = (int(v) for v in rng.integers(size // 6, size * 3 // 8, 2))
            x, y = (int(v) for v in rng.integers(0, size - max(w, h), 2))
            draw.rectangle((x, y, x + w, y + h), fill=tuple(int(c) for c in colour))
        paths.append(folder / f"scene_{i:02d}.png")
        img.save(paths[-1])
    return paths


def _wide_scene(folder: Path) -> Path:
    """A 240x160 scene (a red and a blue rectangle): the detector letterboxes it."""
    img = Image.new("RGB", (240, 160), (230, 230, 230))
    draw = ImageDraw.Draw(img)
    draw.rectangle((20, 30, 90, 120), fill=(220, 30, 30))
    draw.rectangle((140, 50, 220, 100), fill=(30, 40, 220))
    img.save(folder / "wide.png")
    return folder / "wide.png"


@pytest.fixture(scope="module")
def cifar_pngs(tmp_path_factory) -> list[Path]:
    """The first 100 CIFAR-10 test images as PNG files (the shared dataset, else the packaged sample)."""
    if CIFAR10.is_file():
        with np.load(CIFAR10) as data:
            x_test = data["x_test"][:IMAGES]
    else:
        from edgecnn.datasets import load_embedded_sample

        x_test = load_embedded_sample()[2][:IMAGES]
    folder = tmp_path_factory.mktemp("cifar_pngs")
    paths = [folder / f"test_{i:03d}.png" for i in range(len(x_test))]
    for px, path in zip(x_test, paths):
        Image.fromarray(px).save(path)
    return paths


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, sample_data) -> Path:
    """``edgecnn export seed_cnn_cifar10.onnx --self-contained -q int8`` (calibrated on the packaged sample)."""
    root = tmp_path_factory.mktemp("classifier")
    x_train, y_train, x_test, y_test = sample_data
    np.savez(root / "cifar.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    _cli("export", str(SEED_ONNX), "--out", str(root / "out"), "--self-contained", "-q", "int8",
         "--calibration-data", str(root / "cifar.npz"))
    return root / "out"


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> tuple[Path, list[Path]]:
    """``edgecnn export yolov8_shapes.onnx --self-contained``, checked on 24 scenes; and 12 other scenes."""
    root = tmp_path_factory.mktemp("detector")
    calibration = _scenes(root / "calibration", 24, 160, seed=1)
    _cli("export", str(FOREIGN / "yolov8_shapes.onnx"), "--out", str(root / "out"), "--self-contained",
         "--calibration-data", str(calibration[0].parent))
    return root / "out", _scenes(root / "scenes", 12, 160, seed=2)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> tuple[Path, list[Path]]:
    """``edgecnn export lraspp_shapes.onnx --task segment ... --self-contained``; and 6 other scenes."""
    root = tmp_path_factory.mktemp("segmenter")
    calibration = _scenes(root / "calibration", 8, 128, seed=3)
    _cli("export", str(FOREIGN / "lraspp_shapes.onnx"), "--out", str(root / "out"), "--self-contained",
         *SEGMENT_FLAGS, "--calibration-data", str(calibration[0].parent))
    return root / "out", _scenes(root / "scenes", 6, 128, seed=4)


# ------------------------------------------------------------------------------ comparisons


def _top1(predictions: list[dict[str, Any]]) -> list[int]:
    return [p["top_k"][0]["index"] for p in predictions]


def _same_top1(reference: list[dict[str, Any]], candidate: list[dict[str, Any]], images: list[Path]) -> None:
    assert [Path(p["image"]).name for p in candidate] == [p.name for p in images]
    differ = [i for i, (a, b) in enumerate(zip(_top1(reference), _top1(candidate))) if a != b]
    assert len(candidate) == len(images) == IMAGES and not differ, f"top-1 differs on images {differ}"


def _same_boxes(reference: list[dict[str, Any]], candidate: list[dict[str, Any]]) -> float:
    """Every image's boxes matched one to one (same class, IoU >= 0.99); the worst IoU."""
    assert len(reference) == len(candidate)
    worst = 1.0
    for ref, got in zip(reference, candidate):
        ok, iou = boxes_match([(d["index"], d["box"]) for d in ref["detections"]],
                              [(d["index"], d["box"]) for d in got["detections"]])
        assert ok, (ref["image"], ref["detections"], got["detections"])
        worst = min(worst, iou)
    found = sum(bool(p["detections"]) for p in reference)
    assert found >= 0.8 * len(reference), f"boxes on only {found} of {len(reference)} scenes: the check is empty"
    return worst


def _same_classes(reference: list[dict[str, Any]], candidate: list[dict[str, Any]]) -> None:
    for ref, got in zip(reference, candidate, strict=True):
        want, have = ref["segmentation"], got["segmentation"]
        assert (have["width"], have["height"]) == (want["width"], want["height"])
        assert [c["index"] for c in have["classes"]] == [c["index"] for c in want["classes"]]
        assert [c["fraction"] for c in have["classes"]] == pytest.approx([c["fraction"] for c in want["classes"]],
                                                                          abs=2e-6)
    assert any(len(p["segmentation"]["classes"]) > 1 for p in reference)


# ------------------------------------------------------------------------------ Node.js


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with examples/node's packages installed."""
    exe = shutil.which("node")
    if exe is None:
        pytest.skip("no node (install Node.js >= 18)")
    if not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir():
        pytest.skip("examples/node has no node_modules (run `npm ci --ignore-scripts` there)")
    return exe


def _node(node: str, model: Path, images: list[Path], *flags: str) -> subprocess.CompletedProcess[str]:
    """``node predict.mjs MODEL IMAGES...``: one process for all the images."""
    return subprocess.run([node, str(NODE_DIR / "predict.mjs"), str(model), *map(str, images), *flags],
                          capture_output=True, text=True, timeout=300, check=False)


def _node_json(node: str, model: Path, images: list[Path]) -> dict[str, Any]:
    run = _node(node, model, images)
    assert run.returncode == 0, run.stderr
    answer: dict[str, Any] = json.loads(run.stdout)
    return answer


@pytest.mark.node
@pytest.mark.parametrize("variant", ["model.onnx", "model.int8.onnx"])
def test_node_classifies_100_cifar10_images_as_edgecnn_predict(node, classifier, cifar_pngs, variant):
    self_contained = classifier / variant.replace(".onnx", ".self-contained.onnx")
    got = _node_json(node, self_contained, cifar_pngs)
    want = _predict(classifier / variant, cifar_pngs)
    assert got["task"] == "classify" and got["runtime"].startswith("onnxruntime-node")
    _same_top1(want, got["predictions"], cifar_pngs)
    assert [len(p["top_k"]) for p in got["predictions"]] == [5] * IMAGES
    assert {p["top_k"][0]["label"] for p in got["predictions"]} <= set(json.loads(
        (ROOT / "edgecnn" / "assets" / "cifar10_sample" / "labels.json").read_text())["class_names"])
    if variant == "model.onnx":  # the same float graph: the same probabilities, to float rounding
        diff = max(abs(a["probability"] - b["probability"]) for p, q in zip(want, got["predictions"])
                   for a, b in zip(p["top_k"], q["top_k"]))
        assert diff < 1e-5


@pytest.mark.node
def test_node_finds_the_detectors_boxes_as_edgecnn_predict(node, detector):
    out, scenes = detector
    images = [*scenes, _wide_scene(scenes[0].parent)]  # the wide one: fitted by the example's letterbox
    got = _node_json(node, out / "model.self-contained.onnx", images)
    assert got["task"] == "detect"
    worst = _same_boxes(_predict(out / "model.onnx", images), got["predictions"])
    assert worst >= 0.99
    assert got["predictions"][-1]["image_size"] == [240, 160]


@pytest.mark.node
def test_node_segments_as_edgecnn_predict(node, segmenter):
    out, scenes = segmenter
    got = _node_json(node, out / "model.self-contained.onnx", scenes)
    _same_classes(_predict(out / "model.onnx", scenes), got["predictions"])


@pytest.mark.node
def test_node_errors_are_one_line_and_exit_non_zero(node, classifier, cifar_pngs, tmp_path):
    (tmp_path / "broken.png").write_bytes(cifar_pngs[0].read_bytes()[:60])
    (tmp_path / "notes.txt").write_text("not an image")
    images = [cifar_pngs[0], tmp_path / "broken.png", tmp_path / "notes.txt", tmp_path / "missing.png"]
    run = _node(node, classifier / "model.self-contained.onnx", images)
    answers = json.loads(run.stdout)["predictions"]
    assert run.returncode == 1 and "top_k" in answers[0] and [("error" in a) for a in answers] == [False] + [True] * 3
    assert len(run.stderr.strip().splitlines()) == 3 and "missing.png does not exist" in run.stderr
    for args, code, words in [((classifier / "model.onnx", cifar_pngs[0]), 1, "is not self-contained"),
                              ((cifar_pngs[0], cifar_pngs[0]), 1, "is not an ONNX file"),
                              ((tmp_path / "none.onnx", cifar_pngs[0]), 2, "does not exist"),
                              ((classifier / "model.self-contained.onnx",), 2, "at least one image")]:
        run = _node(node, args[0], list(args[1:]))
        assert run.returncode == code and not run.stdout, (args, run.stdout, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1 and words in run.stderr, run.stderr
        assert "    at " not in run.stderr  # no JavaScript stack
    run = _node(node, classifier / "model.self-contained.onnx", cifar_pngs[:1], "--top-k", "zero")
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "--top-k" in run.stderr


# ------------------------------------------------------------------------------ the browser


class _Quiet(http.server.SimpleHTTPRequestHandler):
    """examples/web's files, as ``python -m http.server`` serves them, without a log line per request."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".wasm": "application/wasm"}

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        del format, args


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    """examples/web/index.html served from a local HTTP server thread, in one headless Chromium page."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no {CHROMIUM} (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("playwright is not installed (the [dev] extra)")
    if not (WEB_DIR / "node_modules" / "onnxruntime-web" / "dist").is_dir():
        pytest.skip("examples/web has no node_modules (run `npm ci --ignore-scripts` there)")
    from playwright.sync_api import sync_playwright

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(WEB_DIR)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    problems: list[str] = []

    def console(message: Any) -> None:
        if message.type == "error":
            problems.append(message.text)

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            tab = browser.new_page()
            tab.on("pageerror", lambda err: problems.append(str(err)))
            tab.on("console", console)
            tab.goto(f"http://127.0.0.1:{server.server_address[1]}/index.html")
            yield tab
            browser.close()
    finally:
        server.shutdown()
        thread.join(10)
    assert not problems


def _web(page: Any, model: Path, images: list[Path], state: str = "done") -> dict[str, Any]:
    """Choose ``model``, then ``images``, in the page's file inputs; the JSON it shows."""
    page.set_input_files("#images", [])
    page.set_input_files("#model", str(model))
    page.wait_for_selector('#status[data-state="ready"], #status[data-state="error"]', timeout=60_000)
    assert page.get_attribute("#status", "data-state") == "ready", page.inner_text("#status")
    page.set_input_files("#images", [str(p) for p in images])
    page.wait_for_selector('#status[data-state="done"], #status[data-state="error"]', timeout=120_000)
    assert page.get_attribute("#status", "data-state") == state, page.inner_text("#status")
    answer: dict[str, Any] = json.loads(page.inner_text("#json"))
    assert answer["runtime"].startswith("onnxruntime-web") and page.locator("figure").count() == len(images)
    return answer


@pytest.mark.browser
@pytest.mark.parametrize("variant", ["model.onnx", "model.int8.onnx"])
def test_web_classifies_100_cifar10_images_as_edgecnn_predict(page, classifier, cifar_pngs, variant):
    got = _web(page, classifier / variant.replace(".onnx", ".self-contained.onnx"), cifar_pngs)
    want = _predict(classifier / variant, cifar_pngs)
    _same_top1(want, got["predictions"], cifar_pngs)
    captions = page.locator("figure figcaption").all_inner_texts()  # what the page shows: the top-1 label
    assert [c.split()[0] for c in captions] == [p["top_k"][0]["label"] for p in want]


@pytest.mark.browser
def test_web_finds_the_detectors_boxes_as_edgecnn_predict(page, detector):
    out, scenes = detector
    got = _web(page, out / "model.self-contained.onnx", scenes)
    want = _predict(out / "model.onnx", scenes)
    assert _same_boxes(want, got["predictions"]) >= 0.99
    captions = page.locator("figure figcaption").all_inner_texts()
    assert [int(c.split()[0]) for c in captions] == [len(p["detections"]) for p in want]


@pytest.mark.browser
def test_web_segments_as_edgecnn_predict(page, segmenter):
    out, scenes = segmenter
    got = _web(page, out / "model.self-contained.onnx", scenes)
    _same_classes(_predict(out / "model.onnx", scenes), got["predictions"])


@pytest.mark.browser
def test_web_errors_are_one_line(page, classifier, cifar_pngs, tmp_path):
    (tmp_path / "broken.png").write_bytes(cifar_pngs[0].read_bytes()[:60])
    got = _web(page, classifier / "model.self-contained.onnx", [cifar_pngs[0], tmp_path / "broken.png"], "error")
    assert "top_k" in got["predictions"][0] and "Cannot read broken.png" in got["predictions"][1]["error"]
    page.set_input_files("#model", str(classifier / "model.onnx"))
    page.wait_for_selector('#status[data-state="error"]', timeout=60_000)
    text = page.inner_text("#status")
    assert "is not self-contained" in text and "\n" not in text and not page.inner_text("#json")
