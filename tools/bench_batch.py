"""edgecnn batch end to end against the bare cost of the same work, in one run; and kills + resume.

    .venv/bin/python tools/bench_batch.py --images 100000 --work build/batch \
        [--mnv2 /work/runs/mnv2_224/export/model.onnx --mnv2-images 5000] [--kills 5] [--out build/batch.json]

1. Writes the CIFAR-10 test images (``../shared/datasets/cifar10.npz``, else the packaged sample)
   as PNG files, repeated until there are ``--images`` of them (kept in ``--work`` for the next run).
2. Bare cost, per model, on the first 2,000 files: decoding + fitting each file with the runtime's
   loader (one process), then the model's call from uint8 pixels in batches of ``--batch-size`` (what
   ``edgecnn bench`` times as ``+pixels``), summed: the images/s of the work itself, done serially.
3. ``edgecnn batch`` (``run_batch``, in this process, the same ``--batch-size``) over all
   the files: the local engine with 1 and 2 decoding workers and Ray with 1 and 2 actors; images/s,
   overhead against the bare cost, and the main process's RSS at 10% and 100% of the job.
4. ``--kills N``: ``edgecnn batch`` in a subprocess over 10,000 of the files, SIGKILLed N times at
   random instants, resumed after each, then checked: every input once, none twice, none missing.

Prints a markdown table and writes the JSON (with the machine and the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgecnn.batch import BatchConfig, run_batch  # noqa: E402
from edgecnn.batch.inputs import Decoder  # noqa: E402
from edgecnn.runtime import load_model  # noqa: E402
from edgecnn.runtime.timing import machine_fingerprint  # noqa: E402

SEED = ROOT / "edgecnn" / "assets" / "models" / "seed_cnn_cifar10.onnx"
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10.npz"


def write_images(folder: Path, count: int) -> list[Path]:
    """``count`` PNG files of CIFAR-10 test images (repeated), 1,000 per sub-folder."""
    from PIL import Image

    files = sorted(folder.rglob("*.png"))
    if len(files) >= count:
        return files[:count]
    if CIFAR.is_file():
        with np.load(CIFAR) as data:
            images = data["x_test"]
    else:
        from edgecnn.datasets import load_embedded_sample

        images = load_embedded_sample()[2]
    for i in range(len(files), count):
        path = folder / f"{i // 1000:04d}" / f"{i:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i % len(images)]).save(path)
    return sorted(folder.rglob("*.png"))[:count]


def bare_cost(model_path: Path, files: list[Path], batch: int) -> dict[str, float]:
    """Milliseconds per image: decode + fit, and the model's call from pixels in batches of ``batch``,
    with onnxruntime's default threads (every core: the model alone, nothing beside it)."""
    model = load_model(model_path)
    decoder = Decoder.of(model)
    t0 = time.perf_counter()
    pixels = np.stack([decoder.fit(f)[0] for f in files])  # type: ignore[misc]
    decode = (time.perf_counter() - t0) / len(files)
    model.run_pixels(pixels[:batch])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(pixels), batch):
        model.run_pixels(pixels[i:i + batch])
    infer = (time.perf_counter() - t0) / len(pixels)
    return {"decode_ms": decode * 1e3, "model_ms": infer * 1e3, "images_per_s": 1 / (decode + infer)}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_job(model: Path, folder: Path, out: Path, *, engine: str, workers: int, batch: int) -> dict[str, Any]:
    marks: dict[str, float] = {}

    def progress(total: int, done: int) -> Any:
        seen = [done]

        def step(n: int) -> None:
            seen[0] += n
            if "rss_10pct_mb" not in marks and seen[0] >= total / 10:
                marks["rss_10pct_mb"] = rss_mb()
            if seen[0] >= total:  # the last chunk, before the job lets go of the model
                marks["rss_100pct_mb"] = rss_mb()

        return step

    summary = run_batch(model, folder, BatchConfig(out=out, engine=engine, workers=workers, batch_size=batch,
                                                   progress=False), progress=progress)
    return {"engine": engine, "workers": workers, "batch_size": batch, "images": summary.images,
            "seconds": summary.seconds, "images_per_s": summary.images_per_s, **marks, "notes": summary.notes}


def kills(model: Path, files: list[Path], work: Path, count: int, seed: int = 0) -> dict[str, Any]:
    """Kill ``edgecnn batch`` ``count`` times at random instants, resume, and check the rows."""
    import pyarrow.parquet as pq

    listing = work / "kill_list.txt"
    listing.write_text("\n".join(str(f) for f in files) + "\n")
    out = Path(tempfile.mkdtemp(dir=work, prefix="kills-"))
    args = [sys.executable, "-m", "edgecnn.cli", "batch", str(model), str(listing), "--out", str(out / "rows"),
            "--shard-size", "500", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    clean = out / "clean"
    t0 = time.perf_counter()  # a clean run sets the time scale of the kills
    subprocess.run(args[:7] + [str(clean)] + args[8:], check=True, stdout=subprocess.DEVNULL, env=env)
    whole = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    instants = []
    for k in range(count):
        left = 1 - len(list((out / "rows").glob("part-*"))) / -(-len(files) // 500) if k else 1.0
        proc = subprocess.Popen(args + (["--resume"] if k else []), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        wait = float(rng.uniform(0.3, max(0.4, 0.9 * whole * left)))  # before the job would end
        time.sleep(wait)
        ended = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        instants.append({"after_s": round(wait, 2), "finished_before_the_kill": ended})
    final = subprocess.run(args + ["--resume"], capture_output=True, text=True, env=env)
    names = pq.read_table(out / "rows", columns=["path"]).column("path").to_pylist()
    return {"kills": count, "clean_run_s": round(whole, 2), "instants": instants, "final_exit": final.returncode,
            "summary": json.loads(final.stdout) if final.returncode == 0 else final.stderr[-500:],
            "rows": len(names), "unique": len(set(names)), "inputs": len(files),
            "missing": len({str(f) for f in files} - set(names))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "batch")
    parser.add_argument("--mnv2", type=Path, default=None, help="a MobileNetV2-224 model.onnx with its card")
    parser.add_argument("--mnv2-images", type=int, default=5000)
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--kills", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128,
                        help="the bare cost's and both engines' (Ray's per-batch cost wants 100+)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    files = write_images(args.work / "images", args.images)
    models = [("seed_cnn 32x32", SEED, args.images)] + ([("mobilenet_v2 224x224", args.mnv2, args.mnv2_images)]
                                                       if args.mnv2 else [])
    results = []
    for name, path, count in models:
        folder = args.work / f"subset-{count}"
        if not folder.exists():  # a folder of the first `count` files (symlinks)
            for f in files[:count]:
                (folder / f.parent.name).mkdir(parents=True, exist_ok=True)
                (folder / f.parent.name / f.name).symlink_to(f)
        bare = bare_cost(path, files[:2000], args.batch_size)
        print(f"{name}: bare {bare}", file=sys.stderr)
        for engine in args.engines.split(","):
            for workers in (1, 2):
                out = Path(tempfile.mkdtemp(dir=args.work, prefix="out-"))
                run = one_job(path, folder, out / "rows", engine=engine, workers=workers, batch=args.batch_size)
                run["overhead_vs_bare"] = bare["images_per_s"] / run["images_per_s"] - 1
                results.append({"model": name, "images": count, "bare": bare, **run})
                print(f"{name} {engine} x{workers}: {run['images_per_s']:.0f} img/s", file=sys.stderr)
    report: dict[str, Any] = {"machine": machine_fingerprint(), "load_average": os.getloadavg(), "results": results}
    if args.kills:
        report["kills"] = kills(SEED, files[:10_000], args.work, args.kills)
    print("| model | images | engine | workers | img/s | bare img/s | vs bare | RSS 10% / 100% (MB) |")
    print("|---|---:|---|---:|---:|---:|---:|---|")
    for r in results:
        print(f"| {r['model']} | {r['images']:,} | {r['engine']} | {r['workers']} | {r['images_per_s']:,.0f} | "
              f"{r['bare']['images_per_s']:,.0f} | {100 * r['overhead_vs_bare']:+.1f}% | "
              f"{r.get('rss_10pct_mb', float('nan')):.0f} / {r.get('rss_100pct_mb', float('nan')):.0f} |")
    if args.kills:
        print(json.dumps(report["kills"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
