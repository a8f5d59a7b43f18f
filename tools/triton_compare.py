"""edgecnn serve against a real Triton Inference Server, same model, same client, same run.

    .venv/bin/python tools/triton_compare.py edgecnn/assets/models/seed_cnn_cifar10.onnx \\
        --triton-python /tmp/tritonvenv/bin/python -c 8,32,64 --seconds 8 --json docs/benchmarks/triton.json

Triton comes from the `nvidia-pytriton` wheel (its real `tritonserver` binary and Python
backend; make its venv from the system `python3`, whose libpython the backend stub links:
`python3 -m venv /tmp/tritonvenv && /tmp/tritonvenv/bin/pip install nvidia-pytriton onnxruntime
"numpy<2" Pillow`). It serves the same ONNX file through one onnxruntime session (intra-op
threads as edgecnn's: all cores but one) with dynamic batching (max batch 32, 5 ms queue delay,
as edgecnn serve's defaults), an FP32 tensor model and a BYTES model that decodes PNGs with
Pillow and normalizes them with the file's edgecnn card. edgecnn serve runs with its defaults.

One asyncio client (keep-alive HTTP/1.1, one connection per concurrent request, prebuilt request
bytes) drives both, per request kind and concurrency: JSON tensors (v1 `instances` for edgecnn,
Open Inference Protocol v2 JSON for both), v2 binary tensors, and PNG uploads (v1 raw bytes for
edgecnn, v2 BYTES for both). Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

TRITON_SERVER = textwrap.dedent('''
    import io, json, os, sys
    import numpy as np, onnxruntime as ort
    from PIL import Image
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    path, http_port, grpc_port, metrics_port, threads, instances = sys.argv[1], *map(int, sys.argv[2:7])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sessions = [ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
                for _ in range(instances)]
    sess = sessions[0]
    card = json.loads(sess.get_modelmeta().custom_metadata_map["edgecnn.card"])
    h, w = card["input_size"]
    mean = np.asarray(card["mean"], np.float32)
    inv_std = 1.0 / np.asarray(card["std"], np.float32)
    inp, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    classes = sess.get_outputs()[0].shape[-1]

    def tensors_on(s):
        @batch
        def tensors(images):
            return {out: s.run([out], {inp: images})[0]}
        return tensors

    def pngs_on(s):
        @batch
        def pngs(image_bytes):
            px = [np.asarray(Image.open(io.BytesIO(bytes(b[0]))).convert("RGB").resize((w, h), Image.BILINEAR),
                             np.float32) for b in image_bytes]
            return {out: s.run([out], {inp: (np.stack(px) - mean) * inv_std})[0]}
        return pngs

    cfg = ModelConfig(max_batch_size=32, batcher=DynamicBatcher(max_queue_delay_microseconds=5000))
    with Triton(config=TritonConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                                    log_verbose=0)) as triton:
        # One model instance per session (a list of callables: Triton's instance_group count).
        triton.bind("model", [tensors_on(x) for x in sessions],
                    inputs=[Tensor(name=inp, dtype=np.float32, shape=(h, w, 3))],
                    outputs=[Tensor(name=out, dtype=np.float32, shape=(classes,))], config=cfg, strict=False)
        triton.bind("model_png", [pngs_on(x) for x in sessions],
                    inputs=[Tensor(name="image_bytes", dtype=bytes, shape=(1,))],
                    outputs=[Tensor(name=out, dtype=np.float32, shape=(classes,))], config=cfg, strict=False)
        triton.serve()
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "\r\n").encode() + body


def _v2_binary(name: str, arr: np.ndarray, datatype: str, out: str) -> tuple[bytes, dict[str, str]]:
    raw = arr.tobytes() if datatype != "BYTES" else b"".join(len(b).to_bytes(4, "little") + b for b in arr.reshape(-1))
    head = json.dumps({"inputs": [{"name": name, "shape": list(arr.shape), "datatype": datatype,
                                   "parameters": {"binary_data_size": len(raw)}}],
                       "outputs": [{"name": out, "parameters": {"binary_data": True}}]}).encode()
    return head + raw, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}


def requests_for(model: Path) -> dict[str, dict[str, bytes]]:
    """Per request kind: the exact request bytes for each server (absent: the server lacks the kind)."""
    from edgecnn.runtime import Classifier

    clf = Classifier(model)
    name, out = clf.input_name, clf.output_name
    px = np.random.default_rng(0).integers(0, 256, (1, *clf.card.input_size, 3), dtype=np.uint8)
    x = clf.preprocess(px)
    buf = io.BytesIO()
    Image.fromarray(px[0]).save(buf, "PNG")
    png = buf.getvalue()
    edge = f"/v1/models/{model.stem}:predict"
    v1_json = json.dumps({"instances": x.tolist()}).encode()
    v2_json = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                      "data": x.reshape(-1).tolist()}]}).encode()
    v2_bin, bin_headers = _v2_binary(name, x, "FP32", out)
    png_arr = np.array([[png]], dtype=object)
    v2_png, png_headers = _v2_binary("image_bytes", png_arr, "BYTES", out)
    v2_png_edge, edge_png_headers = _v2_binary(name, np.array([png], dtype=object), "BYTES", out)
    js = {"Content-Type": "application/json"}
    return {
        "JSON tensor (v1)": {"edgecnn": _http("POST", edge, v1_json, js)},
        "JSON tensor (v2)": {"edgecnn": _http("POST", f"/v2/models/{model.stem}/infer", v2_json, js),
                             "triton": _http("POST", "/v2/models/model/infer", v2_json, js)},
        "binary tensor (v2)": {"edgecnn": _http("POST", f"/v2/models/{model.stem}/infer", v2_bin, bin_headers),
                               "triton": _http("POST", "/v2/models/model/infer", v2_bin, bin_headers)},
        "PNG (v1 raw / v2 BYTES)": {"edgecnn": _http("POST", edge, png, {"Content-Type": "image/png"}),
                                    "triton": _http("POST", "/v2/models/model_png/infer", v2_png, png_headers)},
        "PNG (v2 BYTES)": {"edgecnn": _http("POST", f"/v2/models/{model.stem}/infer", v2_png_edge, edge_png_headers)},
    }


async def _worker(port: int, request: bytes, end: float, lat: list[float], errors: list[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                          if line.startswith(b"content-length:"))
            await reader.readexactly(length)
            if status == 200:
                lat.append(time.perf_counter() - t0)
            else:
                errors.append(str(status))
    finally:
        writer.close()


async def _load(port: int, request: bytes, concurrency: int, seconds: float) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    await asyncio.gather(*(_worker(port, request, time.perf_counter() + 0.5, [], []) for _ in range(concurrency)))
    end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    await asyncio.gather(*(_worker(port, request, end, lat, errors) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"rps": len(lat) / wall, "p50_ms": 1e3 * float(np.median(lat)) if lat else None,
            "p99_ms": 1e3 * float(np.percentile(lat, 99)) if lat else None, "errors": len(errors)}


def _wait(port: int, path: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    import http.client

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stdout.read()[-3000:] if proc.stdout else ''}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"no server on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--triton-python", required=True, help="python of a venv with nvidia-pytriton installed")
    parser.add_argument("-c", "--concurrency", default="8,32,64")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--edgecnn-args", default="", help="extra `edgecnn serve` arguments, e.g. '--workers 2'")
    parser.add_argument("--only", choices=["edgecnn", "triton"], default=None, help="measure one server only")
    parser.add_argument("--instances", type=int, default=1,
                        help="Triton model instances (one onnxruntime session each): match edgecnn's --workers")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    threads = str(max(1, ((os.cpu_count() or 2) - 1) // args.instances))
    rows = []
    script = Path(tempfile.mkdtemp(prefix="triton-compare-")) / "triton_server.py"
    script.write_text(TRITON_SERVER)
    for model in args.models:
        reqs = requests_for(model)
        for server in [s for s in ("edgecnn", "triton") if args.only in (None, s)]:
            port = _free_port()
            if server == "edgecnn":
                cmd = [sys.executable, "-m", "edgecnn.cli", "serve", str(model), "--port", str(port),
                       *args.edgecnn_args.split()]
                ready = "/readyz"
            else:
                cmd = [args.triton_python, str(script), str(model.resolve()), str(port), str(_free_port()),
                       str(_free_port()), threads, str(args.instances)]
                ready = "/v2/models/model/ready"  # pytriton loads its models after the server is up
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                _wait(port, ready, proc)
                if server == "triton":
                    _wait(port, "/v2/models/model_png/ready", proc)
                for kind, by_server in reqs.items():
                    if server not in by_server:
                        continue
                    for c in levels:
                        res = asyncio.run(_load(port, by_server[server], c, args.seconds))
                        rows.append({"model": model.stem, "server": server, "kind": kind, "concurrency": c, **res})
                        print(json.dumps(rows[-1]), flush=True)
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print("| model | request | c | edgecnn req/s (p99 ms) | Triton req/s (p99 ms) | edgecnn / Triton |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        if r["server"] != "edgecnn":
            continue
        t = next((x for x in rows if x["server"] == "triton" and x["model"] == r["model"] and x["concurrency"] ==
                  r["concurrency"] and (x["kind"] == r["kind"] or (r["kind"].startswith("PNG (v1") and
                                                                   x["kind"].startswith("PNG (v1")))), None)
        tri = f"{t['rps']:.0f} ({t['p99_ms']:.1f})" if t else "-"
        ratio = f"{r['rps'] / t['rps']:.2f}x" if t else "-"
        print(f"| {r['model']} | {r['kind']} | {r['concurrency']} | {r['rps']:.0f} ({r['p99_ms']:.1f}) | {tri} | "
              f"{ratio} |")
    if args.json:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                         "loadavg": os.getloadavg(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
