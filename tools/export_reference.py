"""Rebuild the packaged reference models from the seed_cnn recipe trained on full CIFAR-10.

    python tools/export_reference.py --data ../shared/datasets/cifar10.npz

Trains ``runs/seed_cnn_cifar10_aug`` with ``models/seed_cnn_cifar10_aug.yaml`` if that run does not exist
yet, exports it (fp32 + static int8, verified, accuracy measured on the 10,000 test images), and
copies the two files with their embedded cards to ``edgecnn/assets/models/`` plus the export
report to ``models/seed_cnn_cifar10.export_report.md``. Dev script: never imported by edgecnn.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "models" / "seed_cnn_cifar10_aug.yaml"
ASSETS = ROOT / "edgecnn" / "assets" / "models"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "cifar10.npz"),
                        help="CIFAR-10 .npz (keras layout), used only if the run must be trained")
    parser.add_argument("--run", type=Path, default=Path("runs") / "seed_cnn_cifar10_aug",
                        help="relative to the repo root")
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="recipe to train the run with if it is missing")
    args = parser.parse_args()
    os.chdir(ROOT)  # relative paths in the embedded cards, not this machine's absolute ones
    if not (args.run / "model.keras").is_file():
        subprocess.run([sys.executable, "-m", "edgecnn.cli", "train", "--config", str(args.recipe), "--data", args.data,
                        "--out", str(args.run)], check=True, cwd=ROOT)

    from edgecnn.export import ExportConfig, export_run

    out = args.run / "export"
    report = export_run(args.run, out_dir=out, config=ExportConfig(quantize=("int8",), max_accuracy_drop=0.5))
    ASSETS.mkdir(parents=True, exist_ok=True)
    for src, dst in (("model.onnx", "seed_cnn_cifar10.onnx"), ("model.int8.onnx", "seed_cnn_cifar10.int8.onnx")):
        shutil.copyfile(out / src, ASSETS / f".{dst}.tmp")
        (ASSETS / f".{dst}.tmp").replace(ASSETS / dst)
    shutil.copyfile(out / "export_report.md", ROOT / "models" / "seed_cnn_cifar10.export_report.md")
    print(report.to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
