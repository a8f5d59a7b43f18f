"""Embeddable runtime: numpy + onnxruntime + Pillow only (never TensorFlow).

>>> from edgecnn.runtime import Classifier, load_model
>>> clf = Classifier("model.onnx", provider="cpu")
>>> clf.predict(["cat.jpg"], top_k=3)
>>> model = load_model("yolo.onnx")          # the head the model's task needs
>>> model.predict(["street.jpg"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecnn.runtime.classifier import Classifier, Prediction, default_model_path
from edgecnn.runtime.core import InferenceModel, read_card
from edgecnn.runtime.heads import Detection, Detections, Detector, SegmentationResult, Segmenter
from edgecnn.runtime.preprocess import FitInfo, load_image, normalize_batch
from edgecnn.runtime.session import create_session

__all__ = ["Classifier", "Detector", "Segmenter", "InferenceModel", "Prediction", "Detection", "Detections",
           "SegmentationResult", "FitInfo", "default_model_path", "read_card", "load_image", "normalize_batch",
           "create_session", "load_model", "HEADS"]

# The head of each task; a "raw" model is run by the core itself.
HEADS: dict[str, type[InferenceModel]] = {"classify": Classifier, "detect": Detector, "segment": Segmenter,
                                          "raw": InferenceModel}


def load_model(model: str | Path | bytes, provider: str = "cpu", threads: int | None = None,
               allow_fallback: bool = False, **kwargs: Any) -> InferenceModel:
    """Open an ONNX model with the head its task needs: :class:`Classifier`, ``Detector``,
    ``Segmenter``, or the plain :class:`InferenceModel` for ``raw`` models.

    An export directory opens as :meth:`InferenceModel.from_dir` does (``deploy.json``, else
    ``model.onnx``). The task comes from ``task=`` when given, else from the model card, else from the graph and
    the file's metadata (see :func:`edgecnn.card_inference.infer_card`). Takes :class:`InferenceModel`'s arguments.

    Raises:
        ArtifactError, ProviderError, ConfigError: as :class:`InferenceModel`.
    """
    if not isinstance(model, bytes) and Path(model).is_dir():
        probe = InferenceModel.from_dir(model, provider, threads, allow_fallback, **kwargs)
    else:
        probe = InferenceModel(model, provider, threads, allow_fallback, **kwargs)
    return HEADS[probe.card.task].adopt(probe)
