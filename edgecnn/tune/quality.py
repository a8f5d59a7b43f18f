"""How close each configuration's answers are to fp32 on onnxruntime, on the same held-out images.

With labels (classifiers), the accuracy and its drop in percentage points from fp32; without
them, or for detection and segmentation, the task's agreement with fp32 (top-1 agreement,
mAP@0.5, mIoU; for raw models the outputs' cosine similarity: see
:func:`edgecnn.export.verify.task_agreement`), 1.0 being identical behaviour.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError, ProviderError
from edgecnn.export.verify import accuracy, compare_outputs, predict_outputs, task_agreement
from edgecnn.runtime.deploy import FP32_FILE
from edgecnn.tune.candidates import Candidate
from edgecnn.tune.config import TuneConfig

__all__ = ["Quality", "Reference", "judge", "judge_all", "within", "drop_sort"]

QualityKey = tuple[str, str, str | None]


@dataclass(frozen=True, kw_only=True)
class Quality:
    """How close a configuration's answers are to fp32 on onnxruntime, on the same images."""

    drop_pp: float | None  # None: it could not be judged (a raw model that is not exact)
    accuracy: float | None = None
    metric: str | None = None
    metric_value: float | None = None
    max_abs_diff: float | None = None


def outputs(model: Any, images: np.ndarray, batch: int = 64) -> list[np.ndarray]:
    """Every output of ``model`` on ``images``, from uint8 pixels as an app calls it."""
    return predict_outputs(model.run_pixels, images, batch_size=batch)


def judge(reference: list[np.ndarray], ref_accuracy: float | None, got: list[np.ndarray], labels: Any,
          card: ModelCard) -> Quality:
    """``got`` against fp32's ``reference`` outputs: the accuracy drop with labels (classifiers),
    else 1 - the task's agreement with fp32, in percentage points."""
    metric = task_agreement(card.task, reference, got, card)
    diff = compare_outputs(reference, got, task=card.task).max_abs_diff
    if labels is not None and card.task == "classify":
        acc = accuracy(got[0], labels)
        base = accuracy(reference[0], labels) if ref_accuracy is None else ref_accuracy
        drop = 100.0 * (base - acc)
    else:  # 1.0 is identical behaviour for every task (raw: the outputs' cosine similarity)
        acc, drop = None, 100.0 * (1.0 - metric.value)
    return Quality(drop_pp=drop, accuracy=acc, metric=metric.name, metric_value=metric.value, max_abs_diff=diff)


@dataclass(frozen=True, kw_only=True)
class Reference:
    """fp32 on onnxruntime on the held-out images: what every configuration is judged against."""

    card: ModelCard
    images: np.ndarray  # uint8, in the model's channels
    labels: np.ndarray | None  # classifiers with a labelled test set only
    description: str
    outputs: list[np.ndarray]
    accuracy: float | None

    @classmethod
    def measure(cls, directory: Path, config: TuneConfig) -> Reference:
        """Open the fp32 file, load the held-out images (the export's own test split, or
        ``config.data``) and run them.

        Raises:
            DataError: without held-out images.
        """
        from edgecnn.export._data import to_channels
        from edgecnn.export.pipeline import load_test_data
        from edgecnn.runtime.core import InferenceModel

        model = InferenceModel(directory / FP32_FILE)
        card = model.card
        images, labels, description = load_test_data(card, config.data, limit=config.images, flag="--data")
        images = to_channels(images, card.channels, gray=card.gray)
        if card.task != "classify":
            labels = None
        out = outputs(model, images)
        return cls(card=card, images=images, labels=labels, description=description, outputs=out,
                   accuracy=None if labels is None else accuracy(out[0], labels))

    def judge(self, got: list[np.ndarray]) -> Quality:
        return judge(self.outputs, self.accuracy, got, self.labels, self.card)


def judge_all(cands: list[Candidate], directory: Path, ref: Reference, config: TuneConfig, *, notes: list[str],
              say: Callable[[str], None]) -> tuple[dict[QualityKey, Quality], list[Candidate]]:
    """The quality of each configuration that opens here (one check per :attr:`Candidate.quality_key`),
    and those configurations; one that does not open is noted and left out."""
    qualities: dict[QualityKey, Quality | None] = {}
    usable: list[Candidate] = []
    for cand in cands:
        if cand.quality_key not in qualities:
            try:
                model = cand.open(directory, None, config.device)
            except (ProviderError, ArtifactError) as err:
                notes.append(f"{cand.name}: {err}")
                say(f"  {cand.name}: skipped ({err})")
                qualities[cand.quality_key] = None
                continue
            same = cand.quality_key == (FP32_FILE, "onnxruntime", None)  # the reference itself
            q = ref.judge(ref.outputs if same else outputs(model, ref.images))
            qualities[cand.quality_key] = q
            say(f"  {cand.name}: " + ("not judged" if q.drop_pp is None else f"drop {q.drop_pp:+.2f} pp"))
        if qualities[cand.quality_key] is not None:
            usable.append(cand)
    return {k: q for k, q in qualities.items() if q is not None}, usable


def within(q: Quality | None, budget: float) -> bool:
    """Whether ``q`` was judged and lost at most ``budget`` percentage points."""
    return q is not None and q.drop_pp is not None and q.drop_pp <= budget + 1e-9


def drop_sort(q: Quality) -> float:
    """The drop as a Pareto axis: a gain counts as no drop, an unjudged one as the worst."""
    return math.inf if q.drop_pp is None else max(0.0, q.drop_pp)
