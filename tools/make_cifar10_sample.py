"""Build the embedded CIFAR-10 sample shipped in edgecnn/assets/ (the no-download default).

Takes a class-balanced, seeded sample of the shared CIFAR-10 file and stores each split as one
lossless WebP mosaic of 32x32 tiles (about 1.5 KB an image) plus the labels, so the package
stays small and the pixels are exactly those of the source file.

    python tools/make_cifar10_sample.py ../shared/datasets/cifar10.npz --train-per-class 200 --test-per-class 50
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
COLS = 50


def _pick(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)])
    return rng.permutation(idx)


def _save_mosaic(x: np.ndarray, path: Path) -> None:
    rows = len(x) // COLS
    grid = x.reshape(rows, COLS, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(rows * 32, COLS * 32, 3)
    Image.fromarray(grid).save(path, "WEBP", lossless=True, quality=100, method=6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("npz", type=Path)
    ap.add_argument("--out", type=Path, default=Path("edgecnn/assets/cifar10_sample"))
    ap.add_argument("--train-per-class", type=int, default=200)
    ap.add_argument("--test-per-class", type=int, default=50)
    args = ap.parse_args()
    with np.load(args.npz) as d:
        xtr, ytr = d["x_train"], d["y_train"].ravel()
        xte, yte = d["x_test"], d["y_test"].ravel()
    args.out.mkdir(parents=True, exist_ok=True)
    labels = {"class_names": CLASSES, "source": "CIFAR-10 (shared/datasets/cifar10.npz, JPEG-derived)"}
    splits = (("train", xtr, ytr, args.train_per_class, 0), ("test", xte, yte, args.test_per_class, 1))
    for split, x, y, per, seed in splits:
        idx = _pick(y, per, seed)
        _save_mosaic(x[idx], args.out / f"{split}.webp")
        labels[split] = y[idx].astype(int).tolist()
    (args.out / "labels.json").write_text(json.dumps(labels))
    print(f"wrote {args.out}: {sum(f.stat().st_size for f in args.out.iterdir()) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
