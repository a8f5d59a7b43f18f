"""``edgecnn evaluate``: top-1/top-5, per-class precision/recall and the confusion matrix of a
run (Keras) or an exported ONNX model, on the run's test split or on ``--data``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.card import ModelCard, atomic_write_text
from edgecnn.errors import ArtifactError, DataError

__all__ = ["accuracy_metrics", "confusion_matrix", "evaluate", "EvaluationReport"]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``m[true, predicted]``."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (y_true.astype(int), y_pred.astype(int)), 1)
    return m


def accuracy_metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Top-1, top-5 (when there are more than 5 classes), per-class precision/recall, matrix."""
    y = np.asarray(y).reshape(-1).astype(int)
    if len(probs) != len(y):
        raise DataError(f"{len(probs)} predictions for {len(y)} labels.")
    n_cls = probs.shape[1]
    pred = probs.argmax(axis=1)
    m = confusion_matrix(y, pred, n_cls)
    tp = np.diag(m).astype(float)
    precision = np.divide(tp, m.sum(axis=0), out=np.zeros(n_cls), where=m.sum(axis=0) > 0)
    recall = np.divide(tp, m.sum(axis=1), out=np.zeros(n_cls), where=m.sum(axis=1) > 0)
    out: dict[str, Any] = {"test_accuracy": float((pred == y).mean()), "num_test": int(len(y))}
    if n_cls > 5:
        top5 = np.argsort(-probs, axis=1)[:, :5]
        out["test_top5"] = float((top5 == y[:, None]).any(axis=1).mean())
    out["precision"] = precision.round(4).tolist()
    out["recall"] = recall.round(4).tolist()
    out["confusion_matrix"] = m.tolist()
    return out


@dataclass
class EvaluationReport:
    model: str
    dataset: str
    class_names: list[str]
    metrics: dict[str, Any]
    files: list[str]

    def to_text(self) -> str:
        m, names = self.metrics, self.class_names
        lines = [f"{self.model} on {self.dataset}: {m['num_test']} images",
                 f"top-1 accuracy {m['test_accuracy']:.2%}" + (f", top-5 {m['test_top5']:.2%}" if "test_top5" in m else ""),
                 "", f"{'class':<14}{'precision':>10}{'recall':>10}"]
        lines += [f"{n[:13]:<14}{p:>10.3f}{r:>10.3f}" for n, p, r in zip(names, m["precision"], m["recall"])]
        width = max(5, max(len(str(v)) for row in m["confusion_matrix"] for v in row) + 1)
        lines += ["", "confusion matrix (rows: true, columns: predicted)",
                  " " * 14 + "".join(f"{n[:width - 1]:>{width}}" for n in names)]
        lines += [f"{n[:13]:<14}" + "".join(f"{v:>{width}}" for v in row) for n, row in zip(names, m["confusion_matrix"])]
        return "\n".join(lines)


def _onnx_predictor(path: Path):
    """The runtime's own Classifier: the accuracy measured is what an edge app will get."""
    from edgecnn.runtime import Classifier

    clf = Classifier(path, provider="cpu")

    def predict(x: np.ndarray) -> np.ndarray:
        return np.concatenate([clf.predict_proba(x[i:i + 256]) for i in range(0, len(x), 256)])

    return clf.card, predict


def _keras_predictor(path: Path):
    from edgecnn.train.loop import load_run_model, predict_uint8

    card = ModelCard.load(path if path.is_dir() else path.parent)
    model = load_run_model(path)
    return card, lambda x: predict_uint8(model, x, card)


def evaluate(model_path: str | Path, *, data: str | None = None, out: str | Path | None = None) -> EvaluationReport:
    """Evaluate a run directory, a ``.keras`` file (card.json beside it) or an exported ``.onnx``.

    Writes ``evaluation.json`` and ``confusion.png`` to ``out`` (default: next to the model).

    Raises:
        ArtifactError: for a missing or corrupt model; DataError: for unusable data.
    """
    from edgecnn.datasets import load_dataset
    from edgecnn.train.plots import plot_confusion

    path = Path(model_path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist; pass a run directory, a .keras or an .onnx file.")
    card, predict = _onnx_predictor(path) if path.suffix == ".onnx" else _keras_predictor(path)
    if data is None and not card.dataset.get("path"):
        raise DataError(f"The card of {path} names no dataset; pass --data PATH.")
    spec = data if data is not None else card.dataset.get("path")
    classes = None if data is not None else card.dataset.get("classes")
    ds = load_dataset(spec, input_size=card.input_size, classes=classes, val_split=card.training.get("val_split", 0.1),
                      seed=card.training.get("seed", 0))
    if ds.num_classes != card.num_classes:
        raise DataError(f"The data has {ds.num_classes} classes, the model {card.num_classes}; pass matching --data.")
    metrics = accuracy_metrics(predict(ds.x_test), ds.y_test)
    out_dir = Path(out) if out else (path if path.is_dir() else path.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "evaluation" if path.suffix != ".onnx" else f"evaluation.{path.stem}"
    report = EvaluationReport(str(path), ds.name, card.class_names, metrics,
                              [str(out_dir / f"{stem}.json"), str(out_dir / f"{stem}.confusion.png")])
    atomic_write_text(Path(report.files[0]), json.dumps({"model": str(path), "dataset": ds.describe(),
                                                         "class_names": card.class_names, **metrics}, indent=2) + "\n")
    plot_confusion(np.asarray(metrics["confusion_matrix"]), card.class_names, report.files[1],
                   title=f"{card.name}: top-1 {metrics['test_accuracy']:.2%}")
    return report
