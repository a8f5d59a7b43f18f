"""Transfer learning without downloads: pretrain one of our own backbones on CIFAR-10 classes 0-4,
transfer it to classes 5-9 with few labelled images, and compare with training from scratch on the
same images for the same number of epochs.

    python tools/transfer_demo.py --data ../shared/datasets/cifar10.npz --model resnet20 \
        --pretrain-epochs 4 --limit 1000 --epochs 6 --fine-tune-epochs 4 --out runs/transfer_demo

Prints a Markdown table (and writes it to OUT/transfer.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from edgecnn.card import ModelCard
from edgecnn.train.config import TrainConfig
from edgecnn.train.loop import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--pretrain-epochs", type=int, default=4)
    ap.add_argument("--limit", type=int, default=1000, help="labelled images of classes 5-9")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--fine-tune-epochs", type=int, default=4)
    ap.add_argument("--fine-tune-layers", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("runs/transfer_demo"))
    args = ap.parse_args()
    common = dict(data=args.data, batch_size=64, normalization="dataset", seed=0)
    t0 = time.time()
    base = train(TrainConfig(model=args.model, classes="0-4", epochs=args.pretrain_epochs, optimizer="adam", lr=2e-3,
                             schedule="cosine", out=str(args.out / "pretrain_0-4"), **common),
                 overwrite=True, verbose=2)
    t_pre = time.time() - t0
    budget = args.epochs + args.fine_tune_epochs
    t0 = time.time()
    transfer = train(TrainConfig(backbone=str(base), classes="5-9", limit=args.limit, epochs=args.epochs, lr=2e-3,
                                 fine_tune_epochs=args.fine_tune_epochs, fine_tune_layers=args.fine_tune_layers,
                                 out=str(args.out / "transfer_5-9"), **common), overwrite=True, verbose=2)
    t_tr = time.time() - t0
    t0 = time.time()
    scratch = train(TrainConfig(model=args.model, classes="5-9", limit=args.limit, epochs=budget, lr=2e-3,
                                schedule="cosine", out=str(args.out / "scratch_5-9"), **common),
                    overwrite=True, verbose=2)
    t_sc = time.time() - t0
    rows = [("pretrain on classes 0-4 (all images)", base, t_pre),
            (f"transfer to 5-9: {args.epochs} head + {args.fine_tune_epochs} fine-tune epochs, {args.limit} images",
             transfer, t_tr),
            (f"scratch on 5-9: {budget} epochs, {args.limit} images", scratch, t_sc)]
    lines = ["| run | test accuracy (5 classes) | wall time |", "|---|---|---|"]
    lines += [f"| {name} | {ModelCard.load(run).metrics['test_accuracy']:.2%} | {t:.0f} s |" for name, run, t in rows]
    text = "\n".join(lines)
    (args.out / "transfer.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
