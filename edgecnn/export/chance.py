"""The chance check of an fp32 export: accuracy no better than guessing means wrong preprocessing.

Run when the preprocessing came from flags or a guess rather than an edgecnn card, on every
labelled image given (held-out and calibration alike: fp32 was fitted on neither).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError
from edgecnn.export.guard import wilson
from edgecnn.export.images import ExportData
from edgecnn.presets import PREPROCESSING_FLAGS

log = logging.getLogger(__name__)

__all__ = ["check_not_chance", "chance_evidence"]

_CHANCE_MIN_IMAGES = 20
_CHANCE_Z = 1.5
_CHANCE_MAX_EXTRA = 2048  # labelled calibration images added to the held-out ones for the chance check


def check_not_chance(right: int, n: int, card: ModelCard) -> None:
    """Accuracy no better than guessing means the preprocessing (or the label order) is wrong.

    "At chance" is within 1.5 standard errors of a guessing model's accuracy: wrong preprocessing
    typically lands on or below chance (one class for every image), while a model that learned
    anything clears it on a few dozen images. Between that and the Wilson 95% lower bound clearing
    chance, the images cannot tell: a warning, not a refusal. Under 20 images nothing is judged;
    ``--no-chance-check`` skips the check.

    Raises:
        ArtifactError: when ``right`` of ``n`` labelled images is at chance level.
    """
    acc, chance = right / max(n, 1), 1.0 / card.num_classes
    if n < _CHANCE_MIN_IMAGES:
        log.warning("Only %d labelled images: too few to check that fp32 accuracy (%.1f%%) is above chance.",
                    n, 100 * acc)
        return
    low, high = wilson(right, n)
    margin = _CHANCE_Z * math.sqrt(chance * (1.0 - chance) / n)
    where = f"fp32 accuracy is {100 * acc:.1f}% on {n} labelled images (95% interval {100 * low:.1f}-{100 * high:.1f}%)"
    level = f"({100 * chance:.1f}% for {card.num_classes} classes)"
    if acc <= chance + margin:
        raise ArtifactError(
            f"{where}, at chance level {level}: the preprocessing is probably wrong "
            f"(used: {card.describe_preprocessing()}); "
            f"check {PREPROCESSING_FLAGS} and the --labels order, or pass --no-chance-check if the model is this "
            "weak. No model was written.")
    if low <= chance:
        log.warning("%s, chance is %s: these images cannot show the model beats chance; check the preprocessing "
                    "(%s) if that is unexpected.", where, level, card.describe_preprocessing())


def chance_evidence(predict: Callable[[np.ndarray], list[np.ndarray]], test_outputs: list[np.ndarray],
                    data: ExportData) -> tuple[int, int]:
    """Correct fp32 answers and images: the held-out images (``test_outputs``) plus the labelled
    calibration images (run through ``predict``)."""
    right = int(np.sum(test_outputs[0].argmax(axis=1) == np.asarray(data.test_labels).reshape(-1)))
    n = len(data.test)
    if data.calibration is not None and data.calibration_labels is not None and not data.shared:
        x, y = data.calibration[:_CHANCE_MAX_EXTRA], data.calibration_labels[:_CHANCE_MAX_EXTRA]
        out = predict(x)[0]
        right, n = right + int(np.sum(out.argmax(axis=1) == y)), n + len(x)
    return right, n
