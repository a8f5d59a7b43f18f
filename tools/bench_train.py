"""Training-stage benchmarks: CLI start-up time and training throughput.

    python tools/bench_train.py help-time            # `edgecnn --help` wall time vs `import tensorflow`
    python tools/bench_train.py throughput --model seed_cnn --model resnet20 --data ../shared/datasets/cifar10.npz
    python tools/bench_train.py report runs/seed_cnn_cifar10 runs/resnet20_cifar10   # table from finished runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _wall(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def help_time(repeats: int) -> None:
    exe = [sys.executable, "-m", "edgecnn.cli"]
    rows = [("edgecnn --help", _wall([*exe, "--help"], repeats)),
            ("edgecnn predict --help", _wall([*exe, "predict", "--help"], repeats) if _has("predict") else None),
            ("python -c 'import tensorflow'", _wall([sys.executable, "-c", "import tensorflow"], repeats))]
    print("| command | median wall time |\n|---|---|")
    for name, t in rows:
        if t is not None:
            print(f"| `{name}` | {t * 1000:.0f} ms |")


def _has(cmd: str) -> bool:
    from edgecnn.cli import main

    return cmd in main.commands


def throughput(models: list[str], data: str, images: int, batch: int) -> None:
    import keras
    import numpy as np

    import edgecnn.train._tf  # noqa: F401  (TensorFlow quietly, before keras)
    from edgecnn.datasets import load_npz
    from edgecnn.train.config import AugmentConfig
    from edgecnn.train.pipeline import make_dataset
    from edgecnn.train.registry import build_model

    x, y, _, _ = load_npz(data)
    x, y = x[:images], y[:images]
    print("| model | batch | images/s (train, augmented) | ms/step |\n|---|---|---|---|")
    for name in models:
        model = build_model(name, 10)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="categorical_crossentropy")
        ds = make_dataset(x, y, num_classes=10, batch_size=batch, mean=(125, 123, 114), std=(63, 62, 66),
                          training=True, augment=AugmentConfig())
        model.fit(ds.take(5), epochs=1, verbose=0, shuffle=False)  # warm-up: tracing, oneDNN kernel selection
        t = time.perf_counter()
        model.fit(ds, epochs=1, verbose=0, shuffle=False)
        dt = time.perf_counter() - t
        steps = int(np.ceil(len(x) / batch))
        print(f"| {name} | {batch} | {len(x) / dt:,.0f} | {dt / steps * 1000:.1f} |")


def report(runs: list[str]) -> None:
    print("| run | model | epochs | test top-1 | test top-5 | train time | images/s |\n|---|---|---|---|---|---|---|")
    for run in runs:
        card = json.loads((Path(run) / "card.json").read_text())
        m = card["metrics"]
        ips = card["dataset"]["num_train"] * m["epochs"] / max(m["train_time_s"], 1e-9)
        print(f"| {Path(run).name} | {card['architecture']} | {m['epochs']} | {m['test_accuracy']:.2%} | "
              f"{m.get('test_top5', float('nan')):.2%} | {m['train_time_s'] / 60:.1f} min | {ips:,.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("help-time")
    h.add_argument("--repeats", type=int, default=5)
    t = sub.add_parser("throughput")
    t.add_argument("--model", action="append", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--images", type=int, default=10000)
    t.add_argument("--batch", type=int, default=128)
    r = sub.add_parser("report")
    r.add_argument("runs", nargs="+")
    args = ap.parse_args()
    if args.cmd == "help-time":
        help_time(args.repeats)
    elif args.cmd == "throughput":
        throughput(args.model, args.data, args.images, args.batch)
    else:
        report(args.runs)


if __name__ == "__main__":
    main()
