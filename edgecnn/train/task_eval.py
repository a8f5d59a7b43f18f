"""Scores of segmentation and detection models against their labels: pixel accuracy, per-class
IoU and mIoU; mAP@0.5 and mAP@0.5:0.95 (COCO's ten IoU thresholds), with the runtime's own metric
code (:mod:`edgecnn.runtime.heads.metrics`).

Two ways in, one set of numbers: a run's Keras model on images already at its input size (training's
test score, ``edgecnn evaluate RUN``), and an exported ``.onnx`` through the runtime's own heads on
the original image files (``edgecnn evaluate model.onnx --data DIR``: what an edge app gets).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn._files import atomic_write_text
from edgecnn.card import ModelCard
from edgecnn.errors import DataError
from edgecnn.runtime.heads.detect import Detection, Detections, postprocess_yolo
from edgecnn.runtime.heads.metrics import confusion_matrices, detection_map
from edgecnn.runtime.preprocess import FitInfo
from edgecnn.task_data import IGNORE

log = logging.getLogger(__name__)

__all__ = ["segmentation_metrics", "detection_metrics", "truth_detections", "keras_detections", "keras_class_maps",
           "TaskReport", "evaluate_task", "EVAL_CONF", "MAP_THRESHOLDS"]

EVAL_CONF = 0.001  # detections kept for mAP: the whole precision-recall curve (COCO's practice)
REPORT_CONF = 0.25  # a class counts as detected (a hallucination when absent) from this score on
MAP_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2))


def segmentation_metrics(pred: Sequence[np.ndarray], truth: Sequence[np.ndarray],
                         class_names: Sequence[str]) -> dict[str, Any]:
    """Pixel accuracy, IoU per class (classes absent from both sides are left out) and their mean;
    pixels whose truth is :data:`~edgecnn.task_data.IGNORE` are left out."""
    n = len(class_names)
    keep = [np.asarray(t) != IGNORE for t in truth]  # pixels marked 255 count for nothing
    conf = confusion_matrices([np.asarray(p)[k] for p, k in zip(pred, keep)],
                              [np.asarray(t)[k] for t, k in zip(truth, keep)]).sum(axis=0)
    full = np.zeros((n, n), np.int64)
    k = min(n, conf.shape[0])
    full[:k, :k] = conf[:k, :k]
    if conf.shape[0] > n and conf[n:].sum() + conf[:, n:].sum():
        raise DataError(f"A class map holds indices above {n - 1}, the model's {n} classes.")
    inter = np.diag(full).astype(np.float64)
    union = full.sum(0) + full.sum(1) - inter
    per_class = {class_names[c]: round(float(inter[c] / union[c]), 4) for c in range(n) if union[c] > 0}
    return {"pixel_accuracy": round(float(inter.sum() / max(full.sum(), 1)), 4),
            "miou": round(float(np.mean(list(per_class.values()))) if per_class else 0.0, 4),
            "class_iou": per_class, "images": len(pred)}


def truth_detections(boxes: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]],
                     class_names: Sequence[str]) -> list[list[Detection]]:
    """Labels ((K, 5) ``class, x1, y1, x2, y2`` normalized) as detections of score 1 in pixels of
    images of ``sizes`` (width, height)."""
    return [[Detection(class_names[int(c)], int(c), 1.0, (x1 * w, y1 * h, x2 * w, y2 * h))
             for c, x1, y1, x2, y2 in np.asarray(b).reshape(-1, 5)] for b, (w, h) in zip(boxes, sizes)]


def detection_metrics(pred: Sequence[Sequence[Detection]], truth: Sequence[Sequence[Detection]],
                      class_names: Sequence[str]) -> dict[str, Any]:
    """mAP@0.5, mAP@0.5:0.95 and AP@0.5 per class of ``pred`` against the labels ``truth``."""
    at = {t: detection_map(pred, truth, iou_threshold=float(t), min_score=REPORT_CONF) for t in MAP_THRESHOLDS}
    first = at[MAP_THRESHOLDS[0]]
    return {"map50": round(first.value, 4), "map50_95": round(float(np.mean([m.value for m in at.values()])), 4),
            "class_ap50": {class_names[c]: round(v, 4) for c, v in sorted(first.per_class.items())},
            "objects": first.references, "images": len(truth)}


def _predict(model: Any, x: np.ndarray, mean: Sequence[float], std: Sequence[float],
             batch_size: int = 32) -> np.ndarray:
    m = np.asarray(mean, np.float32).reshape(1, 1, 1, -1)
    s = np.asarray(std, np.float32).reshape(1, 1, 1, -1)
    out = [np.asarray(model.predict_on_batch((x[i:i + batch_size].astype(np.float32) - m) / s))
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out)


def keras_class_maps(model: Any, x: np.ndarray, card: ModelCard) -> list[np.ndarray]:
    """Class maps of a Keras segmenter for uint8 images at its input size."""
    return list(_predict(model, x, card.mean, card.std).argmax(axis=-1).astype(np.uint8))


def keras_detections(model: Any, x: np.ndarray, card: ModelCard, *, conf: float = EVAL_CONF) -> list[Detections]:
    """Detections of a Keras detector for uint8 images at its input size, through the runtime's
    own YOLO decoding and NMS."""
    h, w = card.input_size
    out = _predict(model, x, card.mean, card.std)
    fits = [FitInfo(width=w, height=h, scale_x=1.0, scale_y=1.0)] * len(x)
    return postprocess_yolo(out, "yolov8", fits, card.class_names, input_size=(h, w), conf=conf, iou=0.6,
                            max_det=100)


@dataclass(frozen=True)
class TaskReport:
    """What ``edgecnn evaluate`` found for a segmenter or a detector."""

    model: str
    dataset: str
    task: str
    metrics: dict[str, Any]
    files: list[str]

    def to_text(self) -> str:
        m = self.metrics
        if self.task == "segment":
            head = f"pixel accuracy {m['pixel_accuracy']:.2%}, mIoU {m['miou']:.4f}"
            rows = [f"{name[:18]:<20}{v:>8.4f}" for name, v in m["class_iou"].items()]
            return "\n".join([f"{self.model} on {self.dataset}", head, "", f"{'class':<20}{'IoU':>8}", *rows])
        head = f"mAP@0.5 {m['map50']:.4f}, mAP@0.5:0.95 {m['map50_95']:.4f} ({m['objects']} objects)"
        rows = [f"{name[:18]:<20}{v:>8.4f}" for name, v in m["class_ap50"].items()]
        return "\n".join([f"{self.model} on {self.dataset}", head, "", f"{'class':<20}{'AP@0.5':>8}", *rows])


def _eval_split(data: Any) -> tuple[Any, str]:
    if data.test is not None:
        return data.test, "test"
    if data.val is not None:
        return data.val, "val"
    return data.train, "train"


def evaluate_task(path: Path, card: ModelCard, *, data: str | None, out: str | Path | None,
                  overrides: Any = None) -> TaskReport:
    """Score a segment/detect run directory (its Keras model) or ``.onnx`` file on ``data`` (a
    folder of :mod:`edgecnn.task_data`; default: the run's own) and write ``evaluation.json``.

    Raises:
        DataError: for a missing or unusable folder, or one whose classes are not the model's.
    """
    from edgecnn.task_data import load_segmentation_folder, load_yolo_folder

    spec = data or card.dataset.get("path")
    if not spec:
        raise DataError(f"{path} names no dataset of its own; pass --data DIR (images/ + masks/ or labels/).")
    onnx = path.suffix.lower() == ".onnx"
    size = None if onnx else card.input_size
    loader = load_segmentation_folder if card.task == "segment" else load_yolo_folder
    ds = loader(spec, size=size) if not onnx else _files_only(loader, spec)
    if len(ds.class_names) != len(card.class_names):
        raise DataError(f"{spec} has {len(ds.class_names)} classes, the model {len(card.class_names)}; pass the "
                        "folder the model was trained on.")
    split, which = _eval_split(ds)
    names = list(card.class_names)
    if onnx:
        metrics = _onnx_metrics(path, split, card.task, names, overrides)
    else:
        from edgecnn.train.run import load_run_model

        model = load_run_model(path)
        if card.task == "segment":
            metrics = segmentation_metrics(keras_class_maps(model, split.images, card), split.masks, names)
        else:
            h, w = card.input_size
            truth = truth_detections(split.boxes, [(w, h)] * len(split.boxes), names)
            metrics = detection_metrics([list(d) for d in keras_detections(model, split.images, card)], truth, names)
    metrics["evaluated_on"] = f"the {len(split.files)} {which} images of {Path(spec).name}"
    out_dir = Path(out) if out else (path if path.is_dir() else path.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / ("evaluation.json" if not onnx else f"evaluation.{path.stem}.json")
    atomic_write_text(target, json.dumps({"model": str(path), "task": card.task, "class_names": names, **metrics},
                                         indent=2) + "\n")
    return TaskReport(str(path), metrics["evaluated_on"], card.task, metrics, [str(target)])


def _files_only(loader: Any, spec: str) -> Any:
    """The folder read at its images' own sizes (an .onnx is scored on the original files)."""
    try:
        return loader(spec)
    except DataError as err:
        if "different sizes" not in str(err):
            raise
        raise DataError(f"{err} The runtime reads each file itself: evaluate the run directory, or give the "
                        "images one size.") from None


def _onnx_metrics(path: Path, split: Any, task: str, names: list[str], overrides: Any) -> dict[str, Any]:
    from edgecnn.runtime import load_model

    model: Any = load_model(path, provider="cpu", overrides=overrides)  # the task's head: Segmenter or Detector
    files = list(split.files)
    if task == "segment":
        maps = [r.mask for i in range(0, len(files), 32) for r in model.predict(files[i:i + 32])]
        return segmentation_metrics(maps, split.masks, names)
    preds = [list(d) for i in range(0, len(files), 32)
             for d in model.predict(files[i:i + 32], conf=EVAL_CONF, iou=0.6, max_det=100)]
    sizes = [(int(im.shape[1]), int(im.shape[0])) for im in split.images]
    return detection_metrics(preds, truth_detections(split.boxes, sizes, names), names)

