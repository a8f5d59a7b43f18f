"""One output row per input, and the Parquet schema of a task: the same in every engine.

Every row has ``path``, ``error`` (null, or the one-line reason the input has no answer: an
undecodable image is a row, never a crash and never a silent skip), ``width``/``height`` of the
original image, ``model`` (the card's name) and ``model_sha256``. Then, by task:

- classify: ``label``, ``score`` (top-1) and ``top_k`` (list of ``{label, index, score}``);
- detect: ``detections`` (list of ``{label, index, score, box: [x1, y1, x2, y2]}``, original pixels);
- segment: ``classes`` (list of ``{label, index, fraction}``, largest share first: the mask's summary);
- raw: ``outputs`` (JSON text of each output's name, shape and value summary).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["result_row", "error_row", "schema"]


def _types() -> Any:
    from edgecnn._optional import require

    return require("pyarrow", "batch")


def schema(task: str) -> Any:
    """The ``pyarrow.Schema`` of a task's rows."""
    pa = _types()
    common = [pa.field("path", pa.string(), nullable=False), pa.field("error", pa.string()),
              pa.field("width", pa.int32()), pa.field("height", pa.int32()),
              pa.field("model", pa.string(), nullable=False), pa.field("model_sha256", pa.string(), nullable=False)]
    scored = [pa.field("label", pa.string()), pa.field("index", pa.int32()), pa.field("score", pa.float32())]
    if task == "classify":
        extra = [pa.field("label", pa.string()), pa.field("score", pa.float32()),
                 pa.field("top_k", pa.list_(pa.struct(scored)))]
    elif task == "detect":
        extra = [pa.field("detections", pa.list_(pa.struct([*scored, pa.field("box", pa.list_(pa.float32(), 4))])))]
    elif task == "segment":
        extra = [pa.field("classes", pa.list_(pa.struct([pa.field("label", pa.string()), pa.field("index", pa.int32()),
                                                         pa.field("fraction", pa.float32())])))]
    else:
        extra = [pa.field("outputs", pa.string())]
    return pa.schema(common + extra)


def result_row(task: str, name: str, answer: dict[str, Any], *, width: int, height: int,
               model: dict[str, str]) -> dict[str, Any]:
    """The row of one answered input; ``answer`` is the head's ``result_dict`` (what ``predict --json``
    prints) and ``model`` the ``model``/``model_sha256`` columns."""
    row: dict[str, Any] = {"path": name, "error": None, "width": width, "height": height, **model}
    if task == "classify":
        top = [{"label": p["label"], "index": p["index"], "score": p["probability"]} for p in answer["top_k"]]
        row.update(label=top[0]["label"] if top else None, score=top[0]["score"] if top else None, top_k=top)
    elif task == "detect":
        row["detections"] = [{k: d[k] for k in ("label", "index", "score", "box")} for d in answer["detections"]]
    elif task == "segment":
        row["classes"] = answer["segmentation"]["classes"]
    else:
        row["outputs"] = json.dumps(answer["outputs"])
    return row


def error_row(name: str, error: str, *, model: dict[str, str]) -> dict[str, Any]:
    """The row of an input without an answer (its other task columns null)."""
    return {"path": name, "error": error, "width": None, "height": None, **model}
