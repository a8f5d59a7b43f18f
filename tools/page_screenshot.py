"""Make docs/img/serve-page.png: the page of ``edgecnn serve`` answering a real photo.

Serves the packaged CIFAR-10 reference model on a free loopback port, opens ``/`` in Debian's
headless Chromium (``/usr/bin/chromium``, driven by Playwright; no browser download), chooses the
photo in the page's file input, waits for the answer and saves the page, reduced to 256 colours
so that it stays small. The default photo is scikit-image's ``chelsea.png`` (a cat, public
domain), fetched from its wheel into tools/foreign_fidelity.py's cache.

    .venv/bin/python tools/page_screenshot.py [--photo PATH] [--out docs/img/serve-page.png]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

CHROMIUM = "/usr/bin/chromium"


@contextlib.contextmanager
def served(source: Path | None) -> Iterator[str]:
    """``edgecnn serve SOURCE`` in a thread on a free loopback port; yields its base URL."""
    from edgecnn.serve import ServeConfig, build_server

    server = build_server(source, ServeConfig(port=0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def screenshot(url: str, photo: Path, *, width: int = 1000, height: int = 640) -> bytes:
    """The page at ``url`` after answering ``photo``, as PNG bytes."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url + "/")
        page.wait_for_selector("#model-info:not(:empty)", timeout=30_000)
        page.set_input_files("#file", str(photo))
        page.wait_for_selector('#result[data-answers="1"]', state="attached", timeout=30_000)
        shot = page.screenshot(full_page=True)
        browser.close()
    return shot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", type=Path, help="the photo to answer (default: scikit-image's chelsea.png)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "serve-page.png")
    args = parser.parse_args()
    if args.photo is None:
        from foreign_fidelity import PHOTOS

        args.photo = PHOTOS["chelsea.png"].fetch()
    with served(None) as url:
        shot = Image.open(io.BytesIO(screenshot(url, args.photo))).convert("RGB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"{args.out}: {shot.width}x{shot.height}, {args.out.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
