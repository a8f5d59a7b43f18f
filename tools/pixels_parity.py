"""The pixel mapping inside each backend against numpy's, on a whole test set (issue 19).

For every model file of an export directory and every backend that runs it, the probabilities
of ``Classifier.predict_proba`` from uint8 pixels with the mapping inside the backend
(``pixels_in_graph=True``: folded into the ONNX graph, OpenVINO's PrePostProcessor, LiteRT's
lookup table) against the same object's numpy path (``pixels_in_graph=False``), on every test
image of an .npz: top-1 answers that differ, the largest probability difference, and accuracy.

    python tools/pixels_parity.py /work/runs/seed_cnn/export --data ../shared/datasets/cifar10.npz
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecnn.datasets import load_npz  # noqa: E402
from edgecnn.runtime import Classifier  # noqa: E402
from edgecnn.runtime.benchmark import machine_fingerprint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="an .npz in the keras layout (its test split)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many test images")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    _, _, x, y = load_npz(args.data)
    x, y = x[:args.limit], y[:args.limit].reshape(-1)
    rows = []
    for path in sorted(args.export.glob("model*.onnx")) + sorted(args.export.glob("model*.tflite")):
        backends = [("litert", None)] if path.suffix == ".tflite" else [("onnxruntime", None), ("openvino", "f32")]
        for backend, precision in backends:
            kw = dict(backend=backend, precision=precision, threads=2)
            fast, plain = Classifier(path, **kw), Classifier(path, pixels_in_graph=False, **kw)
            h, w = fast.card.input_size
            if x.shape[1:3] != (h, w):
                from PIL import Image

                x = np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR)) for im in x])
            t0 = time.perf_counter()
            a = np.concatenate([fast.predict_proba(x[i:i + args.batch]) for i in range(0, len(x), args.batch)])
            b = np.concatenate([plain.predict_proba(x[i:i + args.batch]) for i in range(0, len(x), args.batch)])
            row = {"file": path.name, "backend": backend, "where": fast.pixel_note, "images": len(x),
                   "top1_differ": int((a.argmax(1) != b.argmax(1)).sum()), "max_abs_diff": float(np.abs(a - b).max()),
                   "accuracy_in_backend": float((a.argmax(1) == y).mean()),
                   "accuracy_numpy": float((b.argmax(1) == y).mean()), "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(f"{path.name:22s} {backend:12s} top-1 differ {row['top1_differ']:5d}/{len(x)}  max |dp| "
                  f"{row['max_abs_diff']:.2e}  accuracy {100 * row['accuracy_in_backend']:.2f}% vs "
                  f"{100 * row['accuracy_numpy']:.2f}%  ({fast.pixel_note})", flush=True)
    m = machine_fingerprint()
    print(f"machine: {m['cpu']} ({m['usable_cpus']} cpus, {' '.join(m['simd'])}), load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.out:
        args.out.write_text(json.dumps({"machine": m, "rows": rows, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
