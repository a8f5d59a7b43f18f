"""Attack a live `edgecnn serve` on loopback while a legitimate client measures what it still gets.

    .venv/bin/python tools/attack_serve.py --seconds 10 --json docs/benchmarks/attacks.json
    .venv/bin/python tools/attack_serve.py --short          # the test suite's quick mode

Starts the server itself (the packaged reference model, a real `edgecnn serve` process on a free
127.0.0.1 port), measures the legitimate client alone, then runs each attack for ``--seconds``
next to it: poison and mutated images, header floods, slowloris, decode bombs, slow bodies, an
upload burst and mid-upload disconnects. For each: the legitimate client's throughput against
its unattacked throughput and its errors, and the status codes the attackers got (a 5xx is a
failure). After the upload burst it waits for the server to settle and compares its RSS with
the start. Loopback only; every loop is bounded in time and count and stops by itself.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PATH = "/v1/models/seed_cnn_cifar10:predict"


# ----------------------------------------------------------------------------------- bodies

def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def legit_image() -> bytes:
    return _png(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def poison_dds() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 40)).save(buf, "DDS")
    data = bytearray(buf.getvalue())
    struct.pack_into("<I", data, 80, 0x2000)
    return bytes(data)


def hostile_inputs(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``count`` distinct hostile images: mutated PNG/JPEG/GIF/BMP/DDS/TIFF bytes (bit flips,
    truncations, lying headers), the poison DDS, and garbage (content type, body)."""
    rng = random.Random(seed)
    base = {}
    img = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "DDS", "TIFF", "WEBP", "ICO", "TGA", "PPM"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        base[fmt] = buf.getvalue()
    out: list[tuple[str, bytes]] = [("image/png", poison_dds())]
    seen = {out[0][1]}
    while len(out) < count:
        fmt = rng.choice(sorted(base))
        data = bytearray(base[fmt])
        kind = rng.randrange(4)
        if kind == 0:  # flip bytes in the header region
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(min(len(data), 128))] = rng.randrange(256)
        elif kind == 1:  # truncate
            data = data[: rng.randrange(1, len(data))]
        elif kind == 2:  # flip bytes anywhere
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:  # garbage
            data = bytearray(rng.randbytes(rng.randint(1, 2000)))
        if bytes(data) not in seen:
            seen.add(bytes(data))
            out.append(("image/png" if kind != 3 else "application/octet-stream", bytes(data)))
    return out


def jpeg_bomb(side: int = 5000) -> bytes:
    """A small JPEG declaring a side x side image (a flat colour compresses to a few KB)."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side - 1), (90, 120, 200)).save(buf, "JPEG", quality=10)
    return buf.getvalue()


def png_bomb(side: int = 4999) -> bytes:
    """A PNG of side x side zero pixels: about 25 KB that inflate to 75 MB."""
    raw = zlib.compress(b"".join(b"\x00" + bytes(side * 3) for _ in range(side)), 9)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------ HTTP

def request(port: int, body: bytes, ctype: str = "image/png", timeout: float = 15.0, path: str = PATH,
            headers: str = "") -> int:
    """One POST on a fresh connection; returns the status code (0: no answer)."""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"{headers}Connection: close\r\n\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(head + body)
            return _status(s)
    except OSError:
        return 0


def _status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return 0
        data += chunk
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


class Legit:
    """A polite keep-alive client posting one valid PNG after another for ``seconds``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.body = legit_image()

    def run(self, seconds: float) -> dict:
        import http.client

        ok, errors, lat = 0, Counter(), []
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                conn.request("POST", PATH, body=self.body, headers={"Content-Type": "image/png"})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    ok += 1
                    lat.append(time.perf_counter() - t0)
                else:
                    errors[str(resp.status)] += 1
            except (OSError, http.client.HTTPException) as err:
                errors[type(err).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        conn.close()
        return {"ok": ok, "rps": ok / seconds, "errors": dict(errors),
                "p50_ms": 1e3 * float(np.median(lat)) if lat else None,
                "p99_ms": 1e3 * float(np.percentile(lat, 99)) if lat else None}


# --------------------------------------------------------------------------------- attacks

class Attack:
    """Runs ``fn(stop, record)`` in ``workers`` threads until stopped; collects status codes."""

    def __init__(self, name: str, workers: int, fn) -> None:
        self.name, self.workers, self.fn = name, workers, fn
        self.codes: Counter = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def record(self, code: int) -> None:
        with self.lock:
            self.codes[str(code)] += 1

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self.fn, args=(self.stop, self.record, i), daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self) -> dict:
        self.stop.set()
        for t in self.threads:
            t.join(20)
        return dict(self.codes)


def attacks(port: int, short: bool) -> list[Attack]:
    inputs = hostile_inputs(160 if not short else 40)
    bomb_j, bomb_p = jpeg_bomb(), png_bomb(4000 if short else 4999)
    big = os.urandom(7 * 1024 * 1024 if not short else 2 * 1024 * 1024)

    # Rates are those of the attacks reported in issue 11 (a hostile client, not a load test: a
    # flood at full speed measures CPU sharing on 2 cores, not whether one client can hurt others).
    def poison(stop, record, i):  # every hostile input in turn, 25 requests/s per worker
        k = i
        while not stop.is_set():
            ctype, body = inputs[k % len(inputs)]
            record(request(port, body, ctype))
            k += 2
            stop.wait(0.04)

    def header_flood(stop, record, i):  # 8 connections streaming megabytes of headers, reconnecting
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(f"POST {PATH} HTTP/1.1\r\nHost: x\r\n".encode())
                    junk = b"X-Junk: " + b"a" * 65536 + b"\r\n"
                    try:
                        for _ in range(64):  # up to 4 MB of headers per connection
                            s.sendall(junk)
                    except OSError:
                        pass
                    record(_status(s))
            except OSError:
                record(0)
            stop.wait(0.1)

    def slowloris(stop, record, i):
        socks = []
        for _ in range(25):  # 25 per worker
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(f"POST {PATH} HTTP/1.1\r\nHost: x\r\n".encode())
                socks.append(s)
            except OSError:
                record(0)
        while not stop.is_set() and socks:
            for s in list(socks):
                try:
                    s.sendall(b"X-a: b\r\n")
                except OSError:
                    socks.remove(s)
                    record(408)  # closed by the server, as it should be
            stop.wait(1.0)
        for s in socks:
            s.close()

    def bombs(stop, record, i):  # 4 clients, one decode bomb per second each
        while not stop.is_set():
            record(request(port, bomb_j if i % 2 == 0 else bomb_p))
            stop.wait(1.0)

    def slow_bodies(stop, record, i):
        socks = []
        for _ in range(64):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                s.sendall(f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n"
                          "\r\nabc".encode())
                socks.append(s)
            except OSError:
                record(0)
        for s in socks:  # each gets its 408 once --body-timeout has passed
            try:
                s.settimeout(30)
                record(_status(s))
            except OSError:
                record(0)
            s.close()

    def burst(stop, record, i):
        if not stop.is_set():
            record(request(port, big, timeout=60))

    def disconnects(stop, record, i):
        body = legit_image() * 50
        while not stop.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
                s.close()
                record(499)
            except OSError:
                record(0)
            stop.wait(0.05)

    # Issue 21 §1.3: cheap requests that cost the server seconds of GIL (2 clients, one request a second each).
    n_bytes = 2_000_000 if not short else 200_000
    v2_head = json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [n_bytes],
                                      "parameters": {"binary_data_size": 4 * n_bytes}}]}).encode()
    bytes_body = v2_head + b"\0" * (4 * n_bytes)
    parts = b"".join(b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\r\n"
                     for _ in range(100_000 if not short else 10_000)) + b"--x--\r\n"
    zeros = b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 32, 32, 3], "data": [' + \
        b",".join([b"0"] * (3_000_000 if not short else 300_000)) + b"]}]}"
    v2 = f"/v2/models/{PATH.split('/')[3].split(':')[0]}/infer"

    def many_bytes(stop, record, i):
        while not stop.is_set():
            record(request(port, bytes_body, "application/octet-stream", path=v2,
                           headers=f"Inference-Header-Content-Length: {len(v2_head)}\r\n"))
            stop.wait(1.0)

    def many_parts(stop, record, i):
        while not stop.is_set():
            record(request(port, parts, "multipart/form-data; boundary=x"))
            stop.wait(1.0)

    def json_zeros(stop, record, i):
        while not stop.is_set():
            record(request(port, zeros, "application/json", path=v2))
            stop.wait(1.0)

    return [Attack("v2 BYTES of 2M empty elements", 2, many_bytes),
            Attack("multipart of 100k empty parts", 2, many_parts),
            Attack("v2 JSON of 3M zeros", 2, json_zeros),
            Attack("poison and mutated images", 2, poison), Attack("header flood", 2 if short else 8, header_flood),
            Attack("slowloris", 2 if short else 20, slowloris), Attack("decode bombs", 4, bombs),
            Attack("slow bodies", 1 if short else 4, slow_bodies), Attack("upload burst", 10 if short else 100, burst),
            Attack("mid-upload disconnects", 2, disconnects)]


# ---------------------------------------------------------------------------------- server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edgecnn.cli", "serve", "--port", str(port), "--threads", "1", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if request(port, legit_image(), timeout=2) == 200:
            return proc
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()[-2000:]}")
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not start")


def run(seconds: float, short: bool, extra: list[str], only: str | None = None) -> dict:
    port = _free_port()
    server = start_server(port, extra)
    try:
        legit = Legit(port)
        legit.run(1.0)  # warm up
        rss_start = _rss_mb(server.pid)
        base = legit.run(seconds)
        results = []
        for attack in (a for a in attacks(port, short) if not only or only.lower() in a.name.lower()):
            rss_before = _rss_mb(server.pid)
            attack.start()
            time.sleep(0.3 if short else 1.0)  # let the attack take hold before measuring
            under = legit.run(seconds)
            codes = attack.finish()
            row = {"attack": attack.name, "legit_rps": under["rps"], "ratio": under["rps"] / max(base["rps"], 1e-9),
                   "legit_errors": under["errors"], "legit_p99_ms": under["p99_ms"], "attacker_codes": codes,
                   "attacker_5xx": sum(v for k, v in codes.items() if k.startswith("5"))}
            if attack.name == "upload burst":
                time.sleep(3.0)
                row["rss_start_mb"], row["rss_after_mb"] = rss_before, _rss_mb(server.pid)
                row["rss_run_start_mb"] = rss_start
            results.append(row)
        distinct = len(hostile_inputs(160 if not short else 40))
        return {"baseline": base, "attacks": results, "distinct_hostile_inputs": distinct,
                "seconds": seconds, "server_alive": server.poll() is None,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loadavg": os.getloadavg()}
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Measuring time per attack.")
    parser.add_argument("--short", action="store_true", help="Small attacks, 2 s each (the test suite's mode).")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only", default=None, help="Run the attacks whose name contains this (e.g. 'v2').")
    parser.add_argument("server_args", nargs="*", help="Extra `edgecnn serve` arguments (after --).")
    args = parser.parse_args()
    extra = args.server_args or (["--body-timeout", "1", "--header-timeout", "1"] if args.short else [])
    out = run(2.0 if args.short else args.seconds, args.short, extra, args.only)
    base = out["baseline"]
    print(f"unattacked: {base['rps']:.1f} req/s, p99 {base['p99_ms']:.1f} ms, errors {base['errors']}")
    print("| attack | legit req/s | vs unattacked | legit errors | legit p99 ms | attacker answers | 5xx |")
    print("|---|---:|---:|---|---:|---|---:|")
    for r in out["attacks"]:
        extra = f" (RSS {r['rss_start_mb']:.0f} -> {r['rss_after_mb']:.0f} MB)" if "rss_after_mb" in r else ""
        print(f"| {r['attack']}{extra} | {r['legit_rps']:.1f} | {100 * r['ratio']:.0f}% | {r['legit_errors'] or 0} | "
              f"{r['legit_p99_ms'] or 0:.1f} | {r['attacker_codes']} | {r['attacker_5xx']} |")
    print(f"distinct hostile inputs: {out['distinct_hostile_inputs']}; server alive: {out['server_alive']}; "
          f"load average {out['loadavg']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
