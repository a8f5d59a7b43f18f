"""RSS of a live `edgecnn serve` after large and hostile bodies, and at the peak of an upload burst.

    .venv/bin/python tools/serve_memory.py

Starts a real server (the packaged seed_cnn, loopback, defaults) with tools/attack_serve.py's
helpers and measures three things, each against the RSS before it: five 7.6 MB v2 BYTES bodies
then 3 s idle; three passes of the hostile v2 bodies of tests/serve/test_v2.py plus JSON bodies of
0.1-1.5M values then 3 s idle; 200 concurrent 5 MB PNG uploads (the peak, sampled every 20 ms,
the answers, and the RSS 3 s after). Issue 21 §1.4's goal: within 20% of the start once idle.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import attack_serve as attack  # noqa: E402

V2 = "/v2/models/seed_cnn_cifar10/infer"


def _ready(url: str) -> None:
    for _ in range(100):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the server did not start")


def bytes_bodies(url: str, pid: int) -> str:
    n = 1_900_000
    head = json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": 4 * n + 4}}]}).encode()
    body = head + (4 * n).to_bytes(4, "little") + os.urandom(4 * n)
    start = attack._rss_mb(pid)
    for _ in range(5):
        httpx.post(url + V2, content=body, headers={"Inference-Header-Content-Length": str(len(head))}, timeout=30)
    time.sleep(3)
    return f"five 7.6 MB v2 BYTES bodies: RSS {start:.0f} -> {attack._rss_mb(pid):.0f} MB after 3 s idle"


def hostile_bodies(url: str, pid: int) -> str:
    from tests.serve import test_v2

    mark = test_v2.test_hostile_v2_bodies_are_one_json_4xx_without_a_traceback.pytestmark[0]
    bodies = [json.dumps(case[0]).encode() for case in mark.args[1]]
    bodies += [json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 32, 32, 3],
                                       "data": [0.0] * n}]}).encode() for n in (100_000, 1_000_000, 1_500_000)]
    start, codes = attack._rss_mb(pid), {}
    for _ in range(3):
        for body in bodies:
            code = httpx.post(url + V2, content=body, timeout=60).status_code
            codes[code] = codes.get(code, 0) + 1
    time.sleep(3)
    after3 = attack._rss_mb(pid)
    time.sleep(7)
    return (f"three passes of {len(bodies)} hostile v2 bodies {codes}: RSS {start:.0f} -> {after3:.0f} MB after 3 s, "
            f"{attack._rss_mb(pid):.0f} MB after 10 s idle")


def upload_burst(port: int, pid: int) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1290, 1290, 3), dtype=np.uint8)).save(buf, "PNG")
    body = buf.getvalue()
    start, peak, stop, codes = attack._rss_mb(pid), [0.0], threading.Event(), {}
    lock = threading.Lock()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], attack._rss_mb(pid))
            time.sleep(0.02)

    def one() -> None:
        code = attack.request(port, body, timeout=120)
        with lock:
            codes[code] = codes.get(code, 0) + 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    clients = [threading.Thread(target=one) for _ in range(200)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    stop.set()
    sampler.join()
    time.sleep(3)
    return (f"200 concurrent {len(body) / 1e6:.1f} MB PNG uploads {codes}: RSS {start:.0f}, peak {peak[0]:.0f}, "
            f"{attack._rss_mb(pid):.0f} MB 3 s after")


def main() -> None:
    port = attack._free_port()
    server = attack.start_server(port, [])
    try:
        url = f"http://127.0.0.1:{port}"
        _ready(url)
        httpx.post(url + "/v1/models/seed_cnn_cifar10:predict", content=attack.legit_image(),
                   headers={"Content-Type": "image/png"})
        for line in (bytes_bodies(url, server.pid), hostile_bodies(url, server.pid), upload_burst(port, server.pid)):
            print(line)
        print(f"load average {os.getloadavg()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
