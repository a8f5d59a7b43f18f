"""Opening a model with the head its task needs (:func:`load_model`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecnn.runtime.core import InferenceModel
from edgecnn.runtime.heads import Classifier, Detector, Segmenter
from edgecnn.runtime.options import RuntimeOptions

__all__ = ["HEADS", "load_model"]

# The head of each task; a "raw" model is run by the core itself.
HEADS: dict[str, type[InferenceModel]] = {"classify": Classifier, "detect": Detector, "segment": Segmenter,
                                          "raw": InferenceModel}


def load_model(model: str | Path | bytes, options: RuntimeOptions | None = None, **kwargs: Any) -> InferenceModel:
    """Open a model with the head its task needs: :class:`~edgecnn.runtime.Classifier`,
    ``Detector``, ``Segmenter``, or the plain :class:`~edgecnn.runtime.InferenceModel` for ``raw`` models.

    An export directory opens as :meth:`InferenceModel.from_dir` does (``deploy.json``, else
    ``model.onnx``; ``options`` win over ``deploy.json``). The task comes from the overrides when
    they give it, else from the model card, else from the graph and the file's metadata (see
    :func:`edgecnn.card_inference.infer_card`). Takes :class:`InferenceModel`'s arguments.

    Raises:
        ArtifactError, ProviderError, ConfigError: as :class:`InferenceModel`.
    """
    if not isinstance(model, bytes) and Path(model).is_dir():
        probe = InferenceModel.from_dir(model, options, **kwargs)
    else:
        probe = InferenceModel(model, options, **kwargs)
    return HEADS[probe.card.task].adopt(probe)
