"""How often the int8 accuracy guard refuses a valid int8 export judged on a small folder (issue 18).

For each fp32 ONNX model (with an edgecnn card naming its dataset, e.g. the packaged reference
model or ``RUN/export/model.onnx``):

1. **Truth**: ``edgecnn export MODEL -q int8`` on the card's own dataset: the int8 accuracy drop on
   its whole labelled test set (10,000 images for CIFAR-10). Only a model whose drop there is at
   most ``--valid-drop`` (0.3 pp) counts: its int8 file is valid, so any refusal below is false.
2. **Trials**: ``--trials`` times, a folder of N unlabelled test images (N drawn from ``--images``,
   seeded), the model's card stripped of its dataset so the folder is all the evidence, and
   ``edgecnn export MODEL -q int8 --calibration-data FOLDER --max-accuracy-drop BUDGET``, as a user
   with a folder of photos runs it. Refused = the command failed the guard.

Each trial runs in a subprocess with this checkout's edgecnn and, with ``--before REF``, again with
the edgecnn of git revision REF (checked out in a temporary git worktree): the same folders, the
same command, so the two guards are compared in one run.

    python tools/guard_false_refusals.py --trials 20 --images 100,200 --before 6619b30
    python tools/guard_false_refusals.py --model runs/resnet20/export/model.onnx --trials 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _truth(model: Path, work: Path) -> dict:
    """The int8 drop on the card's own held-out test set (labelled)."""
    from edgecnn.export import ExportConfig, export_model

    report = export_model(model, out_dir=work / "truth", config=ExportConfig(quantize=("int8",), max_accuracy_drop=100))
    fp32, int8 = report.variants[0], report.variants[1]
    return {"images": report.test_set["images"], "fp32_accuracy": fp32.accuracy, "int8_accuracy": int8.accuracy,
            "drop_pp": round(100 * (fp32.accuracy - int8.accuracy), 4)}


def _strip_dataset(model: Path, out: Path) -> tuple[Path, np.ndarray]:
    """A copy of ``model`` whose card names no dataset (the folder is then the only evidence), and
    the test images of that dataset."""
    import onnx

    from edgecnn.datasets import load_dataset
    from edgecnn.export import onnx as onnx_io

    proto = onnx.load(str(model))
    card = onnx_io.read_card(proto)
    ds = load_dataset(card.dataset["path"], input_size=card.input_size, classes=card.dataset.get("classes"))
    onnx_io.embed_card(proto, card.replace(dataset={}))
    onnx_io.save_onnx(proto, out)
    return out, ds.x_test


def _folder(images: np.ndarray, root: Path) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    for i, x in enumerate(images):
        Image.fromarray(x).save(root / f"{i:04d}.png")
    return root


def _run(src_root: Path, model: Path, folder: Path, out: Path, budget: float) -> dict:
    """One export in a subprocess with the edgecnn found at ``src_root``."""
    env = {**os.environ, "PYTHONPATH": str(src_root)}
    cmd = [sys.executable, "-c", "import sys; from edgecnn.cli import main; sys.exit(main())", "export", str(model),
           "-q", "int8", "--calibration-data", str(folder), "--max-accuracy-drop", str(budget), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=out.parent, timeout=600)
    report = json.loads((out / "export_report.json").read_text()) if (out / "export_report.json").is_file() else {}
    int8 = next((v for v in report.get("variants", []) if v["precision"] == "int8"), {})
    return {"refused": proc.returncode != 0, "exit": proc.returncode, "agreement": int8.get("metric_value"),
            "outcome": (int8.get("verdict") or {}).get("outcome"), "judged_images": report.get("test_set", {}).get(
                "images"), "error": proc.stderr.strip().splitlines()[-1][:300] if proc.returncode else ""}


def _worktree(ref: str, where: Path) -> Path:
    # A run killed before its cleanup leaves the worktree registered while its folder is gone.
    subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=True, capture_output=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), ref], check=True,
                   capture_output=True)
    return where


def main(argv: list[str] | None = None) -> int:
    from edgecnn.runtime import default_model_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, action="append", help="fp32 ONNX with a card (default: the packaged model)")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--images", default="100,200", help="N per trial is drawn from this range (inclusive)")
    p.add_argument("--budget", type=float, default=1.0, help="--max-accuracy-drop of every trial (pp)")
    p.add_argument("--valid-drop", type=float, default=0.3, help="models whose truth drop exceeds this are skipped")
    p.add_argument("--before", default=None, help="also run every trial with the edgecnn of this git revision")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    lo, hi = (int(v) for v in args.images.split(","))
    rng = np.random.default_rng(args.seed)
    results = {"budget_pp": args.budget, "trials": args.trials, "images": [lo, hi], "models": []}
    with tempfile.TemporaryDirectory(prefix="edgecnn-guard-fr-") as tmp:
        tmp = Path(tmp)
        versions = {"now": ROOT}
        if args.before:
            versions[f"before ({args.before})"] = _worktree(args.before, tmp / "before")
        try:
            for m, model in enumerate(args.model or [default_model_path()]):
                truth = _truth(model, tmp / f"m{m}")
                entry = {"model": str(model), "truth": truth, "runs": {k: [] for k in versions}}
                results["models"].append(entry)
                print(f"{model.name}: int8 drop {truth['drop_pp']:+.2f} pp on {truth['images']} labelled images",
                      flush=True)
                if truth["drop_pp"] > args.valid_drop:
                    print(f"  skipped: more than --valid-drop {args.valid_drop} pp", flush=True)
                    continue
                bare, x_test = _strip_dataset(model, tmp / f"m{m}" / "model.onnx")
                for t in range(args.trials):
                    n = int(rng.integers(lo, hi + 1))
                    folder = _folder(x_test[rng.permutation(len(x_test))[:n]], tmp / f"m{m}" / f"t{t}")
                    row = []
                    for name, src in versions.items():
                        got = _run(src, bare, folder, tmp / f"m{m}" / f"out{t}-{len(row)}", args.budget)
                        entry["runs"][name].append({"n": n, **got})
                        row.append(f"{name}: {'REFUSED' if got['refused'] else 'ok'} "
                                   f"(agreement {got['agreement']}, {got['outcome'] or '-'})")
                    print(f"  trial {t + 1:2d}, {n} images: " + "; ".join(row), flush=True)
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "before")],
                               capture_output=True)
    for entry in results["models"]:
        for name, runs in entry["runs"].items():
            if runs:
                refused = sum(r["refused"] for r in runs)
                print(f"{Path(entry['model']).name} [{name}]: {refused} of {len(runs)} valid exports refused")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
