"""Tiny run directories (model.keras + card.json, as `edgecnn train` writes them) for export tests.

3 CIFAR-10 classes of the embedded sample (540 train / 150 test images), 32x32, zoo ``*_tiny``
models trained for a few epochs at most: a run costs seconds of CPU.
"""

from __future__ import annotations

import json
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
    """One export of ``seed_run`` with every variant and a Triton repository, shared by read-only tests.

    Held to the default budget (1 pp): every variant of this model agrees with fp32 on all 150 test
    images (measured: no flip, the guard's 95% interval of the drop [-0.90, +0.90] pp, kept).
    """
    from edgecnn.export import ExportConfig, export_run

    out = tmp_path_factory.mktemp("export")
    config = ExportConfig(quantize=("int8", "int8-dynamic", "fp16"), triton_dir=out / "triton")
    return export_run(seed_run, out_dir=out / "seed", config=config), out / "seed"


# ------------------------------------------------------------------ models made by other tools
# Real files written by Keras, tf.saved_model, the TFLite converter, tf2onnx and onnx itself, with
# no edgecnn card: what a user brings to `edgecnn export SOURCE`.


def _plain_model(channels: int = 3):
    """A user's own small Keras classifier (no zoo layer names, softmax head, batch norm)."""
    import keras

    return keras.Sequential([
        keras.Input((32, 32, channels)),
        keras.layers.Conv2D(16, 3, padding="same"), keras.layers.BatchNormalization(momentum=0.9), keras.layers.ReLU(),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same"), keras.layers.BatchNormalization(momentum=0.9), keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax"),
    ], name="mine")


def gray(x: np.ndarray) -> np.ndarray:
    from edgecnn.runtime.preprocess import load_image

    return np.stack([load_image(i, (32, 32), channels=1) for i in x])


@pytest.fixture(scope="session")
def foreign(tmp_path_factory, sample3) -> dict[str, Path]:
    """mine.keras/.h5 (trained on x / 255), its SavedModel, .tflite, opset-11 and NCHW ONNX
    (tf2onnx), a 1-channel classifier, and image folders: labelled (class sub-folders) and not."""
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx
    from PIL import Image

    root = tmp_path_factory.mktemp("foreign")
    keras.utils.set_random_seed(0)
    model = _plain_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(sample3.x_train / 255.0, sample3.y_train, epochs=6, batch_size=32, verbose=0)
    model.save(root / "mine.keras")
    model.save(root / "mine.h5")
    model.export(str(root / "mine_savedmodel"), verbose=False)
    (root / "mine.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    spec = (tf.TensorSpec((None, 32, 32, 3), tf.float32, name="input"),)
    fn = tf.function(lambda x: model(x, training=False))
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=11)
    onnx.save_model(proto, str(root / "mine_opset11.onnx"))
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17, inputs_as_nchw=["input"])
    onnx.save_model(proto, str(root / "mine_nchw.onnx"))
    keras.utils.set_random_seed(0)
    g = _plain_model(channels=1)
    g.compile("adam", "sparse_categorical_crossentropy")
    g.fit(gray(sample3.x_train) / 255.0, sample3.y_train, epochs=6, batch_size=32, verbose=0)
    g.save(root / "gray.keras")
    for i, x in enumerate(sample3.x_test[:48]):
        (root / "photos").mkdir(exist_ok=True)
        Image.fromarray(x).save(root / "photos" / f"{i:03d}.png")
    for i, (x, y) in enumerate(zip(sample3.x_test, sample3.y_test)):
        folder = root / "labelled" / sample3.class_names[int(y)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(folder / f"{i:03d}.png")
    np.savez(root / "labelled.npz", x_train=sample3.x_train[:200], x_test=sample3.x_test, y_test=sample3.y_test)
    accuracy = {"mine": float(np.mean(model.predict(sample3.x_test / 255.0, verbose=0).argmax(1) == sample3.y_test)),
                "gray": float(np.mean(g.predict(gray(sample3.x_test) / 255.0, verbose=0).argmax(1) == sample3.y_test))}
    (root / "accuracy.json").write_text(json.dumps(accuracy))
    return {p.name: p for p in root.iterdir()}


def yolo_like_onnx(path: Path, *, size: int = 64, classes: int = 2, metadata: dict[str, str] | None = None,
                   strides: tuple[int, ...] = (8, 16, 32)) -> Path:
    """A detector-shaped ONNX graph built with onnx.helper: NCHW input, one [1, 4 + C, A] output
    whose anchors A come from ``strides`` (8, 16 and 32 as in Ultralytics YOLOv8 exports)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    ch, nodes, inits, parts = 4 + classes, [], [], []
    for s in strides:
        w = numpy_helper.from_array(rng.normal(0, 0.05, (ch, 3, s, s)).astype(np.float32), f"w{s}")
        shape = numpy_helper.from_array(np.array([1, ch, -1], np.int64), f"shape{s}")
        inits += [w, shape]
        nodes += [helper.make_node("Conv", ["images", f"w{s}"], [f"c{s}"], strides=[s, s]),
                  helper.make_node("Reshape", [f"c{s}", f"shape{s}"], [f"r{s}"])]
        parts.append(f"r{s}")
    nodes += [helper.make_node("Concat", parts, ["cat"], axis=2), helper.make_node("Sigmoid", ["cat"], ["output0"])]
    anchors = sum((size // s) ** 2 for s in strides)
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])
    graph = helper.make_graph(nodes, "yolo_like", [image],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, ch, anchors])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path
