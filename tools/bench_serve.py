"""Benchmark `edgecnn serve` against the bare batched session.run of the same model, same run.

    .venv/bin/python tools/bench_serve.py edgecnn/assets/models/seed_cnn_cifar10.onnx \
        build/serve-bench/mobilenet_v2.onnx --requests 10000 --soak-s 180 --matrix

Per model: (1) bare throughput: ``Classifier.run`` on a preprocessed batch of --max-batch images
in a loop, images/s; (2) the server (batching on) under --requests PNG requests at
--concurrency, loopback, from tools/load_serve.py's client, with the server's RSS before and
after; (3) with --soak-s, a memory run at the same concurrency sampling RSS every 10 s;
(4) with --matrix, throughput and latency at concurrency 1/8/32/64 with batching on and off.
Writes the "Serving" section of docs/benchmarks.md (between its markers) and a JSON next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from load_serve import ServerProcess, format_table, make_payloads, run_load  # noqa: E402

from edgecnn.runtime import Classifier  # noqa: E402
from edgecnn.serve import ServeConfig  # noqa: E402
from edgecnn.serve.models import server_threads  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- serve-bench:begin -->", "<!-- serve-bench:end -->"


def bare_throughput(model: Path, batch: int, seconds: float, threads: int | None = None) -> dict:
    """Images/s of back-to-back ``session.run`` calls on one preprocessed batch (no decoding, no HTTP)."""
    clf = Classifier(model, threads=threads)
    x = clf.preprocess(np.random.default_rng(0).integers(0, 256, (batch, *clf.card.input_size, 3), dtype=np.uint8))
    for _ in range(5):
        clf.run(x)
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        clf.run(x)
        calls += 1
    elapsed = time.perf_counter() - t0
    # The same with decoding: what an in-process app pays per image (Classifier.predict on PNG bytes).
    payloads = make_payloads(clf.card.input_size, count=batch)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds / 2:
        clf.predict_proba(payloads)
        n += batch
    return {"images_per_s": calls * batch / elapsed, "calls": calls, "batch_ms": 1000 * elapsed / calls,
            "with_decode_images_per_s": n / (time.perf_counter() - t0)}


def soak(srv: ServerProcess, name: str, payloads: list[bytes], concurrency: int, seconds: float) -> dict:
    rss = [srv.rss_mib()]
    results = []
    for _ in range(max(1, int(seconds // 10))):
        r = asyncio.run(run_load(srv.url, name, concurrency=concurrency, requests=10**9, max_seconds=10,
                                 payloads=payloads, batching="on"))
        results.append(r)
        rss.append(srv.rss_mib())
    return {"seconds": sum(r.seconds for r in results), "requests": sum(r.requests for r in results),
            "errors": sum(r.error_count for r in results), "rss_mib": [round(v, 1) for v in rss]}


def bench_model(model: Path, args: argparse.Namespace) -> dict:
    out: dict = {"model": str(model)}
    out["server_threads"] = server_threads(ServeConfig())
    out["bare"] = bare_throughput(model, args.max_batch, args.bare_s)
    out["bare_st"] = bare_throughput(model, args.max_batch, args.bare_s, out["server_threads"])
    print(f"{model.name}: bare {out['bare']['images_per_s']:.0f} img/s, {out['bare_st']['images_per_s']:.0f} img/s "
          f"with {out['server_threads']} thread(s)", flush=True)
    out["load_before"] = os.getloadavg()[0]
    with ServerProcess(model, max_batch=args.max_batch, max_delay_ms=args.max_delay_ms) as srv:
        info = srv.model_info()
        payloads = make_payloads(tuple(info["card"]["input_size"]))
        asyncio.run(run_load(srv.url, info["name"], concurrency=args.concurrency, requests=500, max_seconds=20,
                             payloads=payloads, batching="warm-up"))
        rss0 = srv.rss_mib()
        main = asyncio.run(run_load(srv.url, info["name"], concurrency=args.concurrency, requests=args.requests,
                                    max_seconds=args.max_seconds, payloads=payloads, batching="on"))
        out["server"] = {**asdict(main), "rss_before_mib": rss0, "rss_after_mib": srv.rss_mib()}
        print(format_table([main]), flush=True)
        # Other jobs share this machine: measure bare again right after the server run, and
        # compare the server with the mean of the two.
        out["bare_after"] = bare_throughput(model, args.max_batch, args.bare_s)
        out["bare_st_after"] = bare_throughput(model, args.max_batch, args.bare_s, out["server_threads"])
        if args.soak_s:
            out["soak"] = soak(srv, info["name"], payloads, args.concurrency, args.soak_s)
            print(f"soak: {out['soak']}", flush=True)
    if args.matrix:
        rows = []
        for mode, batch in (("on", args.max_batch), ("off", 1)):
            with ServerProcess(model, max_batch=batch, max_delay_ms=args.max_delay_ms) as srv:
                for c in (1, 8, 32, 64):
                    rows.append(asyncio.run(run_load(srv.url, info["name"], concurrency=c,
                                                     requests=args.matrix_requests, max_seconds=args.max_seconds,
                                                     payloads=payloads, batching=f"{mode} ({batch})")))
                    print(format_table(rows[-1:]).splitlines()[-1], flush=True)
        out["matrix"] = [asdict(r) for r in rows]
        out["matrix_table"] = format_table(rows)
    return out


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import onnxruntime

    return (f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}, "
            f"onnxruntime {onnxruntime.__version__}, load average before the run {os.getloadavg()[0]:.1f}")


def markdown(results: list[dict], args: argparse.Namespace, command: str, machine_line: str, date: str) -> str:
    lines = [BEGIN, "## Serving (`edgecnn serve`)", "",
             f"- Command: `{command}`", f"- Date: {date}",
             f"- Machine: {machine_line}", *(f"- {n}" for n in args.note),
             f"- Server: `edgecnn serve MODEL --max-batch {args.max_batch} --max-delay-ms {args.max_delay_ms:g}` "
             "(uvicorn with httptools + uvloop; onnxruntime on all cores but one), client `tools/load_serve.py` "
             "(keep-alive HTTP/1.1, random 32x32 PNGs) on the same machine: the client's CPU is taken from the "
             "server's 2 cores.",
             "- Bare: `Classifier.run` on one preprocessed batch in a loop (no decoding, no HTTP), with "
             "onnxruntime's default threads (all cores) and with the server's thread count, each just before and "
             "just after the server run; the ratio is against the better of the two means.",
             "- Other engineers' training jobs shared the 2 cores during the run (load average above): absolute "
             "numbers move by up to 2x between runs (onnxruntime on both cores suffers most: its threads wait for "
             "each other when one shares a core), so the sweep and the memory run are second samples of the "
             "server's throughput.",
             "- Reading: a request costs the server a few hundred microseconds of Python (uvicorn, Starlette/FastAPI "
             "routing, PNG decode, JSON) whatever the model. seed_cnn's bare session.run is far cheaper per "
             "image, so its server is HTTP-bound and stays well under 70% of bare on 2 shared cores; MobileNetV2's "
             "inference dominates and its server runs at the bare rate. Batching roughly doubles seed_cnn's "
             "throughput at concurrency 8 and up, and adds about a fifth for MobileNetV2.", "",
             f"| model | bare batch-{args.max_batch} session.run img/s, all cores (before / after) | same, server's "
             f"threads (before / after) | in-process decode+run img/s | server req/s (c={args.concurrency}) | "
             "server / best bare | p50 ms | p99 ms | requests | errors | server RSS MiB before -> after |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        s = r["server"]
        lines.append(f"| {Path(r['model']).name} | {_pair(r, 'bare')} | {_pair(r, 'bare_st')} "
                     f"({r['server_threads']}) | {r['bare']['with_decode_images_per_s']:.0f} | {s['throughput']:.0f} | "
                     f"{s['throughput'] / _best_bare(r):.0%} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
                     f"{s['requests']} | {sum(s['errors'].values())} | "
                     f"{s['rss_before_mib']:.0f} -> {s['rss_after_mib']:.0f} |")
    lines += ["", "Against the goal (server >= 70% of bare, 0 errors over 10,000 requests, flat memory):", ""]
    for r in results:
        s = r["server"]
        ratio = s["throughput"] / _best_bare(r)
        errors = sum(s["errors"].values())
        verdict = [f"{ratio:.0%} of bare ({'met' if ratio >= 0.7 else 'not met'})",
                   f"{errors} errors in {s['requests']} requests"]
        if "soak" in r:
            rss = r["soak"]["rss_mib"]
            verdict.append(f"RSS {rss[0]:.1f} -> {rss[-1]:.1f} MiB over {r['soak']['seconds']:.0f} s "
                           f"({r['soak']['requests']} requests, {r['soak']['errors']} errors)")
        lines.append(f"- {Path(r['model']).name}: " + "; ".join(verdict) + ".")
    for r in results:
        if "soak" in r:
            k = r["soak"]
            lines += ["", f"Memory run, {Path(r['model']).name}: {k['requests']} requests in {k['seconds']:.0f} s at "
                      f"c={args.concurrency}, {k['errors']} errors; server RSS every 10 s (MiB): "
                      f"{', '.join(f'{v:.0f}' for v in k['rss_mib'])}."]
        if "matrix" in r:
            lines += ["", f"Concurrency sweep, {Path(r['model']).name} ({args.matrix_requests} requests per row):", "",
                      r["matrix_table"]]
    return "\n".join(lines + ["", END]) + "\n"


def _pair(r: dict, key: str) -> str:
    return f"{r[key]['images_per_s']:.0f} / {r[key + '_after']['images_per_s']:.0f}"


def _best_bare(r: dict) -> float:
    """The better of the two bare means (all cores, server's threads): the strictest comparison."""
    return max((r[k]["images_per_s"] + r[k + "_after"]["images_per_s"]) / 2 for k in ("bare", "bare_st"))


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="minutes")


def write_section(path: Path, section: str) -> None:
    """Replace this tool's section of ``path`` (between its markers), or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section.rstrip("\n") + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--max-seconds", type=float, default=300.0, help="Cap of each load run.")
    ap.add_argument("--bare-s", type=float, default=10.0)
    ap.add_argument("--soak-s", type=float, default=0.0, help="Memory run length (0: none).")
    ap.add_argument("--matrix", action="store_true", help="Also the concurrency 1/8/32/64 x batching on/off sweep.")
    ap.add_argument("--matrix-requests", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "serve.json")
    ap.add_argument("--note", action="append", default=[], help="A bullet to add (where a model came from...).")
    ap.add_argument("--render", action="store_true", help="Only rewrite the markdown from --json (no measuring).")
    args = ap.parse_args()
    if args.render:
        saved = json.loads(args.json.read_text())
        write_section(args.out, markdown(saved["results"], args, saved["command"], saved["machine"],
                                            saved.get("date", "see git log")))
        print(f"wrote {args.out}")
        return
    if args.requests > 100_000 or args.soak_s > 1800:
        raise SystemExit("Keep runs bounded: at most 100000 requests and a 30-minute memory run.")
    command = "python tools/bench_serve.py " + shlex.join(sys.argv[1:])
    machine_line, date = machine(), _now()
    results = [bench_model(m, args) for m in args.models]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": command, "machine": machine_line, "date": date, "results": results},
                                    indent=2))
    write_section(args.out, markdown(results, args, command, machine_line, date))
    print(f"wrote {args.out} and {args.json}")


if __name__ == "__main__":
    main()
