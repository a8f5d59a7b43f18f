"""Detectors that decode and suppress inside their own graph: which outputs hold what (stdlib only).

Three output layouts (the card's ``output_kind``), read off the outputs' shapes and names:

- ``end2end``: one ``[N, K, 6]`` output of ``x1, y1, x2, y2, score, class`` rows, unused rows
  zero (Ultralytics' ``export nms=True``, YOLOv10 and YOLO26 exports);
- ``boxes-xyxy`` / ``boxes-yxyx``: boxes ``[N, K, 4]`` (``x1, y1, x2, y2``, or TensorFlow's
  ``ymin, xmin, ymax, xmax``), scores ``[N, K]``, classes ``[N, K]`` and optionally a count
  ``[N]`` of the valid rows (ONNX ``NonMaxSuppression`` exports, TensorFlow's combined NMS,
  TFLite's ``TFLite_Detection_PostProcess``). Outputs are told apart by name (``box``,
  ``score``/``conf``, ``class``/``label``, ``num``/``count``/``valid``); names ending ``:0`` to
  ``:3`` follow the TFLite op's order (boxes, classes, scores, count). Recognised without
  ``--output-layout``, the order is TensorFlow's y-first one for TFLite's op and for TensorFlow's
  Object Detection API names (``detection_boxes`` ...), else x-first.

Boxes are in model-input pixels or normalized to 0-1 (scaled as YOLO's are). The class count is not
in these outputs: a detector without labels names a class by its index.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["NMS_KINDS", "BOX_KINDS", "NmsOutputs", "nms_outputs", "y_first"]

BOX_KINDS = ("boxes-xyxy", "boxes-yxyx")
NMS_KINDS = ("end2end", *BOX_KINDS)
_ROLE_WORDS = {"count": ("num", "count", "valid"), "classes": ("class", "label", "cls"),
               "scores": ("score", "conf", "prob"), "boxes": ("box",)}
_TFLITE_ORDER = ("boxes", "classes", "scores", "count")  # TFLite_Detection_PostProcess's outputs
_SUFFIX = re.compile(r":([0-3])$")


@dataclass(frozen=True)
class NmsOutputs:
    """The layout of a detector with NMS in its graph: output indices of each role (end2end: ``boxes``
    is the rows output, the others None)."""

    kind: str
    boxes: int
    scores: int | None = None
    classes: int | None = None
    count: int | None = None


def _dims(shape: Sequence[Any]) -> list[int | None]:
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def _same(a: int | None, b: int | None) -> bool:
    return a is None or b is None or a == b


def _role(name: str) -> str | None:
    low = name.lower()
    if "tflite_detection_postprocess" not in low or not _SUFFIX.search(name):
        for role, words in _ROLE_WORDS.items():
            if any(w in low for w in words):
                return role
    found = _SUFFIX.search(name)
    return _TFLITE_ORDER[int(found.group(1))] if found else ("boxes" if "postprocess" in low else None)


def y_first(names: Sequence[str]) -> bool:
    """Whether outputs so named come from TensorFlow (TFLite's op, the Object Detection API's
    ``detection_*`` names), whose boxes are ``ymin, xmin, ymax, xmax``."""
    return any("tflite_detection_postprocess" in n.lower() or n.lower().startswith("detection_") for n in names) or \
        (len(names) == 4 and all(_SUFFIX.search(n) for n in names))


def _end2end(shapes: list[list[int | None]], given: bool) -> NmsOutputs | None:
    s = shapes[0]
    if len(s) == 3 and (s[2] == 6 or given and (s[2] or 0) >= 6) and (given or len(shapes) == 1):
        return NmsOutputs("end2end", 0)
    return None


def _separate(names: Sequence[str], shapes: list[list[int | None]], kind: str | None) -> NmsOutputs | None:
    boxes = [i for i, s in enumerate(shapes) if len(s) == 3 and s[2] == 4]
    if len(boxes) != 1:
        return None
    n, k = shapes[boxes[0]][:2]
    roles: dict[str, int] = {"boxes": boxes[0]}
    for i, (name, s) in enumerate(zip(names, shapes)):
        if i == boxes[0]:
            continue
        role = _role(name)
        fits = (len(s) == 2 and _same(s[0], n) and _same(s[1], k)) if role in ("scores", "classes") else \
            (role == "count" and (len(s) == 1 or len(s) == 2 and s[1] == 1) and _same(s[0], n))
        if not fits or role is None or role in roles:
            return None
        roles[role] = i
    if "scores" not in roles or "classes" not in roles:
        return None
    order = kind or ("boxes-yxyx" if y_first(names) else "boxes-xyxy")
    return NmsOutputs(order, roles["boxes"], roles["scores"], roles["classes"], roles.get("count"))


def nms_outputs(names: Sequence[str], shapes: Sequence[Sequence[Any]], kind: str | None = None) -> NmsOutputs | None:
    """The in-graph-NMS layout of outputs with these ``names`` and ``shapes``, or None when they fit
    none; ``kind`` (``--output-layout``, a card's ``output_kind``) says which one to read them as."""
    if not shapes or (kind is not None and kind not in NMS_KINDS):
        return None
    dims = [_dims(s) for s in shapes]
    if kind in (None, "end2end") and (found := _end2end(dims, kind == "end2end")) is not None:
        return found
    return None if kind == "end2end" else _separate(names, dims, kind)
