"""Numbers that decide whether an export ships: source-vs-ONNX parity over every output, and the
task metric of each quantized variant against fp32.

Everything runs on onnxruntime's CPU execution provider from uint8 pixels, the card's mapping
folded into the graph (:mod:`edgecnn.runtime.pixels`): exactly what the runtime runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError
from edgecnn.nms_layouts import NMS_KINDS
from edgecnn.runtime.core import InferenceModel
from edgecnn.runtime.session import ort_error

__all__ = ["Parity", "TaskMetric", "compare", "compare_outputs", "task_agreement", "task_evidence", "cosine_similarity",
           "OnnxPredictor", "predict_outputs", "accuracy", "ort_error"]

Outputs = list[np.ndarray]


@dataclass(frozen=True)
class Parity:
    """How closely a candidate's outputs follow a reference's on the same images.

    ``max_abs_diff``/``mean_abs_diff`` run over every output; ``max_rel_diff`` divides each
    output's max difference by its largest magnitude (at least 1), so box coordinates in pixels and
    probabilities are judged alike. ``top1_agreement`` is only defined for classifiers.
    """

    images: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float | None  # fraction of images with the same arg-max (classify only)
    max_rel_diff: float = 0.0
    outputs: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TaskMetric:
    """A variant judged against fp32 by the task's own measure: 1.0 is identical behaviour."""

    name: str  # e.g. "top1_agreement"
    value: float

    @property
    def label(self) -> str:
        return {"top1_agreement": "top-1 agreement", "map50": "mAP@0.5 against the fp32 boxes",
                "miou": "mIoU against the fp32 masks", "output_cosine": "output cosine similarity"}.get(
                    self.name, self.name.replace("_", " "))


def compare(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    """Max/mean absolute difference and top-1 agreement of two (N, classes) outputs."""
    return compare_outputs([reference], [candidate], task="classify")


def compare_outputs(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], *, task: str,
                    images: int | None = None) -> Parity:
    """Parity of two models' outputs (all of them) on the same ``images`` (default: the first
    output's axis 0; a time-major output has its images elsewhere).

    Raises:
        ArtifactError: if the number or shapes of the outputs differ.
    """
    if len(reference) != len(candidate):
        raise ArtifactError(f"The models have {len(reference)} and {len(candidate)} outputs.")
    worst, worst_rel, total, count = 0.0, 0.0, 0.0, 0
    for ref, got in zip(reference, candidate):
        if ref.shape != got.shape:
            raise ArtifactError(f"Output shapes differ: reference {ref.shape}, candidate {got.shape}.")
        diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
        if diff.size:
            scale = max(1.0, float(np.abs(ref).max()))
            worst, worst_rel = max(worst, float(diff.max())), max(worst_rel, float(diff.max()) / scale)
            total, count = total + float(diff.sum()), count + diff.size
    agree = None
    if task == "classify" and reference[0].ndim == 2:
        agree = float(np.mean(reference[0].argmax(axis=1) == candidate[0].argmax(axis=1)))
    return Parity(int(len(reference[0]) if images is None else images), worst, total / max(count, 1), agree, worst_rel,
                  len(reference))


def task_agreement(task: str, fp32_outputs: Sequence[np.ndarray], variant_outputs: Sequence[np.ndarray],
                   card: ModelCard) -> TaskMetric:
    """How well a quantized variant keeps the fp32 model's answers, by the task's own metric.

    1.0 is identical behaviour, for every task (tests/export/test_guard.py checks it on every head
    and every model file of the tests):

    - classify: top-1 agreement;
    - detect: mAP@0.5 of the variant's boxes with the fp32 boxes as ground truth (YOLO outputs
      decoded and suppressed as the runtime does; a graph with its own NMS gives them; fp32 boxes at
      the runtime's default confidence 0.25, the variant's down to 0.001 so that its whole
      precision-recall curve counts, as mAP is usually measured; a class counts when fp32 has it
      or the variant sees it at 0.25 or more);
    - segment: mean IoU of the variant's class maps against the fp32 ones;
    - raw: the lowest cosine similarity of an output with fp32's (flattened over the images).

    The export's guard (:mod:`edgecnn.export.guard`) adds the uncertainty of the images judged.
    """
    if task == "classify":
        ref, got = fp32_outputs[0], variant_outputs[0]
        return TaskMetric("top1_agreement", float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1))))
    if task in ("detect", "segment"):
        score, _ = task_evidence(task, fp32_outputs, variant_outputs, card)
        return TaskMetric("map50" if task == "detect" else "miou", score(None))
    cos = [cosine_similarity(r, v) for r, v in zip(fp32_outputs, variant_outputs)]
    return TaskMetric("output_cosine", float(min(cos)))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened (exactly 1.0 for equal arrays, all-zero ones included)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if np.array_equal(a, b):
        return 1.0  # exactly, not up to rounding
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


_DETECT_CONF = 0.25  # the runtime's default: the fp32 boxes that count as ground truth
_CANDIDATE_CONF = 0.001  # the variant's boxes: its whole precision-recall curve


def task_evidence(task: str, fp32_outputs: Sequence[np.ndarray], variant_outputs: Sequence[np.ndarray],
                  card: ModelCard) -> tuple[Callable[[np.ndarray | None], float], int]:
    """The detect/segment metric as a function of image weights (None: each image once), and the
    number of images: matched once, re-scored for every bootstrap resample of the guard."""
    from edgecnn.runtime.heads import (
        DetectionRecords,
        confusion_matrices,
        mean_iou_of,
        output_layout,
        postprocess_segmentation,
        postprocess_yolo,
    )
    from edgecnn.runtime.heads.graph_nms import graph_nms_from_arrays, postprocess_graph_nms
    from edgecnn.runtime.preprocess import FitInfo

    index = _primary(fp32_outputs, 3 if task == "detect" else 4)
    ref, got = np.asarray(fp32_outputs[index]), np.asarray(variant_outputs[index])
    h, w = card.input_size
    fits = [FitInfo(w, h, 1.0, 1.0)] * len(ref)  # compared on the model input itself
    if task == "detect":
        kind = output_layout(card.output_kind, ref.shape, card.num_classes)
        if kind in NMS_KINDS:  # the graph's own NMS: its rows, read alike from both
            roles = graph_nms_from_arrays(kind, fp32_outputs)
            truth = postprocess_graph_nms(fp32_outputs, roles, fits, card.class_names, conf=_DETECT_CONF,
                                          input_size=card.input_size, max_det=300)
            found = postprocess_graph_nms(variant_outputs, roles, fits, card.class_names, conf=_CANDIDATE_CONF,
                                          input_size=card.input_size, max_det=300)
        else:
            truth = postprocess_yolo(ref, kind, fits, card.class_names, conf=_DETECT_CONF,
                                     input_size=card.input_size, iou=0.45, max_det=300)
            found = postprocess_yolo(got, kind, fits, card.class_names, conf=_CANDIDATE_CONF,
                                     input_size=card.input_size, iou=0.45, max_det=300)
        records = DetectionRecords.match([d.detections for d in found], [d.detections for d in truth],
                                         min_score=_DETECT_CONF)
        return (lambda weights: float(records.score(weights).value)), len(ref)
    masks = [[r.mask for r in postprocess_segmentation(outputs, fits, card.class_names, input_size=card.input_size,
                                                       layout=card.layout, output_kind=card.output_kind)]
             for outputs in (got, ref)]
    cm = confusion_matrices(masks[0], masks[1])

    def miou(weights: np.ndarray | None) -> float:
        return mean_iou_of(cm.sum(axis=0) if weights is None else np.tensordot(weights, cm, axes=1))

    return miou, len(ref)


def _primary(outputs: Sequence[np.ndarray], rank: int) -> int:
    """The first output of the rank a task head reads (a detector's [N, 4+C, A], a segmenter's maps)."""
    return next((i for i, o in enumerate(outputs) if np.ndim(o) == rank), 0)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of (N, classes) outputs against integer labels."""
    return float(np.mean(outputs.argmax(axis=1) == np.asarray(labels).reshape(-1)))


class OnnxPredictor(InferenceModel):
    """The runtime core on onnxruntime's CPU provider, with an explicit card, fed uint8 images.

    Export verifies staged files against the card they are about to carry, so the card is given
    rather than read; running, fixed-batch chunking and padding are the runtime's own, and so is
    the path from pixels (the card's mapping folded into the graph, as every app's call runs it).
    """

    def __init__(self, model: str | Path | bytes, card: ModelCard, *, threads: int | None = None) -> None:
        super().__init__(model, provider="cpu", threads=threads, card=card)

    def __call__(self, images_uint8: np.ndarray) -> np.ndarray:
        return self.run_pixels(images_uint8)[self.output_names.index(self.output_name)]

    def outputs(self, images_uint8: np.ndarray) -> list[np.ndarray]:
        """Every output of the model, in graph order, for a uint8 image batch."""
        return self.run_pixels(images_uint8)


def predict_outputs(fn: Callable[[np.ndarray], Outputs], images: np.ndarray, *, batch_size: int = 256) -> Outputs:
    """Apply a many-output ``fn`` to ``images`` in batches and stack each output."""
    runs = [[np.asarray(o) for o in fn(images[i:i + batch_size])] for i in range(0, len(images), batch_size)]
    return [np.concatenate([r[k] for r in runs], axis=0) for k in range(len(runs[0]))]
