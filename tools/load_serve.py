"""Async load generator for `edgecnn serve` (loopback only, bounded in requests and time).

    .venv/bin/python tools/load_serve.py --model edgecnn/assets/models/seed_cnn_cifar10.onnx
    .venv/bin/python tools/load_serve.py --url http://127.0.0.1:8000 --name seed_cnn_cifar10 -c 1,8,32

With --model it starts the server itself (batching on: --max-batch/--max-delay-ms; off: max batch 1)
on a free loopback port, once per batching mode. It reports throughput, p50/p90/p99 latency and
errors per concurrency level. The client is a minimal keep-alive HTTP/1.1 one over asyncio
streams (one connection per concurrent client): on a 2-core box the client shares the CPU with
the server, and httpx would cost it several times more CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection: *close", re.IGNORECASE)


@dataclass
class LoadResult:
    concurrency: int
    batching: str
    requests: int
    seconds: float
    throughput: float  # successful requests per second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)  # status code (or exception name) -> count

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def check_loopback(url: str) -> tuple[str, int]:
    """(host, port) of ``url``; refuses anything but a loopback address."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    ok = host == "localhost"
    try:
        ok = ok or ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if not ok or parts.scheme != "http":
        raise SystemExit(f"Refusing {url}: this load generator only targets http://127.0.0.1 or localhost.")
    return host, parts.port or 80


def make_payloads(size: tuple[int, int], count: int = 64, seed: int = 0) -> list[bytes]:
    """``count`` distinct random PNG images of ``size`` = (h, w)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _raw_requests(host: str, port: int, path: str, payloads: list[bytes], token: str | None) -> list[bytes]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return [(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n{auth}"
             f"Content-Length: {len(p)}\r\n\r\n").encode() + p for p in payloads]


async def _client(host: str, port: int, raws: list[bytes], state: dict, latencies: list[float],
                  errors: dict[str, int]) -> None:
    reader = writer = None
    try:
        while state["sent"] < state["total"] and time.perf_counter() < state["deadline"]:
            i = state["sent"]
            state["sent"] += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                t0 = time.perf_counter()
                writer.write(raws[i % len(raws)])
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                m = _LENGTH.search(head)
                body = await reader.readexactly(int(m.group(1)) if m else 0)
                latency = time.perf_counter() - t0
                status = int(head[9:12])
                if status == 200 and b'"predictions"' in body:
                    latencies.append(latency)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1
                if _CLOSE.search(head):
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as err:
                errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
                if writer is not None:
                    writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()


async def run_load(url: str, name: str, *, concurrency: int, requests: int, max_seconds: float,
                   payloads: list[bytes], token: str | None = None, batching: str = "") -> LoadResult:
    """Send up to ``requests`` predict requests (at most ``max_seconds``) from ``concurrency`` clients."""
    host, port = check_loopback(url)
    raws = _raw_requests(host, port, f"/v1/models/{name}:predict", payloads, token)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = time.perf_counter()
    state = {"sent": 0, "total": requests, "deadline": start + max_seconds}
    await asyncio.gather(*(_client(host, port, raws, state, latencies, errors) for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    q = np.percentile(np.asarray(latencies) * 1000, [50, 90, 99]) if latencies else [float("nan")] * 3
    return LoadResult(concurrency, batching, state["sent"], seconds, len(latencies) / seconds, *map(float, q),
                      errors=errors)


# ------------------------------------------------------------------------------ a server to load
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``edgecnn serve`` in a subprocess on a free loopback port (a context manager)."""

    def __init__(self, model: Path, *, max_batch: int, max_delay_ms: float, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "edgecnn.cli", "serve", str(model), "--port", str(self.port),
                     "--max-batch", str(max_batch), "--max-delay-ms", str(max_delay_ms), "--queue-size", "1024",
                     *(extra or [])]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        env = {**os.environ, "EDGECNN_TOKEN": ""}
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise SystemExit("the server did not get ready within 120 s")

    def rss_mib(self) -> float:
        """Resident memory of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def model_info(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/v1/models") as r:
            return json.loads(r.read())["models"][0]

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def format_table(results: list[LoadResult]) -> str:
    lines = ["| batching | concurrency | requests | req/s | p50 ms | p90 ms | p99 ms | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        errs = ", ".join(f"{k}: {v}" for k, v in r.errors.items()) or "0"
        lines.append(f"| {r.batching} | {r.concurrency} | {r.requests} | {r.throughput:.0f} | {r.p50_ms:.1f} | "
                     f"{r.p90_ms:.1f} | {r.p99_ms:.1f} | {errs} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="Start `edgecnn serve MODEL` (batching on and off) and load it.")
    ap.add_argument("--url", help="Load a running server instead (loopback only).")
    ap.add_argument("--name", help="Model name on --url (default: its first model).")
    ap.add_argument("--token", default=os.environ.get("EDGECNN_TOKEN") or None)
    ap.add_argument("-c", "--concurrency", default="1,8,32,64")
    ap.add_argument("-n", "--requests", type=int, default=2000, help="Requests per concurrency level (at most).")
    ap.add_argument("--max-seconds", type=float, default=30.0, help="Time cap per concurrency level.")
    ap.add_argument("--batching", default="on,off", help="With --model: on, off or both.")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--json", type=Path, help="Also write the results as JSON.")
    args = ap.parse_args()
    if args.requests > 100_000 or args.max_seconds > 600:
        raise SystemExit("Keep runs bounded: at most 100000 requests and 600 s per level.")
    levels = [int(c) for c in args.concurrency.split(",")]
    results: list[LoadResult] = []
    if args.url:
        check_loopback(args.url)
        with urllib.request.urlopen(urllib.request.Request(
                f"{args.url}/v1/models", headers={"Authorization": f"Bearer {args.token}"} if args.token else {})) as r:
            info = next(m for m in json.loads(r.read())["models"] if args.name in (None, m["name"]))
        payloads = make_payloads(tuple(info["card"]["input_size"]))
        for c in levels:
            results.append(asyncio.run(run_load(args.url, info["name"], concurrency=c, requests=args.requests,
                                                max_seconds=args.max_seconds, payloads=payloads, token=args.token,
                                                batching="?")))
    elif args.model:
        for mode in args.batching.split(","):
            batch = args.max_batch if mode == "on" else 1
            with ServerProcess(args.model, max_batch=batch, max_delay_ms=args.max_delay_ms) as srv:
                info = srv.model_info()
                payloads = make_payloads(tuple(info["card"]["input_size"]))
                for c in levels:
                    results.append(asyncio.run(run_load(srv.url, info["name"], concurrency=c, requests=args.requests,
                                                        max_seconds=args.max_seconds, payloads=payloads,
                                                        batching=f"{mode} ({batch})")))
                    print(format_table(results[-1:]).splitlines()[-1], flush=True)
    else:
        raise SystemExit("Pass --model PATH or --url http://127.0.0.1:PORT.")
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
