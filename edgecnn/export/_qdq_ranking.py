"""Which quantized tensors hurt most: the ranking behind accuracy-aware int8
(:mod:`edgecnn.export.accuracy_aware`), by graph surgery on the float and QDQ models.

Every quantized tensor is ranked by its quantization error on a few calibration images, with
onnxruntime's QDQ debugging helpers (``onnxruntime.quantization.qdq_loss_debug``): the
activations of the QDQ model before and after each QuantizeLinear/DequantizeLinear pair, and the
weights before and after quantization. The error is the signal-to-quantization-noise ratio (SQNR,
dB) from the noise-to-signal power averaged over *channels*: a whole-tensor SQNR is dominated by a
loud outlier channel and calls a tensor whose quiet channels were zeroed "fine". The worst are then
re-ordered by the model's output error with that tensor alone quantized (the float graph with one
Q/DQ pair spliced in, or one weight dequantized). Each ranked tensor maps to the nodes that make
ORT quantize it (its producer and the consumers of its DequantizeLinear output; for a weight, the
node using it): those are the nodes that must stay float for the tensor to stay float.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn._optional import require
from edgecnn.card import ModelCard
from edgecnn.export.quantize import pre_process_for_quantization
from edgecnn.runtime.preprocess import normalize_batch

__all__ = ["QuantError", "rank_quantization_errors", "quantized_node_count"]

_EPS = 1e-12


@dataclass(frozen=True, kw_only=True)
class QuantError:
    """One quantized tensor, how badly quantization represents it, and the nodes that quantize it."""

    tensor: str
    kind: str  # "activation" or "weight"
    sqnr_db: float  # channel-averaged signal-to-quantization-noise ratio; lower is worse
    nodes: tuple[str, ...]  # keeping these in float keeps the tensor in float
    output_error: float | None = None  # relative output error vs fp32 with only this tensor quantized


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
    with tempfile.TemporaryDirectory(prefix="edgecnn-rank-") as tmp_name:
        tmp = Path(tmp_name)
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
        ranked = [QuantError(tensor=t, kind="activation",
                             sqnr_db=_channel_sqnr([fused.get(t, _identity)(a) for a in m["pre_qdq"]],
                                                   m["post_qdq"], shapes.get(t), axis=1),
                             nodes=_nodes(users[t], float_node_names))
                  for t, m in matching.items() if t in users and m.get("pre_qdq") and m.get("post_qdq")]
        weights = dbg.create_weight_matching(str(pre), str(qdq_path))
        for name, w in weights.items():
            if name in users and w["float"].ndim >= 2:  # biases (1-D, int32 at in*w scale) are exact enough
                axis = _weight_axis(qdq, name, w["float"].ndim)
                sqnr = _channel_sqnr([w["float"]], [w["dequantized"]], w["float"].shape, axis=axis, batched=False)
                ranked.append(QuantError(tensor=name, kind="weight", sqnr_db=sqnr,
                                         nodes=_nodes(users[name], float_node_names)))
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


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


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
            out[n.output[0]] = _relu
            continue
        attrs = {a.name: a.f for a in n.attribute}
        lo = inits[n.input[1]] if len(n.input) > 1 and n.input[1] in inits else attrs.get("min", -np.inf)
        hi = inits[n.input[2]] if len(n.input) > 2 and n.input[2] in inits else attrs.get("max", np.inf)
        def clip(x: np.ndarray, lo: float = float(lo), hi: float = float(hi)) -> np.ndarray:
            return np.clip(x, lo, hi)

        out[n.output[0]] = clip
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


def quantized_node_count(qdq_path: Path) -> int:
    """The nodes of a QDQ model that onnxruntime quantized: those that read a DequantizeLinear output."""
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
        rest = tuple(int(d or 0) for d in (shape[1:] if batched else shape))  # every d is known here
        if ref.size % int(np.prod(rest)) == 0:
            full = (-1, *rest) if batched else rest
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
