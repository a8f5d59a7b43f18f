"""The int8 variant from a quantization-aware-trained Keras model (edgecnn.train.qat).

tf2onnx converts the fake-quant model: each ``FakeQuantWithMinMaxVars`` becomes a uint8
``QuantizeLinear``/``DequantizeLinear`` pair, and the fake-quantized kernels become float
constants that lie on a symmetric integer grid. :func:`store_int8_weights` turns those constants
into what onnxruntime's QDQ kernels expect, the layout its own post-training quantizer writes:
int8 weights with a per-channel (or per-tensor) ``DequantizeLinear`` and int32 biases with scale
``input scale x weight scale``. onnxruntime then fuses ``DQ -> Conv/MatMul -> Q`` into its int8
kernels (QLinearConv, QLinearMatMul...), so the file runs as fast as post-training int8.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn._optional import quiet_stderr, require
from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError

log = logging.getLogger(__name__)

__all__ = ["QATModel", "qat_to_onnx", "store_int8_weights"]

# Ops between a DequantizeLinear and a convolution that keep its scale (tf2onnx's layout transposes).
_SCALE_KEEPING = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "MaxPool")


@dataclass(frozen=True)
class QATModel:
    """A fine-tuned fake-quant model to export as the int8 variant (``ExportConfig.qat``).

    ``training`` is what :func:`edgecnn.train.qat.fine_tune` returned (epochs, lr, data...): the
    card and the report record it. ``per_channel``/``weight_bits`` are the grid it trained on.
    """

    path: Path
    per_channel: bool = True
    weight_bits: int = 8
    training: dict[str, Any] = field(default_factory=dict)

    def to_onnx(self, fp32_path: Path, card: ModelCard, out_path: Path) -> Any:
        """The int8 model (converted like the fp32 file at ``fp32_path``), also saved to ``out_path``."""
        from edgecnn.export import onnx as onnx_io

        proto = qat_to_onnx(self.path, onnx_io.load_onnx(fp32_path, check=False), card, per_channel=self.per_channel,
                            weight_bits=self.weight_bits)
        onnx_io.save_onnx(proto, out_path)
        return proto

    def describe(self, quant: Any) -> dict[str, Any]:
        """The int8 settings for the report and the card (``quant``: the export's QuantizeConfig)."""
        return {"format": "QDQ", "method": "quantization-aware training", "per_channel": self.per_channel,
                "weight_type": "int8", "weight_bits": self.weight_bits, "activation_type": "uint8",
                "reduce_range": self.weight_bits < 8, "target": quant.target,
                "exclude_nodes": [], "qat": {k: v for k, v in self.training.items() if k != "config"}}


def qat_to_onnx(path: Path, fp32: Any, card: ModelCard, *, per_channel: bool, weight_bits: int) -> Any:
    """Load the QAT ``.keras`` file, convert it with tf2onnx like the fp32 model ``fp32`` (the same
    opset, layout, input and output names) and store its weights as int8.

    Raises:
        ArtifactError: for a file that cannot be loaded or converted, or weights off the int8 grid.
    """
    from edgecnn.export import onnx as onnx_io
    from edgecnn.export._tf2onnx_compat import keras_to_onnx
    from edgecnn.export.sources import load_float32_keras

    model = load_float32_keras(path)
    if len(fp32.graph.output) != 1:
        raise ArtifactError("QAT exports single-output classifiers; this model has "
                            f"{len(fp32.graph.output)} outputs.")
    h, w = card.input_size
    nchw = card.layout == "nchw"
    # After a fit, TensorFlow's C++ logging prints grappler's INFO lines during tracing (the
    # TF_CPP_MIN_LOG_LEVEL that keeps the plain export quiet no longer applies): muted like its
    # start-up lines; conversion errors still arrive as exceptions.
    with quiet_stderr():
        proto = keras_to_onnx(model, input_shape=(h, w, card.channels), input_name=fp32.graph.input[0].name,
                              output_name=fp32.graph.output[0].name, opset=onnx_io.opset_of(fp32) or 17, nchw=nchw)
    onnx_io.set_batch_axis(proto)
    onnx_io.tidy_names(proto, prefix=getattr(model, "name", ""))
    return store_int8_weights(proto, per_channel=per_channel, qmax=2 ** (weight_bits - 1) - 1)


def _producers(graph: Any) -> dict[str, Any]:
    return {o: n for n in graph.node for o in n.output}


def _input_scale(name: str, producers: dict[str, Any], inits: dict[str, Any]) -> float | None:
    """The per-tensor scale of the DequantizeLinear that ``name`` comes from (through layout ops)."""
    onnx = require("onnx", "export")
    node = producers.get(name)
    while node is not None and node.op_type in _SCALE_KEEPING:
        node = producers.get(node.input[0])
    if node is None or node.op_type != "DequantizeLinear" or node.input[1] not in inits:
        return None
    scale = onnx.numpy_helper.to_array(inits[node.input[1]])
    return float(scale) if scale.size == 1 else None


def store_int8_weights(proto: Any, *, per_channel: bool, qmax: int) -> Any:
    """Replace each float weight of a Conv/MatMul/Gemm whose input is quantized by int8 values and
    a DequantizeLinear (and a Conv/Gemm bias by int32 values), in place; returns ``proto``.

    The weights must already lie on the grid ``scale * [-qmax, qmax]`` with ``scale = max|w| / qmax``
    per output channel (per tensor without ``per_channel``): QAT computed with exactly those values,
    so storing them as integers changes nothing.

    Raises:
        ArtifactError: if no weight was quantized, or a weight is not on the grid (not a QAT model).
    """
    nh = require("onnx", "export").numpy_helper
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    producers = _producers(graph)
    store = _Dequantized(graph)
    for node in graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
            continue
        s_in = _input_scale(node.input[0], producers, inits)
        if s_in is None:
            log.info("QAT: %s has a float input; it stays float.", node.name)
            continue
        q, scale, axis = _on_int8_grid(node, nh.to_array(inits[node.input[1]]).astype(np.float64),
                                       per_channel=per_channel, qmax=qmax)
        store.replace_input(node, 1, q.astype(np.int8), scale, np.zeros(scale.shape, np.int8),
                            **({"axis": axis} if per_channel else {}))
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2] in inits:
            b = nh.to_array(inits[node.input[2]]).astype(np.float64)
            b_scale = (s_in * scale.astype(np.float64)).reshape(-1)
            b_scale = np.broadcast_to(b_scale, b.shape) if b_scale.size == 1 else b_scale
            bq = np.clip(np.round(b / b_scale), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
            store.replace_input(node, 2, bq, b_scale.astype(np.float32), np.zeros(b.shape, np.int32), axis=0)
    if not store.nodes:
        raise ArtifactError("The QAT model has no convolution or matrix product with a quantized input: nothing to "
                            "store as int8.")
    store.apply()
    return proto


def _on_int8_grid(node: Any, w: np.ndarray, *, per_channel: bool, qmax: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The integer values of weight ``w`` of ``node``, their scale (per output channel, or one) and
    the output-channel axis.

    Raises:
        ArtifactError: if ``w`` is not on the grid ``scale * [-qmax, qmax]`` (not a QAT model's weight).
    """
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and trans_b) else 1
    reduce = tuple(a for a in range(w.ndim) if a != axis) if per_channel else tuple(range(w.ndim))
    scale = np.max(np.abs(w), axis=reduce, keepdims=True) / qmax
    scale = np.where(scale > 0, scale, 1.0)
    q = np.round(w / scale)
    off = float(np.max(np.abs(q * scale - w) / scale)) if w.size else 0.0
    if off > 1e-2 or np.abs(q).max() > qmax:
        raise ArtifactError(f"The weights of {node.name} are not on the int8 grid of a QAT model (off by "
                            f"{off:.2g} steps): the QAT model was not made by edgecnn.train.qat with these "
                            "settings.")
    flat_scale = scale.reshape(-1).astype(np.float32) if per_channel else scale.reshape(()).astype(np.float32)
    return q, flat_scale, axis


class _Dequantized:
    """The integer initializers and DequantizeLinear nodes that replace float constants of ``graph``."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.uses: dict[str, int] = {}
        for n in graph.node:
            for i in n.input:
                self.uses[i] = self.uses.get(i, 0) + 1

    def replace_input(self, node: Any, k: int, values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
                      **attrs: Any) -> None:
        """Input ``k`` of ``node`` becomes ``DequantizeLinear(values, scale, zero_point)``."""
        onnx = require("onnx", "export")
        name = node.input[k]
        q = onnx.numpy_helper.from_array(values, f"{name}_quantized")
        s = onnx.numpy_helper.from_array(scale, f"{name}_scale")
        z = onnx.numpy_helper.from_array(zero_point, f"{name}_zero_point")
        self.nodes.append(onnx.helper.make_node("DequantizeLinear", [q.name, s.name, z.name], [f"{name}_dequantized"],
                                                name=f"{name}_DequantizeLinear", **attrs))
        self.inits += [q, s, z]
        self.uses[name] -= 1
        node.input[k] = f"{name}_dequantized"

    def apply(self) -> None:
        """The float constants no node reads any more go; the integer ones and their
        DequantizeLinear nodes come in, the nodes first (the graph stays topologically sorted)."""
        graph = self.graph
        keep = [i for i in graph.initializer if self.uses.get(i.name, 0) > 0]
        del graph.initializer[:]
        graph.initializer.extend(keep + self.inits)
        nodes = self.nodes + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
