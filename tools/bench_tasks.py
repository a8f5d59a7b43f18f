"""Segmenters and detectors trained here, end to end, on the synthetic scenes (issue 25).

    .venv/bin/python tools/bench_tasks.py --work build/tasks [--out build/tasks.json] [--quick]

1. Writes the scenes (``edgecnn.synthetic_scenes``: 1000 train / 200 val / 200 test images of
   128x128, backgrounds cropped from six real photos of scikit-image's wheel, fetched as
   ``tools/foreign_fidelity.py`` does) in both formats, once (kept in ``--work``).
2. Trains each recipe below with ``edgecnn train`` in a subprocess (one at a time, nothing else
   running), then exports it with ``-q int8`` (the guard's verdict is recorded, not enforced:
   ``--max-accuracy-drop 100``), and scores fp32 and int8 ``.onnx`` files with ``edgecnn evaluate``
   on the 200 held-out test images through the runtime (the original files, as an edge app reads
   them): mIoU and pixel accuracy, or mAP@0.5 and mAP@0.5:0.95.
3. Latency: p50/p90 of one call from a decoded 128x128 image (``model.predict(image)``, the
   runtime's fitting, model and head), fp32 and int8, 300 calls after 30 warm-up.
4. serve vs predict: each fp32 export behind ``edgecnn serve`` (in this process, a real uvicorn on a
   loopback port); 50 test PNGs posted, compared with ``edgecnn predict --json`` on the same files:
   detections (label, box to 0.01 px, score to 1e-5) and masks (``mask=true``, pixel for pixel).

``--quick`` trains 2 epochs of each (a check of the script, not numbers to publish). Prints a
markdown table; writes the JSON with the machine and the load average.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from edgecnn.runtime.timing import machine_fingerprint  # noqa: E402

PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg", "coins.png")
# name, task, train flags (the recipe), epochs
RECIPES: tuple[tuple[str, str, tuple[str, ...], int], ...] = (
    ("unet_tiny", "segment", ("--model", "unet_tiny", "--input-size", "96", "--lr", "0.003", "--schedule", "cosine"),
     20),
    ("mnv2_segmenter", "segment", ("--backbone", "mobilenet_v2", "--weights", "none", "--input-size", "96", "--lr",
                                   "0.002", "--schedule", "cosine"), 10),
    ("anchorfree_tiny", "detect", ("--model", "anchorfree_tiny", "--lr", "0.002", "--schedule", "cosine"), 30),
    ("anchorfree", "detect", ("--model", "anchorfree", "--lr", "0.002", "--schedule", "cosine"), 30),
)


def cli(*args: Any, timeout: int = 7200) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "edgecnn.cli", *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if out.returncode:
        raise SystemExit(f"edgecnn {' '.join(map(str, args))} failed:\n{out.stderr[-3000:]}")
    return out


def last_json(text: str) -> dict[str, Any]:
    return json.loads(text[text.index("{"):text.rindex("}") + 1])


def scenes(work: Path) -> Path:
    from foreign_fidelity import photos

    from edgecnn.synthetic_scenes import make_scenes

    out = work / "scenes"
    if (out / "detect" / "test" / "labels").is_dir():
        return out
    backgrounds = work / "backgrounds"
    backgrounds.mkdir(parents=True, exist_ok=True)
    got = photos()
    for name in PHOTOS:
        shutil.copy(got[name], backgrounds / name)
    return make_scenes(out, counts={"train": 1000, "val": 200, "test": 200}, size=128, seed=0, backgrounds=backgrounds)


def latency(model_path: Path, image: np.ndarray) -> dict[str, float]:
    from edgecnn.runtime import load_model

    model = load_model(model_path, provider="cpu")
    for _ in range(30):
        model.predict(image)
    times = []
    for _ in range(300):
        t = time.perf_counter()
        model.predict(image)
        times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3)}


def serve_vs_predict(model_path: Path, files: list[Path], task: str) -> dict[str, Any]:
    import httpx
    from PIL import Image

    from edgecnn.serve import ServeConfig, build_server

    local = last_json(cli("predict", model_path, *files, "--json").stdout)["predictions"]
    server = build_server(model_path, ServeConfig(port=0))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/models/{model_path.stem}:predict"
    same, objects, worst = 0, 0, 0.0
    try:
        with httpx.Client() as c:
            for f, mine in zip(files, local):
                theirs = c.post(url, content=f.read_bytes(), params={"mask": "true"},
                                headers={"Content-Type": "image/png"}).json()["predictions"][0]
                if task == "detect":
                    a, b = theirs["detections"], mine["detections"]
                    objects += len(b)
                    ok = [d["label"] for d in a] == [d["label"] for d in b] and all(
                        np.allclose(x["box"], y["box"], atol=0.01) and abs(x["score"] - y["score"]) < 1e-5
                        for x, y in zip(a, b))
                    worst = max([worst] + [float(np.abs(np.subtract(x["box"], y["box"])).max())
                                           for x, y in zip(a, b)])
                else:
                    from edgecnn.runtime import Segmenter

                    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(theirs["segmentation"]["mask_png"]))))
                    ref = Segmenter(model_path).predict([f])[0].mask
                    ok = theirs["segmentation"]["classes"] == mine["segmentation"]["classes"] and np.array_equal(
                        mask, ref)
                    objects += int(mask.size)
                    worst = max(worst, float(np.mean(mask != ref)))
                same += int(ok)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
    return {"images": len(files), "identical": same, "objects_or_pixels": objects, "worst": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "tasks")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "tasks.json")
    parser.add_argument("--quick", action="store_true", help="2 epochs each: checks the script")
    parser.add_argument("--only", help="comma-separated recipe names")
    parser.add_argument("--reuse", help="comma-separated recipe names whose finished run in --work is scored "
                                        "again instead of trained again (its train time is the run's own)")
    args = parser.parse_args()
    work = args.work.resolve()
    data = scenes(work)
    from PIL import Image

    test_images = sorted((data / "detect" / "test" / "images").glob("*.png"))
    image = np.asarray(Image.open(test_images[0]).convert("RGB"))
    rows = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name, task, flags, epochs in RECIPES:
        if args.only and name not in args.only.split(","):
            continue
        run = work / "runs" / name
        load_before = os.getloadavg()
        t0 = time.time()
        reuse = args.reuse and name in args.reuse.split(",") and json.loads(
            (run / "state.json").read_text()).get("done")
        if not reuse:
            cli("train", "--task", task, "--data", data / task, "--epochs", 2 if args.quick else epochs,
                "--batch-size", 16, "--out", run, "--overwrite", "--quiet", *flags)
        wall = time.time() - t0
        card = json.loads((run / "card.json").read_text())
        export = run / "export"
        cli("export", run, "-q", "int8", "--max-accuracy-drop", "100", "--out", export)
        report = json.loads((export / "export_report.json").read_text())
        guard = next((c for v in report["variants"] for c in ((v.get("verdict") or {}).get("checks") or [])), None)
        scores = {}
        for variant, file in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
            scores[variant] = last_json(cli("evaluate", export / file, "--data", data / task, "--json",
                                            "--out", work / "eval" / name).stdout)
        row = {"name": name, "task": task, "epochs": card["metrics"]["epochs"], "train_time_s":
               card["metrics"]["train_time_s"], "wall_s": round(wall, 1), "reused": bool(reuse),
               "params": card["metrics"]["params"],
               "input_size": card["input_size"], "keras_test": {k: v for k, v in card["metrics"].items()
                                                               if k in ("miou", "pixel_accuracy", "map50", "map50_95")},
               "fp32": scores["fp32"], "int8": scores["int8"], "guard": guard,
               "latency": {v: latency(export / f, image) for v, f in (("fp32", "model.onnx"),
                                                                      ("int8", "model.int8.onnx"))},
               "serve_vs_predict": serve_vs_predict(export / "model.onnx", test_images[:50], task),
               "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()]}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("name", "train_time_s", "keras_test", "latency", "serve_vs_predict")}),
              flush=True)
    result = {"started": started, "machine": machine_fingerprint(), "quick": args.quick, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| model | task | epochs | train s | score (fp32 .onnx, 200 test images) | int8 | guard "
          "| p50 ms fp32 / int8 | serve = predict |")
    print("|---|---|---:|---:|---|---|---|---|---|")
    for r in rows:
        if r["task"] == "segment":
            score = lambda s: f"mIoU {s['miou']:.4f}, pixel acc {s['pixel_accuracy']:.2%}"  # noqa: E731
        else:
            score = lambda s: f"mAP@0.5 {s['map50']:.4f}, mAP@0.5:0.95 {s['map50_95']:.4f}"  # noqa: E731
        g = r["guard"]
        guard = f"{g['estimate']:+.2f} pp [{g['low']:+.2f}, {g['high']:+.2f}] {g['outcome']}" if g else "-"
        sv = r["serve_vs_predict"]
        print(f"| {r['name']} | {r['task']} | {r['epochs']} | {r['train_time_s']:.0f} | {score(r['fp32'])} | "
              f"{score(r['int8'])} | {guard} | {r['latency']['fp32']['p50_ms']} / {r['latency']['int8']['p50_ms']} | "
              f"{sv['identical']}/{sv['images']} |")


if __name__ == "__main__":
    main()
