"""``edgecnn evaluate``: top-1/top-5, per-class precision/recall and the confusion matrix of a
run (Keras) or an exported ONNX model, on the run's test split or on ``--data``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn._files import atomic_write_text
from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError, DataError, MissingDependencyError
from edgecnn.presets import ModelOverrides
from edgecnn.train.config import TTA_MODES
from edgecnn.train.run import is_run_model, load_run_model

log = logging.getLogger(__name__)

__all__ = ["accuracy_metrics", "confusion_matrix", "evaluate", "EvaluationReport", "load_keras_with_card",
           "predict_keras", "tta_predict", "tta_views", "TTA_VIEWS"]

# Test-time augmentation (airbench94's levels 1 and 2): the number of views of each mode.
TTA_VIEWS = dict(zip(TTA_MODES, (1, 2, 6)))


def _check_tta(mode: str) -> None:
    if mode not in TTA_VIEWS:
        from edgecnn.errors import ConfigError

        raise ConfigError(f"Unknown test-time augmentation {mode!r}; choose one of {', '.join(TTA_VIEWS)}.")


def tta_views(x: np.ndarray, mode: str) -> list[tuple[float, np.ndarray]]:
    """``(weight, images)`` views of uint8 NHWC images: ``flip`` the image and its mirror (1/2 each);
    ``flip+shift`` those (1/4 each) and both shifted by one pixel up-left and down-right,
    reflect-padded (1/8 each), as in airbench94.

    Raises:
        ConfigError: for an unknown mode.
    """
    _check_tta(mode)
    if mode == "none":
        return [(1.0, x)]
    mirrored = [(0.5, x), (0.5, x[:, :, ::-1])]
    if mode == "flip":
        return mirrored
    h, w = x.shape[1:3]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifted = [padded[:, dy:dy + h, dx:dx + w] for dy, dx in ((0, 0), (2, 2))]
    return ([(0.5 * wt, v) for wt, v in mirrored]
            + [(0.25 * wt, v) for s in shifted for wt, v in ((0.5, s), (0.5, s[:, :, ::-1]))])


def tta_predict(predict: Any, x: np.ndarray, mode: str) -> np.ndarray:
    """Class probabilities of ``predict`` (uint8 NHWC images -> probabilities) under test-time
    augmentation: the softmax of the views' weighted mean log-probability, which equals the softmax
    of their weighted mean logits (a softmax is unchanged by a per-view shift), so it matches a
    graph that averages logits (``edgecnn export --tta flip``).

    Raises:
        ConfigError: for an unknown mode.
    """
    views = tta_views(x, mode)
    if len(views) == 1:
        return predict(x)
    logp = np.asarray(sum(wt * np.log(np.maximum(np.asarray(predict(np.ascontiguousarray(v)), np.float64), 1e-30))
                          for wt, v in views))
    e = np.exp(logp - logp.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


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


@dataclass(frozen=True)
class EvaluationReport:
    model: str
    dataset: str
    class_names: list[str]
    metrics: dict[str, Any]
    files: list[str]

    def to_text(self) -> str:
        m, names = self.metrics, self.class_names
        tta = (f", test-time augmentation {m['tta']} ({TTA_VIEWS[m['tta']]} views)" if m.get("tta", "none") != "none"
               else "")
        lines = [f"{self.model} on {self.dataset}{tta}",
                 f"top-1 accuracy {m['test_accuracy']:.2%}"
                 + (f", top-5 {m['test_top5']:.2%}" if "test_top5" in m else ""),
                 "", f"{'class':<14}{'precision':>10}{'recall':>10}"]
        lines += [f"{n[:13]:<14}{p:>10.3f}{r:>10.3f}" for n, p, r in zip(names, m["precision"], m["recall"])]
        width = max(5, max(len(str(v)) for row in m["confusion_matrix"] for v in row) + 1)
        lines += ["", "confusion matrix (rows: true, columns: predicted)",
                  " " * 14 + "".join(f"{n[:width - 1]:>{width}}" for n in names)]
        lines += [f"{n[:13]:<14}" + "".join(f"{v:>{width}}" for v in row)
                  for n, row in zip(names, m["confusion_matrix"])]
        return "\n".join(lines)


def _onnx_predictor(path: Path, overrides: ModelOverrides | None):
    """The runtime's own Classifier: the accuracy measured is what an edge app will get."""
    from edgecnn.runtime import Classifier

    clf = Classifier(path, provider="cpu", overrides=overrides)

    def predict(x: np.ndarray) -> np.ndarray:
        return np.concatenate([clf.predict_proba(x[i:i + 256]) for i in range(0, len(x), 256)])

    return clf.card, predict


def _ends_in_softmax(model: Any) -> bool:
    last = model.layers[-1] if getattr(model, "layers", None) else None
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    return activation == "softmax" or type(last).__name__ == "Softmax"


def load_keras_with_card(path: str | Path, overrides: ModelOverrides | None = None) -> tuple[Any, ModelCard]:
    """A Keras model and its card: a run's ``card.json``, or for any other ``.keras``/``.h5`` file a
    card inferred from the model's input/output shapes and the model flags (what was assumed is
    logged in one line).

    Raises:
        ArtifactError: for a missing or corrupt model, or one whose card cannot be built (the
            message names the flag that supplies what is missing).
    """
    from edgecnn.card_inference import infer_card
    from edgecnn.presets import TensorInfo

    path = Path(path)
    overrides = overrides or ModelOverrides()
    model = load_run_model(path)
    if is_run_model(path):
        # A run's geometry is its card's; flags may relabel it, not reshape it.
        keep = replace(overrides, input_size=None, channels=None, layout=None)
        return model, keep.apply(ModelCard.load(path if path.is_dir() else path.parent))
    if len(model.inputs) != 1:
        raise ArtifactError(f"{path} has {len(model.inputs)} inputs; edgecnn handles models with one image input.")
    dtype = str(getattr(model.inputs[0], "dtype", "float32"))
    inputs = [TensorInfo("images", tuple(model.inputs[0].shape), dtype)]
    outputs = [TensorInfo(f"output_{i}", tuple(o.shape)) for i, o in enumerate(model.outputs)]
    card, assumed = infer_card(path.stem, inputs=inputs, outputs=outputs, overrides=overrides,
                               softmax_output=_ends_in_softmax(model), architecture=f"keras:{model.name}")
    if assumed:
        log.warning("%s", assumed)
    return model, card


def predict_keras(model: Any, x: np.ndarray, card: ModelCard, batch_size: int = 256) -> np.ndarray:
    """Probabilities of a Keras classifier for uint8 NHWC RGB images, preprocessed from ``card``
    (gray for a 1-channel model; softmax applied to logits)."""
    from edgecnn.runtime.preprocess import load_image, normalize_batch

    if card.channels == 1 and x.shape[-1] == 3:
        x = np.stack([load_image(i, i.shape[:2], channels=1) for i in x])  # the runtime's own gray conversion
    out = [np.asarray(model.predict_on_batch(normalize_batch(x[i:i + batch_size], card)))
           for i in range(0, len(x), batch_size)]
    probs = np.concatenate(out) if out else np.zeros((0, card.num_classes), np.float32)
    if card.output_kind == "logits":
        e = np.exp(probs - probs.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
    return probs


def _keras_predictor(path: Path, overrides: ModelOverrides | None):
    model, card = load_keras_with_card(path, overrides)
    if card.task != "classify":
        raise ArtifactError(f"{path} is a {card.task} model; evaluate scores classifiers (pass --task classify if it "
                            "is one).")
    # A run's card describes the NHWC training input even when its exports are NCHW.
    kcard = card.replace(layout="nhwc") if is_run_model(path) else card
    return card, lambda x: predict_keras(model, x, kcard)


def _evaluation_images(ds: Any, *, given: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """The images to evaluate on, and which they are: the test split when the data has one (a
    folder's test/, an .npz's x_test); for data the user passed without one, every image (a
    validation split is training's business); for the run's own dataset, its held-out split."""
    if ds.source.get("test_split") != "val":
        return ds.x_test, ds.y_test, f"the {len(ds.x_test)} test images of {ds.name}"
    if given:
        x, y = np.concatenate([ds.x_train, ds.x_val]), np.concatenate([ds.y_train, ds.y_val])
        return x, y, f"all {len(x)} images of {ds.name} (it has no test split)"
    return ds.x_test, ds.y_test, f"the {len(ds.x_test)} held-out validation images of {ds.name} (no test split)"


def _task_card(path: Path, overrides: ModelOverrides | None) -> ModelCard | None:
    """The card of a segment or detect model (a run's, or an .onnx file's as the runtime reads it);
    None for any other model."""
    if path.suffix.lower() == ".onnx":
        from edgecnn.runtime import load_model

        card = load_model(path, provider="cpu", overrides=overrides).card
    elif is_run_model(path):
        card = ModelCard.load(path if path.is_dir() else path.parent)
    else:
        return None
    return card if card.task in ("segment", "detect") else None


def evaluate(model_path: str | Path, *, data: str | None = None, out: str | Path | None = None,
             overrides: ModelOverrides | None = None, tta: str = "none") -> Any:
    """Evaluate a run directory, a ``.keras``/``.h5`` file (a run's, or any classifier described by
    ``overrides``) or an ``.onnx`` file, optionally with test-time augmentation (:func:`tta_predict`).
    Segmenters and detectors are scored by :func:`edgecnn.train.task_eval.evaluate_task` (its
    :class:`~edgecnn.train.task_eval.TaskReport` is returned).

    Writes ``evaluation.json`` and ``confusion.png`` to ``out`` (default: next to the model;
    ``evaluation.tta-flip.json`` and so on with ``tta``).

    Raises:
        ArtifactError: for a missing or corrupt model; DataError: for unusable data.
    """
    from edgecnn.datasets import load_dataset
    from edgecnn.train.plots import plot_confusion

    path = Path(model_path)
    _check_tta(tta)  # before anything loads
    if not path.exists():
        raise ArtifactError(f"{path} does not exist; pass a run directory, a .keras/.h5 or an .onnx file.")
    if not path.is_dir() and path.suffix.lower() not in (".onnx", ".keras", ".h5", ".hdf5"):
        raise ArtifactError(f"{path}: unknown model format {path.suffix or '(no extension)'!r}; pass a run directory, "
                            "a .keras/.h5 or an .onnx file.")
    task_card = _task_card(path, overrides)
    if task_card is not None:  # a segmenter or detector: mIoU or mAP against its masks or labels
        from edgecnn.train.task_eval import evaluate_task

        if tta != "none":
            from edgecnn.errors import ConfigError

            raise ConfigError(f"--tta averages class probabilities; {path} is a {task_card.task} model: drop --tta.")
        return evaluate_task(path, task_card, data=data, out=out, overrides=overrides)
    if path.suffix == ".onnx":
        card, predict = _onnx_predictor(path, overrides)
    else:
        card, predict = _keras_predictor(path, overrides)
    if data is None and not card.dataset.get("path"):
        raise DataError(f"{path} names no dataset of its own; pass --data PATH (an .npz or a folder with one "
                        "sub-folder per class).")
    spec = data if data is not None else card.dataset.get("path")
    classes = None if data is not None else card.dataset.get("classes")
    ds = load_dataset(spec, input_size=card.input_size, classes=classes, val_split=card.training.get("val_split", 0.1),
                      seed=card.training.get("seed", 0))
    if ds.num_classes != card.num_classes:
        raise DataError(f"The data has {ds.num_classes} classes, the model {card.num_classes}; pass matching --data.")
    if all(c.isdigit() for c in card.class_names) and not all(c.isdigit() for c in ds.class_names):
        card = card.replace(class_names=tuple(ds.class_names))  # assumed 0..N-1 labels: the folders name them
    x, y, which = _evaluation_images(ds, given=data is not None)
    log.info("Evaluating on %s.", which)
    metrics = accuracy_metrics(tta_predict(predict, x, tta), y)
    metrics["evaluated_on"] = which
    if tta != "none":
        metrics["tta"] = tta
    out_dir = Path(out) if out else (path if path.is_dir() else path.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = (("evaluation" if path.suffix != ".onnx" else f"evaluation.{path.stem}")
            + ("" if tta == "none" else f".tta-{tta}"))
    report = EvaluationReport(str(path), which, card.class_names, metrics,
                              [str(out_dir / f"{stem}.json"), str(out_dir / f"{stem}.confusion.png")])
    atomic_write_text(Path(report.files[0]), json.dumps({"model": str(path), "dataset": ds.describe(),
                                                         "class_names": card.class_names, **metrics}, indent=2) + "\n")
    try:
        plot_confusion(np.asarray(metrics["confusion_matrix"]), card.class_names, report.files[1],
                       title=f"{card.name}: top-1 {metrics['test_accuracy']:.2%}")
    except MissingDependencyError as err:  # the numbers do not need matplotlib; the picture does
        log.warning("No confusion PNG: %s", err)
        report.files.pop()
    return report
