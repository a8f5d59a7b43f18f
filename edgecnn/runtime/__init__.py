"""Embeddable runtime: numpy + onnxruntime + Pillow only (never TensorFlow).

>>> from edgecnn.runtime import Classifier, load_model
>>> clf = Classifier("model.onnx", provider="cpu")
>>> clf.predict(["cat.jpg"], top_k=3)
>>> model = load_model("yolo.onnx")          # the head the model's task needs
>>> model.predict(["street.jpg"])

The names below load on first use (PEP 562), so that importing a light module of the package
(``edgecnn.runtime.options``, which the CLI reads for ``--help``) imports neither numpy nor
onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgecnn.runtime.cards import read_card
    from edgecnn.runtime.core import InferenceModel
    from edgecnn.runtime.heads import (
        Classifier,
        Detection,
        Detections,
        Detector,
        Prediction,
        SegmentationResult,
        Segmenter,
        default_model_path,
    )
    from edgecnn.runtime.loading import HEADS, load_model
    from edgecnn.runtime.options import CudaOptions, RuntimeOptions
    from edgecnn.runtime.preprocess import FitInfo, load_image, normalize_batch
    from edgecnn.runtime.session import create_session

# Where each public name lives.
_HOMES = {
    "Classifier": "edgecnn.runtime.heads", "Prediction": "edgecnn.runtime.heads",
    "default_model_path": "edgecnn.runtime.heads", "Detector": "edgecnn.runtime.heads",
    "Detection": "edgecnn.runtime.heads", "Detections": "edgecnn.runtime.heads",
    "Segmenter": "edgecnn.runtime.heads", "SegmentationResult": "edgecnn.runtime.heads",
    "InferenceModel": "edgecnn.runtime.core", "read_card": "edgecnn.runtime.cards",
    "FitInfo": "edgecnn.runtime.preprocess", "load_image": "edgecnn.runtime.preprocess",
    "normalize_batch": "edgecnn.runtime.preprocess", "create_session": "edgecnn.runtime.session",
    "load_model": "edgecnn.runtime.loading", "HEADS": "edgecnn.runtime.loading",
    "RuntimeOptions": "edgecnn.runtime.options", "CudaOptions": "edgecnn.runtime.options",
}

__all__ = ["Classifier", "Detector", "Segmenter", "InferenceModel", "Prediction", "Detection", "Detections",
           "SegmentationResult", "FitInfo", "default_model_path", "read_card", "load_image", "normalize_batch",
           "create_session", "load_model", "HEADS", "RuntimeOptions", "CudaOptions"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next lookup is a plain one
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
