"""Numbers that decide whether an export ships: Keras-vs-ONNX parity and accuracy of variants.

Everything runs on onnxruntime's CPU execution provider, on images normalized by
:func:`edgecnn.runtime.preprocess.normalize_batch` from the card: exactly what the runtime runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError, ProviderError
from edgecnn.runtime.preprocess import normalize_batch

__all__ = ["Parity", "compare", "OnnxPredictor", "predict_in_batches", "accuracy"]

_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class Parity:
    """How closely a candidate's outputs follow a reference's on the same images."""

    images: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float  # fraction of images with the same arg-max

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    """Max/mean absolute difference and top-1 agreement of two (N, classes) outputs."""
    if reference.shape != candidate.shape:
        raise ArtifactError(f"Output shapes differ: reference {reference.shape}, candidate {candidate.shape}.")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    agree = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    return Parity(int(len(reference)), float(diff.max()), float(diff.mean()), agree)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of (N, classes) outputs against integer labels."""
    return float(np.mean(outputs.argmax(axis=1) == np.asarray(labels).reshape(-1)))


class OnnxPredictor:
    """An onnxruntime CPU session over one ONNX file or serialized model, fed uint8 images."""

    def __init__(self, model: str | Path | bytes, card: ModelCard, *, threads: int | None = None) -> None:
        import onnxruntime as ort
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        source = str(model) if isinstance(model, Path) else model
        try:
            self.session = ort.InferenceSession(source, sess_options=options, providers=[_PROVIDER])
        except Exception as err:  # onnxruntime raises Fail/InvalidGraph/NotImplemented
            raise ArtifactError(f"onnxruntime cannot load the model ({type(err).__name__}: {str(err)[:300]}).") from err
        if self.session.get_providers()[0] != _PROVIDER:
            raise ProviderError(f"Asked for {_PROVIDER}, got {self.session.get_providers()}.")
        self.card = card
        self.input_name = self.session.get_inputs()[0].name
        first = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = first if isinstance(first, int) and first > 0 else None

    def __call__(self, images_uint8: np.ndarray) -> np.ndarray:
        x = normalize_batch(images_uint8, self.card)
        if self.fixed_batch is None:
            return self.session.run(None, {self.input_name: x})[0]
        # A model exported with a fixed batch size: feed it chunks of that size, padding the last.
        n, b = len(x), self.fixed_batch
        pad = (-n) % b
        if pad:
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
        outs = [self.session.run(None, {self.input_name: x[i:i + b]})[0] for i in range(0, len(x), b)]
        return np.concatenate(outs)[:n]


def predict_in_batches(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Apply ``fn`` to ``images`` in batches and stack the outputs."""
    outs = [np.asarray(fn(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return np.concatenate(outs, axis=0)
