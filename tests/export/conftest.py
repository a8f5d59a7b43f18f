"""Tiny run directories (model.keras + card.json, as `edgecnn train` writes them) for export tests.

3 CIFAR-10 classes of the embedded sample (540 train / 150 test images), 32x32, zoo ``*_tiny``
models trained for a few epochs at most: a run costs seconds of CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CLASSES = "0-2"


@pytest.fixture(scope="session")
def sample3():
    from edgecnn.datasets import load_dataset

    return load_dataset("sample", classes=CLASSES)


def make_run(root: Path, architecture: str, ds, *, epochs: int, model=None, mean=(125.3, 123.0, 113.9),
             std=(63.0, 62.1, 66.7)) -> Path:
    """Build (or take) a model, fit it briefly on ``ds`` and save it as a run directory."""
    import keras

    from edgecnn.card import ModelCard
    from edgecnn.runtime.preprocess import normalize_batch
    from edgecnn.train.registry import build_model

    keras.utils.set_random_seed(0)
    card = ModelCard(name=root.name, architecture=architecture, class_names=ds.class_names, input_size=(32, 32),
                     mean=mean, std=std, normalization="dataset", dataset=ds.describe())
    model = model or build_model(architecture, ds.num_classes)
    if epochs:
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(normalize_batch(ds.x_train, card), ds.y_train, epochs=epochs, batch_size=32, verbose=0)
    probs = model.predict(normalize_batch(ds.x_test, card), verbose=0)
    card = card.replace(metrics={"test_accuracy": float(np.mean(probs.argmax(1) == ds.y_test))})
    root.mkdir(parents=True, exist_ok=True)
    model.save(root / "model.keras")
    card.save(root / "card.json")
    return root


@pytest.fixture(scope="session")
def seed_run(tmp_path_factory, sample3) -> Path:
    """seed_cnn_tiny trained for 6 epochs (about 55% test accuracy on 3 classes)."""
    return make_run(tmp_path_factory.mktemp("runs") / "seed_tiny", "seed_cnn_tiny", sample3, epochs=6)


@pytest.fixture(scope="session")
def seed_export(tmp_path_factory, seed_run):
    """One export of ``seed_run`` with every variant and a Triton repository, shared by read-only tests."""
    from edgecnn.export import ExportConfig, export_run

    out = tmp_path_factory.mktemp("export")
    config = ExportConfig(quantize=("int8", "int8-dynamic", "fp16"), max_accuracy_drop=10.0,
                          triton_dir=out / "triton")
    return export_run(seed_run, out_dir=out / "seed", config=config), out / "seed"
