"""The raw-output guard on real files (issue 18): each output's SQNR against fp32 for int8 and fp16.

Exports each model of tests/data/foreign as ``--task raw`` with ``-q int8 -q fp16`` and
``--max-accuracy-drop 100 --min-sqnr -1000`` (so every variant is written and measured, never
refused), calibrated and judged on photos (the packaged CIFAR-10 sample's test images, resized to
the model's input), and prints every output's SQNR and cosine similarity with its 95% interval:
the numbers that set ``--min-sqnr``'s default of 20 dB.

    python tools/guard_raw_sqnr.py --images 64 --json /tmp/raw_sqnr.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FOREIGN = ROOT / "tests" / "data" / "foreign"

# model file -> the flags its own package implies (tests/data/foreign/README.md)
MODELS = {
    "yolov8_shapes.onnx": [],
    "lraspp_shapes.onnx": ["--preprocess", "imagenet"],
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": ["--mean", "127.5,127.5,127.5", "--std", "127.5,127.5,127.5",
                                            "--input-size", "48x192"],
    "face_detection_short_range.tflite": ["--mean", "127.5,127.5,127.5", "--std", "127.5,127.5,127.5"],
    "face_landmark.tflite": ["--preprocess", "unit"],
    "layout_cdla.onnx": ["--preprocess", "imagenet"],
}


def _photos(root: Path, n: int) -> Path:
    from PIL import Image

    from edgecnn.datasets import load_dataset

    root.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(load_dataset("sample").x_test[:n]):
        Image.fromarray(x).save(root / f"{i:04d}.png")
    return root


def main(argv: list[str] | None = None) -> int:
    from click.testing import CliRunner

    from edgecnn.cli import main as cli

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=64, help="photos per model (64+: half calibrate, half judge)")
    p.add_argument("--model", action="append", choices=sorted(MODELS), help="default: every one")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgecnn-raw-sqnr-") as tmp:
        photos = _photos(Path(tmp) / "photos", args.images)
        for name in args.model or list(MODELS):
            out = Path(tmp) / name
            result = CliRunner().invoke(cli, ["export", str(FOREIGN / name), "--task", "raw", *MODELS[name], "-q",
                                              "int8", "-q", "fp16", "--calibration-data", str(photos), "--out",
                                              str(out), "--max-accuracy-drop", "100", "--min-sqnr", "-1000"])
            if result.exit_code != 0:
                print(f"{name}: export failed: {result.output.strip().splitlines()[-1]}", flush=True)
                rows.append({"model": name, "error": result.output.strip().splitlines()[-1]})
                continue
            report = json.loads((out / "export_report.json").read_text())
            for v in report["variants"][1:]:
                for c in v["verdict"]["checks"]:
                    if c["unit"] != "dB":
                        continue
                    rows.append({"model": name, "precision": v["precision"], "output": c["name"],
                                 "sqnr_db": round(c["estimate"], 1), "low": round(c["low"], 1),
                                 "high": round(c["high"], 1), "cosine": c["detail"].removeprefix("cosine "),
                                 "images": v["verdict"]["images"]})
                    r = rows[-1]
                    print(f"{name} {r['precision']:5s} {r['output']:18s} {r['sqnr_db']:7.1f} dB "
                          f"[{r['low']:.1f}, {r['high']:.1f}] cosine {r['cosine']} ({r['images']} images)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
