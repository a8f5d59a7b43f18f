"""Accuracy-aware int8: keep the nodes whose quantization hurts most in float until a budget is met.

Plain static int8 sometimes misses the accuracy budget because a few tensors quantize badly: an
activation with an outlier channel (one per-tensor scale for all channels crushes the quiet ones),
a depthwise kernel whose per-tensor 7-bit scale leaves small channels with a handful of levels.
Keeping just those nodes in float usually recovers the accuracy at a small cost in latency.

How it works:

1. Quantize as usual; if the injected metric (``evaluate(path) -> value``, higher is better)
   meets ``baseline - max_drop``, that file is the answer.
2. Otherwise rank every quantized tensor by its quantization error on a few calibration images
   (channel-averaged SQNR, then the model's output error with that tensor alone quantized), each
   with the nodes that must stay float for it to stay float: graph surgery on the float and QDQ
   models, in :mod:`edgecnn.export._qdq_ranking`.
3. The search keeps the worst 1, 2, 4, ... tensors' nodes in float, up to all but the least-bad
   one, then bisects back to the smallest passing prefix and drops single tensors that turn out
   unnecessary, never exceeding ``max_retries`` quantize-and-evaluate rounds.
4. The chosen file, plain int8 and fp32 are timed at batch 1 with the runtime's one timing loop
   (:func:`edgecnn.runtime.benchmark.time_callable`), for the report's cost of the recovery.

The metric is injected, so the search serves any task: top-1 agreement or accuracy for
classifiers, mAP or mIoU against the fp32 outputs for detectors and segmenters.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn._optional import require
from edgecnn.card import ModelCard
from edgecnn.errors import AccuracyDropError, ArtifactError, ConfigError, EdgecnnError
from edgecnn.export._qdq_ranking import QuantError, quantized_node_count, rank_quantization_errors
from edgecnn.export.quant_config import StaticInt8Config
from edgecnn.export.quantize import calibration_images_given, quantize_model
from edgecnn.runtime.preprocess import normalize_batch

log = logging.getLogger(__name__)

__all__ = [
    "AccuracyAwareConfig", "QuantError", "Attempt", "AccuracyAwareResult", "AccuracyAwareSummary",
    "accuracy_aware_quantize", "rank_quantization_errors", "time_models", "accuracy_aware_for_export",
]

_SIZE_GAIN = 0.8  # an accuracy-aware file at most this share of fp32's bytes is smaller enough to be worth it
_SPEED_GAIN = 0.95  # ... or at most this share of fp32's batch-1 latency
_WARMUP_ROUNDS = 3  # time_models: rounds run before the timed ones


@dataclass(frozen=True, kw_only=True)
class AccuracyAwareConfig:
    """Budget and bounds of the search.

    ``max_drop`` is in the metric's own units (0.01 for 1 pp of a 0-1 accuracy). ``max_retries``
    bounds the quantize-and-evaluate rounds after the plain one; ``ranking_images`` calibration
    images feed the error ranking, whose worst ``sensitivity_candidates`` tensors are re-ordered by
    the model's output error with that tensor alone quantized (0: SQNR order only);
    ``timing_runs`` batch-1 runs per model time fp32, plain int8 and the result (0: no timing) on
    ``timing_threads`` intra-op threads.
    """

    max_drop: float
    max_retries: int = 10
    ranking_images: int = 32
    sensitivity_candidates: int = 32
    trim: bool = True
    timing_runs: int = 30
    timing_threads: int = 1
    metric_name: str = "metric"

    def __post_init__(self) -> None:
        if not (self.max_drop >= 0 and math.isfinite(self.max_drop)):
            raise ConfigError(f"max_drop must be a finite number >= 0, got {self.max_drop}.")
        if self.max_retries < 1:
            raise ConfigError(f"max_retries must be >= 1, got {self.max_retries}.")
        if min(self.ranking_images, self.timing_threads) < 1 or min(self.timing_runs, self.sensitivity_candidates) < 0:
            raise ConfigError("ranking_images and timing_threads must be >= 1, timing_runs and sensitivity_candidates "
                              f">= 0, got {self.ranking_images}, {self.timing_threads}, {self.timing_runs}, "
                              f"{self.sensitivity_candidates}.")


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """One quantize-and-evaluate round of the search."""

    excluded: tuple[str, ...]  # nodes kept in float by the search
    metric: float
    passed: bool


@dataclass(frozen=True, kw_only=True)
class AccuracyAwareResult:
    """What the search found: the nodes kept in float and what the recovery cost.

    ``excluded_nodes`` are the nodes the search kept in float, on top of the ``StaticInt8Config``'s
    own exclusions; ``latency_ms`` holds batch-1 medians for ``fp32``, ``int8`` (plain) and
    ``int8-accuracy-aware`` (empty without timing).
    """

    path: Path
    metric_name: str
    baseline: float
    required: float
    plain_metric: float
    metric: float
    passed: bool
    excluded_nodes: tuple[str, ...]
    quantized_nodes: int  # nodes of the plain int8 model's graph that ORT quantized (reads a DQ output)
    ranking: tuple[QuantError, ...]
    attempts: tuple[Attempt, ...]
    fp32_size_bytes: int
    plain_size_bytes: int
    size_bytes: int
    latency_ms: dict[str, float] = field(default_factory=dict)
    proto: Any = field(default=None, repr=False, compare=False)  # the written onnx.ModelProto

    @property
    def recovered(self) -> bool:
        """True when plain int8 missed the budget and the search met it."""
        return self.passed and bool(self.excluded_nodes)

    @property
    def no_gain(self) -> str | None:
        """Why the file is not worth having over fp32: nodes kept in float ate the gain plain int8 had,
        so it is neither clearly smaller (at most ``_SIZE_GAIN`` of fp32's bytes) nor faster at batch 1
        (at most ``_SPEED_GAIN`` of fp32's latency, when timed). None when it is worth it, when nothing
        was kept in float, or when plain int8 had no gain to lose (a toy-sized graph)."""
        if not self.excluded_nodes:
            return None
        lat = self.latency_ms
        mine, plain, fp32 = lat.get("int8-accuracy-aware"), lat.get("int8"), lat.get("fp32")

        def gain(size: int, ms: float | None) -> bool:
            return size <= _SIZE_GAIN * self.fp32_size_bytes or (
                ms is not None and fp32 is not None and ms <= _SPEED_GAIN * fp32)

        if gain(self.size_bytes, mine) or not gain(self.plain_size_bytes, plain):
            return None  # still worth it, or int8 brings nothing on this model anyway: not the fallback's doing
        timing = "" if mine is None or fp32 is None else f", {mine:.3f} ms vs fp32 {fp32:.3f} ms at batch 1"
        return (f"{len(self.excluded_nodes)} of {self.quantized_nodes} quantized nodes kept in float leave no gain "
                f"over fp32 ({self.size_bytes / 1024:.1f} KiB vs fp32 {self.fp32_size_bytes / 1024:.1f} KiB{timing})")

    @property
    def message(self) -> str:
        """One line: what happened, and what to try when the budget was not met."""
        m, need, nodes = self.metric_name, f"{self.required:.4f}", self.excluded_nodes
        if self.passed and self.no_gain:
            return (f"accuracy-aware int8 met the budget ({m} {self.metric:.4f} >= {need}) but {self.no_gain}: "
                    "ship fp32 or fp16 instead (not written).")
        if self.passed and not nodes:
            return f"plain int8 met the budget ({m} {self.plain_metric:.4f} >= {need}); no node kept in float."
        if self.passed:
            shown = ", ".join(nodes[:6]) + (", ..." if len(nodes) > 6 else "")
            return (f"kept {len(nodes)} node(s) in float ({shown}): {m} {self.plain_metric:.4f} -> "
                    f"{self.metric:.4f} (needs >= {need}) after {len(self.attempts)} retries.")
        largest = max((len(a.excluded) for a in self.attempts), default=0)
        return (f"accuracy-aware int8 could not meet the budget: {m} {self.metric:.4f} at best (plain int8 "
                f"{self.plain_metric:.4f}, needs >= {need}) with up to {largest} of {self.quantized_nodes} quantized "
                f"nodes kept in float, in {len(self.attempts)} retries; keep this model in fp32 or fp16, or try "
                "another --calibration-method or --cpu-target.")

    def raise_for_status(self) -> None:
        """Raise AccuracyDropError with :attr:`message` unless the budget was met."""
        if not self.passed:
            raise AccuracyDropError(self.message[0].upper() + self.message[1:])

    def summary(self) -> AccuracyAwareSummary:
        """What the export report keeps of this search (the worst 10 ranked tensors)."""
        return AccuracyAwareSummary(
            message=self.message, no_gain=self.no_gain, metric_name=self.metric_name, baseline=self.baseline,
            required=self.required, plain_metric=self.plain_metric, metric=self.metric, passed=self.passed,
            nodes_kept_float=tuple(self.excluded_nodes), nodes_kept_float_count=len(self.excluded_nodes),
            quantized_nodes=self.quantized_nodes, fp32_size_bytes=self.fp32_size_bytes,
            plain_size_bytes=self.plain_size_bytes, size_bytes=self.size_bytes, latency_ms=dict(self.latency_ms),
            retries=len(self.attempts), attempts=tuple(self.attempts),
            worst_tensors=tuple(_entry_dict(e) for e in self.ranking[:10]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready :meth:`summary`."""
        return self.summary().to_dict()


def _entry_dict(e: QuantError) -> dict[str, Any]:
    return asdict(e) | {"nodes": list(e.nodes), "sqnr_db": round(e.sqnr_db, 2) if math.isfinite(e.sqnr_db) else None,
                        "output_error": None if e.output_error is None else float(f"{e.output_error:.4g}")}


@dataclass(frozen=True, kw_only=True)
class AccuracyAwareSummary:
    """What the export report keeps of an accuracy-aware search (``VariantResult.accuracy_aware``).

    The outcome (``message``, ``no_gain``, ``passed``), the metric of fp32 (``baseline``), of
    plain int8 and of the result against the ``required`` value, the nodes kept in float out of
    the ``quantized_nodes`` of plain int8, the sizes (before the card is embedded), the batch-1
    medians of ``latency_ms`` (fp32, int8, int8-accuracy-aware; empty without timing), every
    attempt, and the 10 worst ranked tensors (``QuantError`` fields; SQNR in dB to 2 decimals,
    None when exact; output error to 4 digits).
    """

    message: str
    no_gain: str | None
    metric_name: str
    baseline: float
    required: float
    plain_metric: float
    metric: float
    passed: bool
    nodes_kept_float: tuple[str, ...]
    nodes_kept_float_count: int
    quantized_nodes: int
    fp32_size_bytes: int
    plain_size_bytes: int
    size_bytes: int
    latency_ms: dict[str, float]
    retries: int
    attempts: tuple[Attempt, ...]
    worst_tensors: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (lists for tuples), as ``export_report.json`` holds it."""
        return {**asdict(self), "nodes_kept_float": list(self.nodes_kept_float),
                "attempts": [asdict(a) | {"excluded": list(a.excluded)} for a in self.attempts],
                "worst_tensors": [dict(e) for e in self.worst_tensors]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccuracyAwareSummary:
        """The summary :meth:`to_dict` wrote, read back.

        Raises:
            ArtifactError: for unknown or missing fields.
        """
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ArtifactError(f"unknown AccuracyAwareSummary field {unknown[0]!r}")
        try:
            attempts = tuple(Attempt(**{**a, "excluded": tuple(a["excluded"])}) for a in data["attempts"])
            return cls(**{**data, "nodes_kept_float": tuple(data["nodes_kept_float"]), "attempts": attempts,
                          "worst_tensors": tuple(data["worst_tensors"])})
        except (KeyError, TypeError) as err:  # a field missing, here or in an attempt
            raise ArtifactError(f"an AccuracyAwareSummary needs every field ({type(err).__name__}: {err})") from None

    def markdown_lines(self) -> list[str]:
        """The report's lines for this search."""
        name, nodes, lat = self.metric_name, self.nodes_kept_float, self.latency_ms
        lines = [f"- {name}: fp32 {100 * self.baseline:.2f}%, plain int8 {100 * self.plain_metric:.2f}%, "
                 f"accuracy-aware int8 {100 * self.metric:.2f}% (needs >= {100 * self.required:.2f}%; "
                 f"{'met' if self.passed else 'NOT met'}) after {self.retries} retries",
                 f"- nodes kept in float: {len(nodes)} of {self.quantized_nodes} quantized"
                 + (f": {', '.join(f'`{n}`' for n in nodes)}" if nodes else ""),
                 f"- size: fp32 {self.fp32_size_bytes / 1024:.1f} KiB, plain int8 "
                 f"{self.plain_size_bytes / 1024:.1f} KiB, accuracy-aware int8 "
                 f"{self.size_bytes / 1024:.1f} KiB (before the card is embedded)"]
        if lat:
            lines.append("- batch-1 latency (median, same session options): "
                         + ", ".join(f"{k} {v:.3f} ms" for k, v in lat.items()))
        return lines


# --------------------------------------------------------------------------------- the search


def accuracy_aware_quantize(fp32_path: Path, out_path: Path, *, card: ModelCard, quant: StaticInt8Config,
                            calibration_images: np.ndarray, evaluate: Callable[[Path], float], baseline: float,
                            config: AccuracyAwareConfig) -> AccuracyAwareResult:
    """Static int8 of ``fp32_path`` that meets ``evaluate(path) >= baseline - config.max_drop``.

    Args:
        fp32_path: verified fp32 ONNX model.
        out_path: where the chosen int8 model goes (on failure: the best attempt, for the report).
        card: the fp32 card (normalization and layout for calibration).
        quant: static int8 settings; its ``exclude_nodes`` stay excluded in every attempt.
        calibration_images: uint8 NHWC images, as for :func:`quantize_model`.
        evaluate: the task metric of a candidate int8 file, higher is better (e.g. top-1 agreement
            with fp32, mAP@0.5 against the fp32 boxes, mIoU against the fp32 masks).
        baseline: the same metric for fp32.
        config: budget and search bounds.

    Returns:
        The result; ``passed`` is False when even the largest attempt missed the budget
        (:meth:`AccuracyAwareResult.raise_for_status` turns that into an AccuracyDropError).

    Raises:
        ConfigError, DataError: as :func:`quantize_model`.
    """
    required = baseline - config.max_drop - 1e-9
    with tempfile.TemporaryDirectory(prefix="edgecnn-aa-") as tmp_name:
        tmp = Path(tmp_name)
        plain = tmp / "plain.onnx"
        quantize_model(fp32_path, plain, card=card, config=quant, calibration_images=calibration_images)
        plain_metric = float(evaluate(plain))
        log.info("plain int8: %s %.4f (needs >= %.4f)", config.metric_name, plain_metric, required)
        search = _Search(fp32_path, tmp, card=card, quant=quant, images=calibration_images, evaluate=evaluate,
                         required=required, max_retries=config.max_retries)
        ranking: tuple[QuantError, ...] = ()
        quantized = quantized_node_count(plain)
        best: tuple[float, tuple[str, ...], Path] = (plain_metric, (), plain)
        if plain_metric < required:
            ranking = rank_quantization_errors(fp32_path, plain, card=card,
                                               images=calibration_images[: config.ranking_images],
                                               candidates=config.sensitivity_candidates)
            best = search.run(ranking, trim=config.trim) or best
        metric, excluded, chosen = best
        shutil.copyfile(chosen, out_path)
        onnx = require("onnx", "export")
        latency = {}
        if config.timing_runs:
            models = {"fp32": fp32_path, "int8": plain}
            if excluded:
                models["int8-accuracy-aware"] = chosen
            latency = time_models(models, card=card, images=calibration_images[:1], runs=config.timing_runs,
                                  threads=config.timing_threads)
        return AccuracyAwareResult(
            path=out_path, metric_name=config.metric_name, baseline=float(baseline), required=float(required),
            plain_metric=plain_metric, metric=float(metric), passed=metric >= required, excluded_nodes=tuple(excluded),
            quantized_nodes=quantized, ranking=tuple(ranking), attempts=tuple(search.attempts),
            fp32_size_bytes=fp32_path.stat().st_size, plain_size_bytes=plain.stat().st_size,
            size_bytes=out_path.stat().st_size, latency_ms=latency, proto=onnx.load(str(out_path)))


class _Search:
    """Grow, bisect and trim the set of float nodes; every round is one quantize + evaluate."""

    def __init__(self, fp32_path: Path, tmp: Path, *, card: ModelCard, quant: StaticInt8Config, images: np.ndarray,
                 evaluate: Callable[[Path], float], required: float, max_retries: int) -> None:
        self.fp32_path, self.tmp, self.card, self.quant, self.images = fp32_path, tmp, card, quant, images
        self.evaluate, self.required, self.max_retries = evaluate, required, max_retries
        self.attempts: list[Attempt] = []
        self._files: dict[tuple[str, ...], Path] = {}

    def _try(self, nodes: tuple[str, ...]) -> tuple[float, bool] | None:
        """Quantize with ``nodes`` in float and evaluate; None once the retries are spent."""
        done = next((a for a in self.attempts if a.excluded == nodes), None)
        if done is not None:
            return done.metric, done.passed
        if len(self.attempts) >= self.max_retries:
            return None
        path = self.tmp / f"attempt{len(self.attempts)}.onnx"
        own = tuple(n for n in nodes if n not in self.quant.exclude_nodes)
        config = replace(self.quant, exclude_nodes=tuple(self.quant.exclude_nodes) + own)
        quantize_model(self.fp32_path, path, card=self.card, config=config, calibration_images=self.images)
        metric = float(self.evaluate(path))
        passed = metric >= self.required
        log.info("accuracy-aware int8: %d node(s) in float -> %.4f (%s)", len(nodes), metric,
                 "ok" if passed else "below budget")
        self.attempts.append(Attempt(excluded=nodes, metric=metric, passed=passed))
        self._files[nodes] = path
        return metric, passed

    def run(self, ranking: tuple[QuantError, ...], *, trim: bool) -> tuple[float, tuple[str, ...], Path] | None:
        if len(ranking) < 2:  # nothing to keep quantized once the only candidate is in float
            return None

        def prefix(k: int) -> tuple[str, ...]:
            return _union(e.nodes for e in ranking[:k])

        sizes = _schedule(len(ranking) - 1, self.max_retries)
        lo, hi = 0, None  # largest failing / smallest passing prefix size
        for k in sizes:
            got = self._try(prefix(k))
            if got is None:
                break
            if got[1]:
                hi = k
                break
            lo = k
        if hi is None:
            return self._best()
        while trim and hi - lo > 1:  # bisect back to the smallest passing prefix
            mid = (lo + hi) // 2
            got = self._try(prefix(mid))
            if got is None:
                break
            lo, hi = (lo, mid) if got[1] else (mid, hi)
        chosen = list(ranking[:hi])
        for entry in reversed(ranking[:hi] if trim else ()):  # least harmful first: maybe not needed
            if len(chosen) == 1:
                break
            rest = [e for e in chosen if e is not entry]
            got = self._try(_union(e.nodes for e in rest))
            if got is None:
                break
            if got[1]:
                chosen = rest
        return self._best()

    def _best(self) -> tuple[float, tuple[str, ...], Path] | None:
        """The passing attempt with the fewest float nodes, else the attempt with the best metric."""
        if not self.attempts:
            return None
        passing = [a for a in self.attempts if a.passed]
        pick = min(passing, key=lambda a: (len(a.excluded), -a.metric)) if passing else max(
            self.attempts, key=lambda a: a.metric)
        return pick.metric, pick.excluded, self._files[pick.excluded]


def _schedule(limit: int, max_retries: int) -> list[int]:
    """Prefix sizes 1, 2, 4, ... below ``limit``, then ``limit`` itself, within ``max_retries``.

    The last size is always ``limit`` (all candidates but the least harmful), so a search that runs
    out of retries still tried the configuration that decides whether int8 can help at all.
    """
    sizes, k = [], 1
    while k < limit:
        sizes.append(k)
        k *= 2
    sizes.append(limit)
    return sizes if len(sizes) <= max_retries else sizes[: max_retries - 1] + [limit]


def _union(groups) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for g in groups for n in g))


# -------------------------------------------------------------------------------- the ranking

# --------------------------------------------------------------------------------- the timing


def time_models(models: dict[str, Path], *, card: ModelCard, images: np.ndarray, runs: int = 30,
                threads: int = 1) -> dict[str, float]:
    """Median batch-1 latency (ms) of each model with the same onnxruntime session options.

    A fixed-batch model runs at its own batch size. Each call is timed by the runtime's one timing
    loop (:func:`edgecnn.runtime.benchmark.time_callable`), one call per model per round: the
    models take turns, so a load change on a shared machine hits all of them alike. The first
    ``_WARMUP_ROUNDS`` rounds are not counted.
    """
    from edgecnn.runtime.benchmark import time_callable
    from edgecnn.runtime.session import create_session

    # The runtime's own session options (all graph optimizations, one sequential inter-op thread).
    sessions = {k: create_session(p, provider="cpu", threads=threads)[0] for k, p in models.items()}
    batch = next(iter(sessions.values())).get_inputs()[0].shape[0]
    x = normalize_batch(np.repeat(images[:1], batch if isinstance(batch, int) and batch > 1 else 1, axis=0), card)
    calls = {k: functools.partial(s.run, None, {card.input_name: x}) for k, s in sessions.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(_WARMUP_ROUNDS + runs):
        for k, call in calls.items():
            seconds = time_callable(call, warmup=0, runs=1)
            if r >= _WARMUP_ROUNDS:
                times[k] += [1000 * t for t in seconds]
    return {k: round(statistics.median(v), 4) for k, v in times.items()}


# ------------------------------------------------------------------------- the export's use of it


def accuracy_aware_for_export(fp32_path: Path, out_path: Path, *, card: ModelCard, quant: StaticInt8Config,
                              calibration_images: np.ndarray | None, test_images: np.ndarray,
                              test_labels: np.ndarray | None, fp32_outputs: list[np.ndarray],
                              fp32_accuracy: float | None, max_drop_pp: float) -> AccuracyAwareResult:
    """The search with the export guard's own metric: accuracy with labels, else the task metric
    against fp32 (top-1 agreement for classifiers, output cosine similarity for raw models), as a
    point estimate; the export's guard then judges the chosen file with its interval.

    Raises:
        DataError: without (enough) calibration images. ArtifactError: when onnxruntime fails.
    """
    from edgecnn.export.verify import OnnxPredictor, accuracy, ort_error, predict_outputs, task_agreement

    def evaluate(path: Path) -> float:
        out = predict_outputs(OnnxPredictor(path, card).outputs, test_images)
        if test_labels is not None:
            return accuracy(out[0], test_labels)
        return task_agreement(card.task, fp32_outputs, out, card).value

    labelled = test_labels is not None and fp32_accuracy is not None
    name = "accuracy" if labelled else task_agreement(card.task, fp32_outputs, fp32_outputs, card).name
    config = AccuracyAwareConfig(max_drop=max_drop_pp / 100, metric_name=name)
    try:
        return accuracy_aware_quantize(fp32_path, out_path, card=card, quant=quant,
                                       calibration_images=calibration_images_given(calibration_images),
                                       evaluate=evaluate, config=config,
                                       baseline=fp32_accuracy if labelled and fp32_accuracy is not None else 1.0)
    except EdgecnnError:
        raise
    except Exception as err:  # onnxruntime.quantization raises whatever its passes raise
        raise ArtifactError(f"onnxruntime could not quantize the model to int8 ({ort_error(err)}).") from err
