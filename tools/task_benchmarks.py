"""One run per task: export -> int8 -> predict, with the task metric of int8 against fp32 and the
latency of both (the model alone, and predict end to end: decode, fit, run, post-process).

    python tools/task_benchmarks.py --out /tmp/task-bench [--json docs/benchmarks/tasks.json]

Models: the packaged seed_cnn classifier (its fp32 and int8 files, the embedded CIFAR-10 test
sample), and the detector and segmenter in tests/data/foreign (made by ultralytics and
torchvision), exported here on unlabelled synthetic scenes (tools/make_foreign_models.py --scenes).
Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FOREIGN = ROOT / "tests" / "data" / "foreign"


def _tool():
    spec = importlib.util.spec_from_file_location("make_foreign_models", ROOT / "tools" / "make_foreign_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _export(source: Path, out: Path, scenes: Path, *flags: str) -> dict:
    cmd = [sys.executable, "-m", "edgecnn.cli", "export", str(source), "-q", "int8", "--accuracy-aware",
           "--calibration-data", str(scenes),
           "--out", str(out), *flags]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads((out / "export_report.json").read_text())


def _p50_ms(fn, runs: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _latency(path: Path, images: list[Path], threads: int, runs: int, **flags) -> tuple[float, float]:
    """(model-only p50 at batch 1, predict-one-image p50), both in ms."""
    from edgecnn.presets import parse_overrides
    from edgecnn.runtime import load_model

    model = load_model(path, threads=threads, overrides=parse_overrides(**flags) if flags else None)
    _, run = model.timed_call(model.preprocess([images[0]]))
    data = [p.read_bytes() for p in images]
    i = [0]

    def predict_one():
        model.predict([data[i[0] % len(data)]])
        i[0] += 1

    return _p50_ms(run, runs), _p50_ms(predict_one, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    tool = _tool()
    det_scenes = args.out / "scenes160"
    seg_scenes = args.out / "scenes128"
    tool.write_scenes(det_scenes, 96, 160, seed=11)
    tool.write_scenes(seg_scenes, 96, 128, seed=12)
    rows = []
    det = _export(FOREIGN / "yolov8_shapes.onnx", args.out / "det", det_scenes)
    seg_flags = ("--task", "segment", "--preprocess", "imagenet", "--labels", "background,red,green,blue")
    seg = _export(FOREIGN / "lraspp_shapes.onnx", args.out / "seg", seg_scenes, *seg_flags)
    assets = ROOT / "edgecnn" / "assets"
    sample = sorted((args.out / "cifar").glob("*.png"))
    if not sample:
        from PIL import Image

        (args.out / "cifar").mkdir(parents=True, exist_ok=True)
        px = np.asarray(Image.open(assets / "cifar10_sample" / "test.webp"))
        for k in range(16):
            Image.fromarray(px[:32, 32 * k:32 * (k + 1)]).save(args.out / "cifar" / f"{k:02d}.png")
        sample = sorted((args.out / "cifar").glob("*.png"))
    cases = [("classify", "seed_cnn (edgecnn)", assets / "models" / "seed_cnn_cifar10.onnx",
              assets / "models" / "seed_cnn_cifar10.int8.onnx", None, sample, {}),
             ("detect", "YOLOv8 (ultralytics), 160x160", args.out / "det" / "model.onnx",
              args.out / "det" / "model.int8.onnx", det, sorted(det_scenes.glob("*.png")), {}),
             ("segment", "LR-ASPP (torchvision), 128x128", args.out / "seg" / "model.onnx",
              args.out / "seg" / "model.int8.onnx", seg, sorted(seg_scenes.glob("*.png")), {})]
    for task, name, fp32, int8, report, images, flags in cases:
        metric = "top-1 agreement" if task == "classify" else {"detect": "mAP@0.5 vs fp32",
                                                                "segment": "mIoU vs fp32"}[task]
        value = None
        if report is not None:
            v = next(x for x in report["variants"] if x["precision"] == "int8")
            value = v["metric_value"]
        else:  # the packaged pair: agreement on the embedded test sample
            from edgecnn.runtime import Classifier

            a, b = Classifier(fp32), Classifier(int8)
            xs = [p.read_bytes() for p in images]
            value = float(np.mean(a.predict_proba(xs).argmax(1) == b.predict_proba(xs).argmax(1)))
        for threads in (1, 2):
            lat = {p: _latency(path, images, threads, args.runs, **flags)
                   for p, path in (("fp32", fp32), ("int8", int8))}
            rows.append({"task": task, "model": name, "threads": threads, "metric": metric, "int8_metric": value,
                         "fp32_kib": fp32.stat().st_size / 1024, "int8_kib": int8.stat().st_size / 1024,
                         **{f"{p}_model_ms": lat[p][0] for p in lat}, **{f"{p}_predict_ms": lat[p][1] for p in lat}})
    machine = {"cpu": platform.processor(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "loadavg": os.getloadavg()}
    print(f"| task | model | threads | int8 {'/'.join(sorted({r['metric'] for r in rows}))} | size fp32 -> int8 (KiB) "
          "| model p50 fp32 / int8 (ms) | predict p50 fp32 / int8 (ms) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['task']} | {r['model']} | {r['threads']} | {r['metric']} {100 * r['int8_metric']:.2f}% | "
              f"{r['fp32_kib']:.0f} -> {r['int8_kib']:.0f} | {r['fp32_model_ms']:.3f} / {r['int8_model_ms']:.3f} | "
              f"{r['fp32_predict_ms']:.3f} / {r['int8_predict_ms']:.3f} |")
    print(f"machine: {machine}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
