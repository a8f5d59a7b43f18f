"""A real uvicorn server on a free loopback port, serving the runtime's tiny committed models."""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from edgecnn.serve import ServeConfig, build_server  # noqa: E402

RUNTIME_DATA = Path(__file__).resolve().parents[1] / "runtime" / "data"
TOKEN = "test-token-1234"


@dataclass
class Live:
    """A running server: its base URL and the uvicorn server (``.config.app`` is the ASGI app)."""

    url: str
    server: Any

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        registry = self.server.config.app.fastapi.state.metrics.registry
        total = 0.0
        for family in registry.collect():
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total


@contextlib.contextmanager
def running_server(source: Path | None, **settings: Any) -> Iterator[Live]:
    """Serve ``source`` in a background thread; stop it (gracefully) on exit."""
    config = ServeConfig(port=0, **settings)
    server = build_server(source, config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield Live(f"http://127.0.0.1:{port}", server)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A directory of the tiny models, as ``edgecnn serve DIR`` would get."""
    out = tmp_path_factory.mktemp("models")
    for p in RUNTIME_DATA.glob("tiny_*.onnx"):
        shutil.copy(p, out / p.name)
    return out


@pytest.fixture(scope="module")
def live(model_dir) -> Iterator[Live]:
    """A batching server of the tiny models, without a token (module-wide: the tests share it)."""
    with running_server(model_dir, max_batch=16, max_delay_ms=10, max_body_bytes=64 * 1024,
                        max_pixels=100_000) as server:
        yield server


def png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def images() -> np.ndarray:
    """48 distinct random 8x8 RGB images."""
    return np.random.default_rng(1).integers(0, 256, size=(48, 8, 8, 3), dtype=np.uint8)


def shapes_png() -> bytes:
    """A red and a blue rectangle on light grey, 240x160: what the shapes detectors of
    tests/data/foreign were trained to find."""
    from PIL import ImageDraw

    img = Image.new("RGB", (240, 160), (230, 230, 230))
    draw = ImageDraw.Draw(img)
    draw.rectangle((20, 30, 90, 120), fill=(220, 30, 30))
    draw.rectangle((140, 50, 220, 100), fill=(30, 40, 220))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
