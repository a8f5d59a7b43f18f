"""Show that `edgecnn bench` does not distort: its p50 against a bare `session.run` loop.

    .venv/bin/python tools/bench_harness_check.py MODEL.onnx [--batch 1] [--threads 1] [--runs 500] [--rounds 5]

Both measure the same model, input, threads and session options, interleaved round by round
(bench, bare, bench, bare, ...) so that drift of a shared machine hits both alike. Prints the
median over rounds of each p50 and their ratio; the goal is |ratio - 1| <= 3%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecnn.runtime import Classifier  # noqa: E402
from edgecnn.runtime.benchmark import BenchConfig, bench_onnx  # noqa: E402


def bare_p50(model: Path, batch: int, threads: int, runs: int, warmup: int) -> float:
    """The loop anyone would write: one session, one input, perf_counter around session.run."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    clf = Classifier(model, threads=threads)  # only to build the same preprocessed input
    px = np.random.default_rng(0).integers(0, 256, size=(batch, *clf.card.input_size, 3), dtype=np.uint8)
    feed = {sess.get_inputs()[0].name: clf.preprocess(px)}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cfg = BenchConfig(batch_sizes=(args.batch,), threads=(args.threads,), warmup=args.warmup, runs=args.runs)
    harness, bare = [], []
    for _ in range(args.rounds):
        harness.append(bench_onnx(args.model, cfg)[0].stats["p50_ms"])
        bare.append(bare_p50(args.model, args.batch, args.threads, args.runs, args.warmup))
    h, b = float(np.median(harness)), float(np.median(bare))
    print(f"model {args.model} batch {args.batch} threads {args.threads}, {args.rounds} rounds x {args.runs} runs")
    print(f"edgecnn bench p50 {h:.4f} ms   bare session.run p50 {b:.4f} ms   ratio {h / b:.4f} "
          f"({'within' if abs(h / b - 1) <= 0.03 else 'OUTSIDE'} 3%)")


if __name__ == "__main__":
    main()
