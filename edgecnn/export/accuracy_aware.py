"""Accuracy-aware int8: keep the nodes whose quantization hurts most in float until a budget is met.

Plain static int8 sometimes misses the accuracy budget because a few tensors quantize badly: an
activation with an outlier channel (one per-tensor scale for all channels crushes the quiet ones),
a depthwise kernel whose per-tensor 7-bit scale leaves small channels with a handful of levels.
Keeping just those nodes in float usually recovers the accuracy at a small cost in latency.

How it works:

1. Quantize as usual; if the injected metric (``evaluate(path) -> value``, higher is better)
   meets ``baseline - max_drop``, that file is the answer.
2. Otherwise rank every quantized tensor by its quantization error on a few calibration images,
   with onnxruntime's QDQ debugging helpers (``onnxruntime.quantization.qdq_loss_debug``): the
   activations of the QDQ model before and after each QuantizeLinear/DequantizeLinear pair, and
   the weights before and after quantization. The error is the signal-to-quantization-noise ratio
   (SQNR, dB) from the noise-to-signal power averaged over *channels*: a whole-tensor SQNR is
   dominated by a loud outlier channel and calls a tensor whose quiet channels were zeroed "fine".
3. Each ranked tensor maps to the nodes that make ORT quantize it (its producer and the consumers
   of its DequantizeLinear output; for a weight, the node using it): those are the nodes that
   must stay float for the tensor to stay float. The search keeps the worst 1, 2, 4, ... tensors'
   nodes in float, up to all but the least-bad one, then bisects back to the smallest passing
   prefix and drops single tensors that turn out unnecessary, never exceeding ``max_retries``
   quantize-and-evaluate rounds.

The metric is injected, so the search serves any task: top-1 agreement or accuracy for
classifiers, mAP or mIoU against the fp32 outputs for detectors and segmenters.
"""

from __future__ import annotations

import logging
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn._optional import require
from edgecnn.card import ModelCard
from edgecnn.errors import AccuracyDropError, ArtifactError, ConfigError, EdgecnnError
from edgecnn.export.quantize import QuantizeConfig, pre_process_for_quantization, quantize_model
from edgecnn.runtime.preprocess import normalize_batch

log = logging.getLogger(__name__)

__all__ = [
    "AccuracyAwareConfig", "QuantError", "Attempt", "AccuracyAwareResult",
    "accuracy_aware_quantize", "rank_quantization_errors", "time_models", "accuracy_aware_for_export",
    "guard_hints", "markdown_lines",
]

_EPS = 1e-12
_SIZE_GAIN = 0.8  # an accuracy-aware file at most this share of fp32's bytes is smaller enough to be worth it
_SPEED_GAIN = 0.95  # ... or at most this share of fp32's batch-1 latency


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class QuantError:
    """One quantized tensor, how badly quantization represents it, and the nodes that quantize it."""

    tensor: str
    kind: str  # "activation" or "weight"
    sqnr_db: float  # channel-averaged signal-to-quantization-noise ratio; lower is worse
    nodes: tuple[str, ...]  # keeping these in float keeps the tensor in float
    output_error: float | None = None  # relative output error vs fp32 with only this tensor quantized


@dataclass(frozen=True)
class Attempt:
    """One quantize-and-evaluate round of the search."""

    excluded: tuple[str, ...]  # nodes kept in float by the search
    metric: float
    passed: bool


@dataclass(frozen=True)
class AccuracyAwareResult:
    """What the search found: the nodes kept in float and what the recovery cost.

    ``excluded_nodes`` are the nodes the search kept in float, on top of the ``QuantizeConfig``'s
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for the export report (worst 10 ranked tensors)."""
        return {
            "message": self.message, "no_gain": self.no_gain, "metric_name": self.metric_name,
            "baseline": self.baseline,
            "required": self.required, "plain_metric": self.plain_metric, "metric": self.metric, "passed": self.passed,
            "nodes_kept_float": list(self.excluded_nodes), "nodes_kept_float_count": len(self.excluded_nodes),
            "quantized_nodes": self.quantized_nodes, "fp32_size_bytes": self.fp32_size_bytes,
            "plain_size_bytes": self.plain_size_bytes, "size_bytes": self.size_bytes,
            "latency_ms": dict(self.latency_ms), "retries": len(self.attempts),
            "attempts": [asdict(a) | {"excluded": list(a.excluded)} for a in self.attempts],
            "worst_tensors": [_entry_dict(e) for e in self.ranking[:10]],
        }


def _entry_dict(e: QuantError) -> dict[str, Any]:
    return asdict(e) | {"nodes": list(e.nodes), "sqnr_db": round(e.sqnr_db, 2) if math.isfinite(e.sqnr_db) else None,
                        "output_error": None if e.output_error is None else float(f"{e.output_error:.4g}")}


# --------------------------------------------------------------------------------- the search


def accuracy_aware_quantize(fp32_path: Path, out_path: Path, *, card: ModelCard, quant: QuantizeConfig,
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
    with tempfile.TemporaryDirectory(prefix="edgecnn-aa-") as tmp:
        tmp = Path(tmp)
        plain = tmp / "plain.onnx"
        quantize_model(fp32_path, plain, mode="int8", card=card, config=quant, calibration_images=calibration_images)
        plain_metric = float(evaluate(plain))
        log.info("plain int8: %s %.4f (needs >= %.4f)", config.metric_name, plain_metric, required)
        search = _Search(fp32_path, tmp, card=card, quant=quant, images=calibration_images, evaluate=evaluate,
                         required=required, max_retries=config.max_retries)
        ranking, quantized = (), _quantized_node_count(plain)
        best = (plain_metric, (), plain)
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

    def __init__(self, fp32_path: Path, tmp: Path, *, card: ModelCard, quant: QuantizeConfig, images: np.ndarray,
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
        config = self.quant.with_(exclude_nodes=tuple(self.quant.exclude_nodes) + own)
        quantize_model(self.fp32_path, path, mode="int8", card=self.card, config=config, calibration_images=self.images)
        metric = float(self.evaluate(path))
        passed = metric >= self.required
        log.info("accuracy-aware int8: %d node(s) in float -> %.4f (%s)", len(nodes), metric,
                 "ok" if passed else "below budget")
        self.attempts.append(Attempt(nodes, metric, passed))
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


def rank_quantization_errors(fp32_path: Path, qdq_path: Path, *, card: ModelCard, images: np.ndarray,
                             candidates: int = 32) -> tuple[QuantError, ...]:
    """Every quantized tensor of ``qdq_path``, worst first.

    First by channel-averaged SQNR: activations from onnxruntime's ``qdq_loss_debug`` helpers run
    on ``images`` (uint8 NHWC, normalized with ``card``), weights from its weight matching of the
    float and QDQ graphs. SQNR says how badly a tensor is represented, not how much the model's
    answer cares; so the worst ``candidates`` are re-ordered by the float model's output error
    when only that tensor is quantized (largest first). ``fp32_path``
    is pre-processed as :func:`quantize_model` does, so names match the QDQ model.
    """
    onnx = require("onnx", "export")
    dbg = require("onnxruntime.quantization.qdq_loss_debug", "export")
    qdq = onnx.load(str(qdq_path))
    users = _quantized_tensor_users(qdq)
    with tempfile.TemporaryDirectory(prefix="edgecnn-rank-") as tmp:
        tmp = Path(tmp)
        pre = tmp / "pre.onnx"
        pre_process_for_quantization(fp32_path, pre)
        pre_proto = onnx.load(str(pre))
        shapes, float_node_names = _tensor_shapes(pre_proto), {n.name for n in pre_proto.graph.node}
        x = normalize_batch(images, card)
        acts = {}
        for name, path in (("float", pre), ("qdq", qdq_path)):
            augmented = tmp / f"{name}.augmented.onnx"
            dbg.modify_model_output_intermediate_tensors(str(path), str(augmented))
            acts[name] = dbg.collect_activations(str(augmented), _Batches(card.input_name, x, _fixed_batch(qdq)))
        matching = dbg.create_activation_matching(acts["qdq"], acts["float"])
        fused = _fused_activations(pre_proto, qdq)
        ranked = [QuantError(t, "activation",
                             _channel_sqnr([fused.get(t, _identity)(a) for a in m["pre_qdq"]], m["post_qdq"],
                                           shapes.get(t), axis=1),
                             _nodes(users[t], float_node_names))
                  for t, m in matching.items() if t in users and m.get("pre_qdq") and m.get("post_qdq")]
        weights = dbg.create_weight_matching(str(pre), str(qdq_path))
        for name, w in weights.items():
            if name in users and w["float"].ndim >= 2:  # biases (1-D, int32 at in*w scale) are exact enough
                axis = _weight_axis(qdq, name, w["float"].ndim)
                ranked.append(QuantError(name, "weight", _channel_sqnr([w["float"]], [w["dequantized"]],
                                                                       w["float"].shape, axis=axis, batched=False),
                                         _nodes(users[name], float_node_names)))
        ranked = [e for e in ranked if e.nodes]
        ranked.sort(key=lambda e: e.sqnr_db)
        if candidates and len(ranked) > 1:
            feeds = list(_Batches(card.input_name, x, _fixed_batch(qdq)))
            head = _by_sensitivity(qdq, pre, ranked[:candidates], weights, feeds)
            ranked = head + ranked[candidates:]
    return tuple(ranked)


def _by_sensitivity(qdq: Any, pre: Path, entries: list[QuantError], weights: dict[str, dict[str, np.ndarray]],
                    feeds: list[dict[str, np.ndarray]]) -> list[QuantError]:
    """``entries`` ordered by the output error vs fp32 when *only* that tensor is quantized.

    Layer-wise sensitivity: the float graph gets the QDQ model's QuantizeLinear/DequantizeLinear
    pair on one activation (same scale and zero point) or the dequantized values of one weight.
    Measured alone, a tensor's damage is not drowned by the noise of all the others, as it is when
    one tensor is taken out of the full QDQ model. One onnxruntime session per candidate, no
    re-quantization.
    """
    onnx = require("onnx", "export")
    from edgecnn.runtime.session import create_session

    def outputs(model: Any) -> list[np.ndarray]:
        session, _ = create_session(model.SerializeToString(), provider="cpu")
        return [np.concatenate(o) for o in zip(*(session.run(None, f) for f in feeds))]

    float_model = onnx.load(str(pre))
    reference = outputs(float_model)

    def error(got: list[np.ndarray]) -> float:
        return float(np.mean([np.sum((g - r) ** 2) / max(float(np.sum(r * r)), _EPS) for g, r in zip(got, reference)]))

    scored = []
    for e in entries:
        model = _quantize_one(float_model, qdq, e.tensor, weights.get(e.tensor, {}).get("dequantized"))
        scored.append(replace(e, output_error=error(outputs(model))) if model is not None else e)
    # Largest error first; entries that could not be isolated keep their SQNR order behind them.
    return sorted(scored, key=lambda e: (e.output_error is None, -(e.output_error or 0.0), e.sqnr_db))


def _quantize_one(float_model: Any, qdq: Any, tensor: str, dequantized: np.ndarray | None) -> Any:
    """A copy of the float graph in which only ``tensor`` is quantized as in ``qdq``; None if it cannot."""
    onnx = require("onnx", "export")
    numpy_helper = require("onnx.numpy_helper", "export")
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    graph = model.graph
    if dequantized is not None:
        for i, init in enumerate(graph.initializer):
            if init.name == tensor:
                graph.initializer[i].CopyFrom(numpy_helper.from_array(dequantized.astype(np.float32), tensor))
                return model
        return None
    q = next((n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor), None)
    if q is None or tensor in {o.name for o in graph.output}:
        return None
    inits = {i.name: i for i in qdq.graph.initializer}
    names = [f"{tensor}_edgecnn_{k}" for k in ("scale", "zero_point", "q", "dq")]
    for src, dst in zip(q.input[1:3], names[:2]):
        if src not in inits:
            return None
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[src]), dst))
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == tensor:
                node.input[i] = names[3]
    pair = [onnx.helper.make_node("QuantizeLinear", [tensor, names[0], names[1]], [names[2]], name=names[2]),
            onnx.helper.make_node("DequantizeLinear", [names[2], names[0], names[1]], [names[3]], name=names[3])]
    at = next((k + 1 for k, n in enumerate(graph.node) if tensor in n.output), 0)  # keep topological order
    for k, node in enumerate(pair):
        graph.node.insert(at + k, node)
    return model


class _Batches:
    """An iterable of input feeds in the model's batch size (8 when the batch axis is dynamic)."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int | None) -> None:
        self.input_name, self.batch = input_name, batch or 8
        if batch and len(x) % batch:  # a fixed-batch model: repeat the last image to fill the last batch
            x = np.concatenate([x, np.repeat(x[-1:], batch - len(x) % batch, axis=0)])
        self.x = x

    def __iter__(self):
        for i in range(0, len(self.x), self.batch):
            yield {self.input_name: self.x[i:i + self.batch]}


def _fixed_batch(proto: Any) -> int | None:
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _fused_activations(pre: Any, qdq: Any) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Relu/Clip outputs that ORT folded into the quantization of the node before them.

    ORT drops a Relu or Clip that follows a quantized node and lets the uint8 range do the
    clamping, so in the QDQ model the tensor named after the Relu output holds the values *before*
    the Relu. Comparing them with the dequantized values would count the Relu itself as
    quantization error; the ranking applies the folded activation first.
    """
    numpy_helper = require("onnx.numpy_helper", "export")
    qdq_producers = {o: n.op_type for n in qdq.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in pre.graph.initializer}
    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for n in pre.graph.node:
        if n.op_type not in ("Relu", "Clip") or qdq_producers.get(n.output[0]) == n.op_type:
            continue
        if n.op_type == "Relu":
            out[n.output[0]] = lambda x: np.maximum(x, 0)
            continue
        attrs = {a.name: a.f for a in n.attribute}
        lo = inits[n.input[1]] if len(n.input) > 1 and n.input[1] in inits else attrs.get("min", -np.inf)
        hi = inits[n.input[2]] if len(n.input) > 2 and n.input[2] in inits else attrs.get("max", np.inf)
        out[n.output[0]] = lambda x, lo=float(lo), hi=float(hi): np.clip(x, lo, hi)
    return out


def _quantized_tensor_users(qdq: Any) -> dict[str, tuple[str, ...]]:
    """Tensor (activation or weight) -> the nodes whose quantization makes ORT quantize it.

    Read from the QDQ graph: a DequantizeLinear's input comes from a quantized initializer (a
    weight) or from a QuantizeLinear of the float tensor (an activation); the nodes that read the
    DequantizeLinear output, plus the tensor's producer, quantize it.
    """
    producers = {o: n for n in qdq.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in qdq.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    inits = {i.name for i in qdq.graph.initializer}
    suffix = "_quantized"  # ORT's TENSOR_NAME_QUANT_SUFFIX for quantized initializers
    out: dict[str, list[str]] = {}
    for n in qdq.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        src = n.input[0]
        if src in inits:
            tensor = src[: -len(suffix)] if src.endswith(suffix) else src
            owners = []
        elif src in producers and producers[src].op_type == "QuantizeLinear":
            tensor = producers[src].input[0]
            owners = [producers[tensor].name] if tensor in producers else []
        else:
            continue
        readers = [c for c in consumers.get(n.output[0], []) if c]
        out.setdefault(tensor, []).extend(owners + readers)
    return {t: tuple(dict.fromkeys(v)) for t, v in out.items()}


def _quantized_node_count(qdq_path: Path) -> int:
    onnx = require("onnx", "export")
    qdq = onnx.load(str(qdq_path))
    dq_out = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in qdq.graph.node
               if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and dq_out & set(n.input))


def _nodes(names: tuple[str, ...], known: set[str]) -> tuple[str, ...]:
    """Only nodes of the pre-processed float graph can be excluded (ORT's Q/DQ nodes cannot)."""
    return tuple(n for n in names if n in known)


def _tensor_shapes(proto: Any) -> dict[str, tuple[int | None, ...]]:
    out = {}
    for vi in list(proto.graph.value_info) + list(proto.graph.output) + list(proto.graph.input):
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return out


def _weight_axis(qdq: Any, weight: str, ndim: int) -> int:
    """The output-channel axis of a weight: 0 for Conv kernels and transposed Gemm, else the last."""
    if ndim != 2:
        return 0
    for n in qdq.graph.node:
        if n.op_type == "Gemm" and any(i.startswith(weight) for i in n.input[1:2]):
            return 0 if any(a.name == "transB" and a.i == 1 for a in n.attribute) else 1
    return 1


def _channel_sqnr(reference: list[np.ndarray], candidate: list[np.ndarray], shape: tuple[int | None, ...] | None,
                  *, axis: int, batched: bool = True) -> float:
    """SQNR in dB of the noise-to-signal power averaged over the channels along ``axis``.

    ``collect_activations`` returns flattened batches; ``shape`` (batch axis unknown) restores
    them. Without a usable shape the whole tensor counts as one channel.
    """
    ref = np.concatenate([np.asarray(r, dtype=np.float64).ravel() for r in reference])
    cand = np.concatenate([np.asarray(c, dtype=np.float64).ravel() for c in candidate])
    if shape and len(shape) > axis and all(d for d in shape[1 if batched else 0:]):
        rest = shape[1:] if batched else shape
        if ref.size % int(np.prod(rest)) == 0:
            full = ((-1,) + tuple(rest)) if batched else tuple(shape)
            ref, cand = ref.reshape(full), cand.reshape(full)
            ref, cand = np.moveaxis(ref, axis, 0), np.moveaxis(cand, axis, 0)
    ref, cand = ref.reshape(len(ref) if ref.ndim > 1 else 1, -1), cand.reshape(len(cand) if cand.ndim > 1 else 1, -1)
    signal = np.sum(ref * ref, axis=1)
    noise = np.sum((ref - cand) ** 2, axis=1)
    # Channels 10^4 times quieter (in amplitude) than the loudest say nothing; an all-zero tensor
    # quantizes exactly.
    live = signal > 1e-8 * max(float(signal.max()), _EPS)
    if not live.any():
        return math.inf
    # The mean relative noise power over channels, not the mean of per-channel dB: one crushed
    # channel (ratio 1) must show even when the others are exact (ratio 0, +inf dB).
    ratio = float(np.mean(noise[live] / signal[live]))
    return math.inf if ratio <= 0 else -10.0 * math.log10(ratio)


# --------------------------------------------------------------------------------- the timing


def time_models(models: dict[str, Path], *, card: ModelCard, images: np.ndarray, runs: int = 30,
                threads: int = 1) -> dict[str, float]:
    """Median batch-1 latency (ms) of each model with the same onnxruntime session options.

    A fixed-batch model runs at its own batch size.

    The models run round-robin, one call each per round, so a load change on a shared machine
    hits all of them alike.
    """
    from edgecnn.runtime.session import create_session

    # The runtime's own session options (all graph optimizations, one sequential inter-op thread).
    sessions = {k: create_session(p, provider="cpu", threads=threads)[0] for k, p in models.items()}
    batch = next(iter(sessions.values())).get_inputs()[0].shape[0]
    x = normalize_batch(np.repeat(images[:1], batch if isinstance(batch, int) and batch > 1 else 1, axis=0), card)
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(runs + 3):  # 3 warm-up rounds
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {card.input_name: x})
            if r >= 3:
                times[k].append(1000 * (time.perf_counter() - t))
    return {k: round(statistics.median(v), 4) for k, v in times.items()}


# ------------------------------------------------------------------------- the export's use of it


def accuracy_aware_for_export(fp32_path: Path, out_path: Path, *, card: ModelCard, quant: QuantizeConfig,
                              calibration_images: np.ndarray, test_images: np.ndarray,
                              test_labels: np.ndarray | None, fp32_outputs: list[np.ndarray],
                              fp32_accuracy: float | None, max_drop_pp: float) -> AccuracyAwareResult:
    """The search with the export guard's own metric: accuracy with labels, else the task metric
    against fp32 (top-1 agreement for classifiers, output cosine similarity for raw models), as a
    point estimate; the export's guard then judges the chosen file with its interval.
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
                                       calibration_images=calibration_images, evaluate=evaluate,
                                       baseline=fp32_accuracy if labelled else 1.0, config=config)
    except EdgecnnError:
        raise
    except Exception as err:  # onnxruntime.quantization raises whatever its passes raise
        raise ArtifactError(f"onnxruntime could not quantize the model to int8 ({ort_error(err)}).") from err


def guard_hints(quant: QuantizeConfig, *, accuracy_aware: bool, int8_failed: bool, task: str = "classify") -> str:
    """What to try after a variant failed the accuracy guard, naming the flags that could help.

    ``--accuracy-aware`` when a static int8 failed without it; the calibration methods not tried;
    ``--cpu-target vnni`` (full 8-bit weights) when the avx2 target's 7-bit weights were used; the
    budget a raw model is held to is ``--min-sqnr`` besides ``--max-accuracy-drop``.
    """
    hints = []
    if int8_failed and not accuracy_aware:
        hints.append("--accuracy-aware (keeps the nodes that quantize worst in float)")
    others = [m for m in ("entropy", "percentile", "minmax") if m != quant.calibration_method]
    hints.append(f"--calibration-method {' or '.join(others)} (used: {quant.calibration_method})")
    if quant.reduce_range:
        hints.append("--cpu-target vnni or arm64 when the target CPU has VNNI or ARM dot-product (8-bit weights "
                     "instead of avx2's 7-bit)")
    budget = "lower --min-sqnr or raise --max-accuracy-drop" if task == "raw" else "raise --max-accuracy-drop"
    hints += ["more --calibration-samples", "--exclude-node for sensitive layers", f"or {budget}"]
    return "Try " + ", ".join(hints) + "."


def markdown_lines(summary: dict[str, Any]) -> list[str]:
    """Report lines for one variant's ``accuracy_aware`` summary (:meth:`AccuracyAwareResult.to_dict`)."""
    name, nodes = summary["metric_name"], summary["nodes_kept_float"]
    lat = summary.get("latency_ms") or {}
    lines = [f"- {name}: fp32 {100 * summary['baseline']:.2f}%, plain int8 {100 * summary['plain_metric']:.2f}%, "
             f"accuracy-aware int8 {100 * summary['metric']:.2f}% (needs >= {100 * summary['required']:.2f}%; "
             f"{'met' if summary['passed'] else 'NOT met'}) after {summary['retries']} retries",
             f"- nodes kept in float: {len(nodes)} of {summary['quantized_nodes']} quantized"
             + (f": {', '.join(f'`{n}`' for n in nodes)}" if nodes else ""),
             f"- size: fp32 {summary['fp32_size_bytes'] / 1024:.1f} KiB, plain int8 "
             f"{summary['plain_size_bytes'] / 1024:.1f} KiB, accuracy-aware int8 "
             f"{summary['size_bytes'] / 1024:.1f} KiB (before the card is embedded)"]
    if lat:
        lines.append("- batch-1 latency (median, same session options): "
                     + ", ".join(f"{k} {v:.3f} ms" for k, v in lat.items()))
    return lines
