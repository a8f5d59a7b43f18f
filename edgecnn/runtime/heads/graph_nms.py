"""Detections of a model that decodes and suppresses inside its graph, in numpy.

The layouts are :mod:`edgecnn.nms_layouts`' (``end2end``, ``boxes-xyxy``, ``boxes-yxyx``). The
graph's NMS stands: rows past the count, padding (score 0), rows at or under ``conf`` and
non-finite ones are dropped, the rest sorted best first and cut at ``max_det``; boxes normalized
to 0-1 are scaled to the input (as :func:`~edgecnn.runtime.heads.detect.postprocess_yolo` does), then
mapped back to the original image through its :class:`~edgecnn.runtime.preprocess.FitInfo`. A
class index past the labels is named by its number.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgecnn.card_inference import DETECT_LAYOUTS
from edgecnn.errors import ArtifactError, InputError
from edgecnn.nms_layouts import NmsOutputs, nms_outputs
from edgecnn.runtime.heads.detect import Detection, Detections, box_of
from edgecnn.runtime.preprocess import FitInfo

__all__ = ["graph_nms_outputs", "graph_nms_from_arrays", "postprocess_graph_nms"]

Rows = tuple[np.ndarray, np.ndarray, np.ndarray]  # (K, 4) boxes x1, y1, x2, y2; (K,) scores; (K,) classes


def graph_nms_outputs(kind: str, names: Sequence[str], shapes: Sequence[Sequence[object]], model: str) -> NmsOutputs:
    """The outputs of each role for a ``kind`` detector.

    Raises:
        ArtifactError: when the outputs do not fit ``kind``, naming the layouts.
    """
    found = nms_outputs(names, shapes, kind)
    if found is None:
        raise ArtifactError(f"{model}: outputs {', '.join(f'{n} {list(s)}' for n, s in zip(names, shapes))} do not "
                            f"fit the {kind} layout (of {DETECT_LAYOUTS}); pass --output-layout or --task raw.")
    return found


def graph_nms_from_arrays(kind: str, outputs: Sequence[np.ndarray]) -> NmsOutputs:
    """The roles of unnamed outputs (export verification): by shape, and classes are the whole-numbered
    per-row output (TFLite's order, classes before scores, when both are).

    Raises:
        ArtifactError: when the outputs do not fit ``kind``.
    """
    shapes = [np.shape(o) for o in outputs]
    if kind == "end2end":
        return graph_nms_outputs(kind, [""], [next((s for s in shapes if len(s) == 3), shapes[0])], "the model")
    rows = [i for i, s in enumerate(shapes) if len(s) == 2]
    whole = [i for i in rows if np.array_equal(outputs[i], np.round(outputs[i]))]
    classes = next((i for i in whole if np.max(outputs[i], initial=0) > 1), whole[0] if whole else None)
    names = ["classes" if i == classes else "scores" if i in rows else "boxes" if len(s) == 3 else "count"
             for i, s in enumerate(shapes)]
    return graph_nms_outputs(kind, names, shapes, "the model")


def _rows(outputs: Sequence[np.ndarray], roles: NmsOutputs, image: int) -> Rows:
    """One image's valid rows, boxes x-first."""
    if roles.kind == "end2end":
        rows = np.asarray(outputs[roles.boxes][image], np.float32).reshape(-1, np.shape(outputs[roles.boxes])[-1])
        return rows[:, :4], rows[:, 4], rows[:, 5]
    assert roles.scores is not None and roles.classes is not None
    boxes = np.asarray(outputs[roles.boxes][image], np.float32).reshape(-1, 4)
    scores = np.asarray(outputs[roles.scores][image], np.float32).reshape(-1)
    classes = np.asarray(outputs[roles.classes][image], np.float32).reshape(-1)
    if roles.count is not None:
        n = int(np.clip(np.asarray(outputs[roles.count]).reshape(len(outputs[roles.count]), -1)[image, 0],
                        0, len(boxes)))
        boxes, scores, classes = boxes[:n], scores[:n], classes[:n]
    if roles.kind == "boxes-yxyx":
        boxes = boxes[:, [1, 0, 3, 2]]
    return boxes, scores, classes


def postprocess_graph_nms(outputs: Sequence[np.ndarray], roles: NmsOutputs, fits: Sequence[FitInfo],
                          class_names: Sequence[str], *, input_size: tuple[int, int], conf: float = 0.25,
                          max_det: int = 300) -> list[Detections]:
    """The outputs of a batch -> the :class:`Detections` of each image, on the original images.

    Raises:
        InputError: when the outputs hold another number of images than ``fits``.
    """
    images = len(outputs[roles.boxes])
    if images != len(fits):
        raise InputError(f"{images} outputs for {len(fits)} images.")
    h, w = input_size
    results = []
    for i, fit in enumerate(fits):
        boxes, scores, classes = _rows(outputs, roles, i)
        ok = (scores > conf) & np.isfinite(scores) & np.isfinite(boxes).all(axis=1) & (classes >= 0)
        boxes, scores, classes = boxes[ok], scores[ok], classes[ok].astype(np.int64)
        if boxes.size and np.abs(boxes).max() <= 1.5:  # normalized (0-1)
            boxes = boxes * np.asarray([w, h, w, h], dtype=np.float32)
        order = np.argsort(-scores, kind="stable")[:max_det]
        mapped = fit.to_original(boxes[order])
        results.append(Detections(tuple(
            Detection(class_names[c] if c < len(class_names) else str(c), int(c), float(s), box_of(b))
            for b, s, c in zip(mapped, scores[order], classes[order])), fit.width, fit.height))
    return results
