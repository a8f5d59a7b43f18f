"""Is a self-contained file (``edgecnn export --self-contained``) slower than the runtime's own call?

For each model, in one run, on the same backend (onnxruntime, CPU) and the same uint8 pixels,
rounds of each way of answering an image are interleaved (so a busy moment hits all alike):

- ``runtime``: the two-part file through edgecnn's runtime, ``head.predict(pixels)``: the card's
  pixel mapping folded in by the runtime, then the head's post-processing in numpy (softmax/top-k,
  YOLO decoding + NMS, argmax), what ``edgecnn predict``/``serve`` do per batch after decoding;
- ``runtime+sc``: the self-contained file through the same ``head.predict``: the mapping and the
  post-processing are in the graph, the head only reads the answers;
- ``ort+sc``: the self-contained file in a bare ``onnxruntime.InferenceSession.run`` on the uint8
  pixels: what an app in C++/Java/Node pays after decoding its image;
- ``ort model``: the two-part file alone, its float input preprocessed beforehand, no post-processing:
  the floor.

    .venv/bin/python tools/bench_self_contained.py [--mnv2 /work/runs/mnv2_224/export/model.onnx] \
        [--seconds 1.5] [--rounds 5] [--out build/self_contained.json]

Prints a markdown table (p50 and mean latency in ms per call, batch 1) and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgecnn.export import onnx as onnx_io  # noqa: E402
from edgecnn.export.self_contained import make_self_contained  # noqa: E402
from edgecnn.presets import ModelOverrides  # noqa: E402
from edgecnn.runtime import load_model  # noqa: E402
from edgecnn.runtime.timing import latency_stats, machine_fingerprint, time_callable  # noqa: E402

FOREIGN = ROOT / "tests" / "data" / "foreign"
CASES: dict[str, tuple[Path, ModelOverrides | None]] = {
    "seed_cnn 32x32 (classify)": (ROOT / "edgecnn" / "assets" / "models" / "seed_cnn_cifar10.onnx", None),
    "yolov8_shapes 160x160 (detect)": (FOREIGN / "yolov8_shapes.onnx", None),
    "lraspp_shapes 128x128 (segment)": (FOREIGN / "lraspp_shapes.onnx", ModelOverrides(
        task="segment", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375),
        class_names=("background", "red", "green", "blue"))),
}
WAYS = ("runtime", "runtime+sc", "ort+sc", "ort model")


def scene(size: int, seed: int = 0) -> np.ndarray:
    """One 1-image batch of coloured rectangles on noisy grey (real work for a detector's NMS)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.fromarray(np.clip(rng.normal(225, 12, (size, size, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for k, colour in enumerate([(220, 30, 30), (30, 200, 40), (30, 40, 220)]):
        x = 5 + k * size // 3
        draw.rectangle((x, size // 5, x + size // 4, size // 5 + size // 3), fill=colour)
    return np.asarray(img)[None]


def calls(path: Path, overrides: ModelOverrides | None) -> dict[str, Any]:
    """The four no-argument calls of one model (see the module docstring)."""
    import onnxruntime as ort

    two = load_model(path, overrides=overrides)
    proto, _ = make_self_contained(onnx_io.load_onnx(path, check=False), two.card)
    data = proto.SerializeToString()
    sc = load_model(data)
    h, w = two.card.input_size
    pixels = scene(h) if h == w else np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    bare_sc = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    bare = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tensor = two.preprocess(pixels)
    feed_sc, feed = {"pixels": pixels}, {two.input_name: tensor}
    return {"runtime": lambda: two.predict(pixels), "runtime+sc": lambda: sc.predict(pixels),
            "ort+sc": lambda: bare_sc.run(None, feed_sc), "ort model": lambda: bare.run(None, feed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnv2", type=Path, default=None, help="a MobileNetV2-224 model.onnx with its card")
    parser.add_argument("--seconds", type=float, default=1.5, help="timed seconds per way per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cases = dict(CASES)
    if args.mnv2:
        cases["mobilenet_v2 224x224 (classify)"] = (args.mnv2, None)
    results = []
    for name, (path, overrides) in cases.items():
        fns = calls(path, overrides)
        times: dict[str, list[float]] = {way: [] for way in WAYS}
        for _ in range(args.rounds):
            for way in WAYS:
                times[way] += time_callable(fns[way], warmup=5, runs=0, duration_s=args.seconds)
        stats = {way: latency_stats(t, 1) for way, t in times.items()}
        results.append({"model": name, "file": str(path), **{way: stats[way] for way in WAYS}})
        print(f"{name}: " + ", ".join(f"{w} {stats[w]['p50_ms']:.3f}" for w in WAYS), file=sys.stderr)
    report = {"machine": machine_fingerprint(), "load_average": os.getloadavg(), "rounds": args.rounds,
              "seconds": args.seconds, "results": results}
    print("| model | " + " | ".join(f"{w} p50 / mean (ms)" for w in WAYS) + " | runtime+sc vs runtime (p50) |")
    print("|---|" + "---:|" * (len(WAYS) + 1))
    for r in results:
        ratio = r["runtime+sc"]["p50_ms"] / r["runtime"]["p50_ms"]
        print(f"| {r['model']} | " + " | ".join(f"{r[w]['p50_ms']:.3f} / {r[w]['mean_ms']:.3f}" for w in WAYS)
              + f" | {ratio:.2f}x |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
