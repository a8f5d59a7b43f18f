"""Control for the QAT benchmark (docs/benchmarks.md): fine-tune the *float* model of a run exactly as
``edgecnn export --qat-epochs`` fine-tunes its fake-quant copy (same images, optimizer, schedule,
flips, batch size, seed), without any quantizer, and report its fp32 test accuracy. It separates
what QAT recovers from what the extra epochs alone would add to an under-trained model.

    python tools/qat_control.py runs/qat_mnv2_tiny --epochs 2 --lr 1e-4
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    import edgecnn.train._tf  # noqa: F401
    from edgecnn.datasets import load_dataset
    from edgecnn.runtime.preprocess import normalize_batch
    from edgecnn.train.config import AugmentConfig
    from edgecnn.train.evaluate import load_keras_with_card
    from edgecnn.train.pipeline import make_dataset
    from edgecnn.train.qat import QATConfig

    cfg = QATConfig(epochs=args.epochs, lr=args.lr)
    model, card = load_keras_with_card(args.run)
    train = card.training or {}
    ds = load_dataset(card.dataset["path"], input_size=card.input_size, classes=card.dataset.get("classes"),
                      val_split=train.get("val_split", 0.1), seed=train.get("seed", 0), limit=train.get("limit"))
    keras.utils.set_random_seed(cfg.seed)

    def test_accuracy() -> float:
        probs = model.predict(normalize_batch(ds.x_test, card), batch_size=256, verbose=0)
        return float(np.mean(np.asarray(probs).argmax(1) == ds.y_test))

    before = test_accuracy()
    steps = int(np.ceil(len(ds.x_train) / cfg.batch_size))
    data = make_dataset(ds.x_train, ds.y_train, num_classes=card.num_classes, batch_size=cfg.batch_size,
                        mean=card.mean, std=card.std, channel_order=card.channel_order, training=True,
                        augment=AugmentConfig(flip=True, translate=0.0), seed=cfg.seed)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(cfg.lr, steps * cfg.epochs)),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=card.output_kind == "logits"))
    started = time.perf_counter()
    model.fit(data, epochs=cfg.epochs, verbose=0, shuffle=False)
    print(json.dumps({"run": args.run, "epochs": cfg.epochs, "lr": cfg.lr, "train_images": len(ds.x_train),
                      "test_images": len(ds.x_test), "fp32_before": round(before, 4),
                      "fp32_after_float_fine_tune": round(test_accuracy(), 4),
                      "seconds": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
