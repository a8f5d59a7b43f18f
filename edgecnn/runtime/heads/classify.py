"""The classification head on the runtime core: model file + card -> top-k labels with probabilities,
and the reference model packaged with edgecnn."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.errors import ArtifactError, InputError
from edgecnn.runtime.core import InferenceModel
from edgecnn.runtime.preprocess import ImageLike

log = logging.getLogger(__name__)

__all__ = ["Classifier", "Prediction", "default_model_path", "DEFAULT_MODEL"]

DEFAULT_MODEL = "seed_cnn_cifar10.onnx"


@dataclass(frozen=True)
class Prediction:
    """One of the top-k classes of an image."""

    label: str
    index: int
    probability: float

    def to_dict(self) -> dict[str, Any]:
        # by hand: dataclasses.asdict deep-copies field by field, 20 microseconds a prediction (a batch job's
        # 100,000 images x top-5 spent 10 s in it)
        return {"label": self.label, "index": self.index, "probability": self.probability}


def default_model_path() -> Path:
    """The reference model packaged with edgecnn (``edgecnn/assets/models/seed_cnn_cifar10.onnx``).

    Raises:
        ArtifactError: if this checkout or install does not contain it yet.
    """
    path = Path(str(resources.files("edgecnn") / "assets" / "models" / DEFAULT_MODEL))
    if not path.is_file():
        raise ArtifactError(
            f"The reference model {path} is missing. Make it with `edgecnn train --model seed_cnn "
            "--data cifar10 --out runs/seed_cnn` then `edgecnn export runs/seed_cnn --quantize int8` and copy "
            f"the exported ONNX to {path}, or pass a MODEL path explicitly."
        )
    return path


class Classifier(InferenceModel):
    """Image classifier over an ONNX model, preprocessing exactly as training did.

    The constructor is :class:`~edgecnn.runtime.core.InferenceModel`'s (model path, runtime
    options, card overrides, max_pixels). An ONNX classifier without a card works too: pass
    ``overrides=ModelOverrides(mean=..., std=..., class_names=..., input_size=...)`` (mean/std on
    the 0-255 scale) for what its graph does not say. A float16 model input (an
    fp16 export without float32 I/O) gets the preprocessed float32 batch cast to float16;
    ``predict_proba`` returns float32.

    Raises:
        ArtifactError: for a missing or corrupt file, a card that does not match the model, or a
            model whose card says it is not a classifier.
        ProviderError: when the requested provider is not the one running the session.
        ConfigError: for CUDA graphs without a CUDA provider or without IO binding.
    """

    def _check_task(self) -> None:
        if self.card.task != "classify":
            raise ArtifactError(f"{self.model_path.name} is a {self.card.task} model, not a classifier; use "
                                "edgecnn.runtime.load_model() (or `edgecnn predict`), which picks the right head.")

    def predict_proba(self, images: ImageLike | Sequence[ImageLike] | np.ndarray) -> np.ndarray:
        """Class probabilities, (N, num_classes) float32 (softmax applied to logits models)."""
        pixels = images if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4 \
            else self.to_pixels(images)  # a uint8 batch goes straight in: run_pixels checks its shape
        return self.probabilities(self.run_pixels(pixels)[self._primary])

    def probabilities(self, out: np.ndarray) -> np.ndarray:
        """The model's raw primary output for a batch -> (N, num_classes) float32 probabilities."""
        out = np.asarray(out, dtype=np.float32)
        out = out.reshape(out.shape[0], -1)
        if out.shape[1] != self.card.num_classes:
            raise ArtifactError(f"{self.model_path} outputs {out.shape[1]} values per image but the card has "
                                f"{self.card.num_classes} labels.")
        if (not _is_distribution(out)) if not self.has_card else self.card.output_kind == "logits":
            out = _softmax(out)
        return out

    def predict(self, images: ImageLike | Sequence[ImageLike] | np.ndarray, top_k: int = 5) -> list[list[Prediction]]:
        """Top-k predictions per image, most probable first.

        Raises:
            InputError: for bad images or ``top_k`` < 1.
        """
        if top_k < 1:
            raise InputError(f"top_k must be >= 1, got {top_k}.")
        return self.top_k(self.predict_proba(images), top_k)

    def postprocess(self, outputs: list[np.ndarray], fits: Sequence[Any], top_k: int = 5,
                    **params: Any) -> list[list[Prediction]]:
        """Raw outputs of a batch -> top-k :class:`Prediction` per image (the core's task hook)."""
        del fits, params
        return self.top_k(self.probabilities(outputs[self.output_names.index(self.output_name)]), top_k)

    def top_k(self, proba: np.ndarray, k: int) -> list[list[Prediction]]:
        """Top-k :class:`Prediction` per row of a probability batch, most probable first."""
        k = min(k, proba.shape[1])
        order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
        labels = self.card.class_names
        return [[Prediction(labels[i], int(i), float(row[i])) for i in idx] for row, idx in zip(proba, order)]


    def result_dict(self, result: list[Prediction]) -> dict[str, Any]:
        """``{"top_k": [{label, index, probability}, ...]}`` for one image."""
        return {"top_k": [p.to_dict() for p in result]}

    def annotate(self, image: ImageLike, result: list[Prediction]) -> Any:
        """The image (at its own size) with its top-1 label and probability written in its corner."""
        from PIL import ImageDraw

        from edgecnn.runtime.preprocess import decode_image

        img, _ = decode_image(image, max_pixels=self.max_pixels)
        if result:
            text = f"{result[0].label} {result[0].probability:.2f}"
            draw = ImageDraw.Draw(img)
            box = draw.textbbox((2, 2), text)
            draw.rectangle((0, 0, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
            draw.text((2, 2), text, fill=(255, 255, 255))
        return img


def _is_distribution(out: np.ndarray) -> bool:
    """Whether every row already looks like probabilities: a card-less model's output kind is read
    off its values, since the runtime cannot see whether the graph ends in a softmax."""
    return bool(out.min() >= 0 and out.max() <= 1 and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
