"""Training throughput per precision: images/s of ``edgecnn train``'s pipeline and optimizer step
for each model under fp32 and bf16 (Keras mixed precision), one script, the same data.

    python tools/bench_precision.py --model seed_cnn --model resnet20 \\
        --data ../shared/datasets/cifar10.npz --images 5000 --batch 128 --repeats 2

Each cell: the model built under the precision's policy, SGD + momentum, the tf.data pipeline of
training (flip + pad-and-crop), a 5-step warm-up (tracing, oneDNN kernel selection), then one
timed epoch over ``--images`` images. Precisions alternate within each repeat so that a change
in the machine's load hits both; the table reports the median over repeats. Prints a Markdown
table with the CPU model, its bf16 flags and the load average before and after.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time


def _cell(name: str, precision: str, x, y, batch: int) -> float:
    import keras

    from edgecnn.train.config import AugmentConfig
    from edgecnn.train.pipeline import make_dataset
    from edgecnn.train.precision import precision_policy
    from edgecnn.train.registry import build_model

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    with precision_policy(precision):
        model = build_model(name, 10)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="categorical_crossentropy")
        ds = make_dataset(x, y, num_classes=10, batch_size=batch, mean=(125, 123, 114), std=(63, 62, 66),
                          training=True, augment=AugmentConfig())
        model.fit(ds.take(5), epochs=1, verbose=0, shuffle=False)
        t = time.perf_counter()
        model.fit(ds, epochs=1, verbose=0, shuffle=False)
        return len(x) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=None)
    ap.add_argument("--precision", action="append", default=None, help="fp32, bf16 (default: both)")
    ap.add_argument("--data", default="../shared/datasets/cifar10.npz")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    models, precisions = args.model or ["seed_cnn", "resnet20"], args.precision or ["fp32", "bf16"]

    import edgecnn.train._tf  # noqa: F401  (TensorFlow quietly, before keras)
    from edgecnn.datasets import load_npz
    from edgecnn.runtime.cpu import cpu_model_and_flags
    from edgecnn.train.precision import BF16_CPU_FLAGS, resolve_precision

    for p in precisions:
        resolve_precision(p)  # a precision this machine lacks stops here, in one line
    x, y, _, _ = load_npz(args.data)
    x, y = x[:args.images], y[:args.images]
    load_before = os.getloadavg()
    runs: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for name in models:
            for p in precisions:
                runs.setdefault((name, p), []).append(_cell(name, p, x, y, args.batch))
    load_after = os.getloadavg()
    cpu, flags = cpu_model_and_flags()
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; CPU: {cpu}, {os.cpu_count()} cores; "
          f"bf16 flags: {', '.join(f for f in BF16_CPU_FLAGS if f in flags) or 'none'}; load average (1/5/15 min) "
          f"before {'/'.join(f'{v:.2f}' for v in load_before)}, after {'/'.join(f'{v:.2f}' for v in load_after)}; "
          f"{args.images} images, batch {args.batch}, median of {args.repeats}\n")
    head = " | ".join(f"{p} img/s" for p in precisions)
    print(f"| model | {head} | {' | '.join(f'{p} / {precisions[0]}' for p in precisions[1:])} |")
    print("|---|" + "---|" * (2 * len(precisions) - 1))
    for name in models:
        med = [statistics.median(runs[(name, p)]) for p in precisions]
        ratios = " | ".join(f"{m / med[0]:.2f}x" for m in med[1:])
        print(f"| {name} | {' | '.join(f'{m:,.0f}' for m in med)} | {ratios} |")


if __name__ == "__main__":
    main()
