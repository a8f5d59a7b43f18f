"""One worker vs N local workers (``edgecnn train --distribute multi-worker`` on a localhost gRPC
cluster): the same recipe, the same global batch and learning rate, timed end to end.

    python tools/bench_distribute.py --model seed_cnn --data ../shared/datasets/cifar10.npz \\
        --limit 5000 --epochs 2 --batch-size 128 --workers 2

Each setup runs as fresh ``edgecnn train`` processes (TensorFlow's collectives are set up at
process start). Prints a Markdown table: wall time (start of the processes to the last exit),
the run's own training time, training images/s, test accuracy; with the CPU, its core count and
the load average before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _run(workers: int, args: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "edgecnn.cli", "train", *args, "--out", str(out), "--quiet"]
    envs = [dict(os.environ)]
    if workers > 1:
        ports = _ports(workers)
        cluster = {"worker": [f"localhost:{p}" for p in ports]}
        envs = [{**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
                for i in range(workers)]
        cmd += ["--distribute", "multi-worker"]
    t = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for env in envs]
    errors = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - t
    for p, err in zip(procs, errors):
        if p.returncode:
            raise SystemExit(f"{workers} worker(s) failed:\n{err[-2000:]}")
    card = json.loads((out / "card.json").read_text())
    m = card["metrics"]
    images = card["dataset"]["num_train"] * m["epochs"]
    return {"wall": wall, "train": m["train_time_s"], "ips": images / m["train_time_s"], "acc": m["test_accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="seed_cnn")
    ap.add_argument("--data", default="../shared/datasets/cifar10.npz")
    ap.add_argument("--limit", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    args = ["--model", a.model, "--data", a.data, "--limit", str(a.limit), "--epochs", str(a.epochs),
            "--batch-size", str(a.batch_size), "--seed", "0"]
    from edgecnn.runtime.cpu import cpu_model_and_flags

    before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [(n, _run(n, args, Path(tmp) / f"w{n}")) for n in (1, a.workers)]
    after = os.getloadavg()
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; CPU: {cpu_model_and_flags()[0]}, "
          f"{os.cpu_count()} cores; load average (1/5/15 min) before {'/'.join(f'{v:.2f}' for v in before)}, after "
          f"{'/'.join(f'{v:.2f}' for v in after)}; {a.model}, {a.limit} images, {a.epochs} epochs, global batch "
          f"{a.batch_size}\n")
    print("| workers | wall time (s) | training time (s) | train images/s | test accuracy |\n|---|---|---|---|---|")
    for n, r in rows:
        print(f"| {n} | {r['wall']:.0f} | {r['train']:.0f} | {r['ips']:,.0f} | {r['acc']:.2%} |")


if __name__ == "__main__":
    main()
