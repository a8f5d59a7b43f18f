"""Keras -> ONNX conversion and the ONNX file itself: card metadata, batch axis, simplification,
atomic saving.
"""

from __future__ import annotations

import collections
import logging
import re
from pathlib import Path
from typing import Any

from edgecnn._files import atomic_write_bytes, sha256_file
from edgecnn._optional import require
from edgecnn.card import ONNX_METADATA_KEY, ModelCard
from edgecnn.errors import ArtifactError

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_OPSET", "BATCH_AXIS", "convert_keras", "embed_card", "read_card", "load_onnx",
           "save_onnx", "simplify", "op_type_counts", "sha256_file", "io_signature", "opset_of", "convert_opset",
           "feeds_softmax", "tensor_infos", "metadata", "rename_io"]

# Opset 17 is supported by every onnxruntime >= 1.14 and by Triton's onnxruntime backend of
# 2023 onwards, and has every op a CNN classifier needs; newer opsets buy nothing here.
DEFAULT_OPSET = 17
BATCH_AXIS = "batch"


def _onnx():
    return require("onnx", "export")


def convert_keras(model: Any, card: ModelCard, *, opset: int = DEFAULT_OPSET, layout: str = "nhwc") -> Any:
    """Convert a Keras classifier to an ``onnx.ModelProto`` with the card's I/O names.

    The input is ``card.input_name`` in ``layout`` with a dynamic axis named ``batch``; the output
    is named after ``card.output_kind`` (``probabilities`` or ``logits``).

    Raises:
        ArtifactError: if the model cannot be converted (the unsupported op is named).
    """
    from edgecnn.export._tf2onnx_compat import keras_to_onnx

    if layout not in ("nhwc", "nchw"):
        raise ArtifactError(f"layout must be 'nhwc' or 'nchw', got {layout!r}.")
    h, w = card.input_size
    proto = keras_to_onnx(model, input_shape=(h, w, card.channels), input_name=card.input_name,
                          output_name=card.output_kind, opset=opset, nchw=layout == "nchw")
    set_batch_axis(proto)
    tidy_names(proto, prefix=getattr(model, "name", ""))
    return proto


_NAME_REWRITES = ((re.compile(r"/(convolution|depthwise|Cast|MatMul)/ReadVariableOp:0$"), "/kernel"),
                  (re.compile(r"/BiasAdd/ReadVariableOp:0$"), "/bias"),
                  (re.compile(r":0$"), ""))


def tidy_names(proto: Any, *, prefix: str) -> None:
    """Shorten tf2onnx's tensor and node names, keeping graph I/O names and uniqueness.

    ``seed_cnn_1/conv3_1/convolution/ReadVariableOp:0`` becomes ``conv3_1/kernel``: names stay
    derived from the (deterministic) Keras layer names, so ``--exclude-node`` lists stay readable,
    and the int8 model, which repeats each name in its Q/DQ nodes, gets a few KiB smaller.
    """
    keep = {v.name for v in [*proto.graph.input, *proto.graph.output]}
    head = re.compile(rf"^{re.escape(prefix)}(_\d+)?/") if prefix else None

    def short(name: str) -> str:
        new = head.sub("", name) if head else name
        for pattern, repl in _NAME_REWRITES:
            new = pattern.sub(repl, new)
        return new or name

    tensors = {i.name for i in proto.graph.initializer} | {o for n in proto.graph.node for o in n.output}
    mapping = _unique_renames(sorted(tensors - keep), short)
    for init in proto.graph.initializer:
        init.name = mapping.get(init.name, init.name)
    for value in proto.graph.value_info:
        value.name = mapping.get(value.name, value.name)
    node_names = _unique_renames(sorted({n.name for n in proto.graph.node if n.name}), short)
    for node in proto.graph.node:
        node.input[:] = [mapping.get(i, i) for i in node.input]
        node.output[:] = [mapping.get(o, o) for o in node.output]
        node.name = node_names.get(node.name, node.name)


def _unique_renames(names: list[str], short) -> dict[str, str]:
    """Old -> new names, leaving any name whose short form would collide unchanged."""
    proposed = {n: short(n) for n in names}
    counts = collections.Counter(proposed.values())
    taken = set(names)
    out = {}
    for old, new in proposed.items():
        if new != old and counts[new] == 1 and new not in taken:
            out[old] = new
    return out


def set_batch_axis(proto: Any, name: str = BATCH_AXIS, *, only: set[str] | None = None) -> None:
    """Name the first axis of every graph input and output ``name`` (dynamic), or of those named in ``only``."""
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and (only is None or value.name in only):
            dims[0].ClearField("dim_value")
            dims[0].dim_param = name


def dynamic_batch_names(proto: Any) -> set[str]:
    """Names of the graph inputs and outputs whose first axis is not a fixed size."""
    return {v.name for v in [*proto.graph.input, *proto.graph.output]
            if v.type.tensor_type.shape.dim
            and not (v.type.tensor_type.shape.dim[0].HasField("dim_value")
                     and v.type.tensor_type.shape.dim[0].dim_value > 0)}


def embed_card(proto: Any, card: ModelCard) -> Any:
    """Store the card as JSON in ``metadata_props[ONNX_METADATA_KEY]`` (replacing any old one)."""
    keep = [p for p in proto.metadata_props if p.key != ONNX_METADATA_KEY]
    del proto.metadata_props[:]
    for prop in keep:
        proto.metadata_props.add(key=prop.key, value=prop.value)
    proto.metadata_props.add(key=ONNX_METADATA_KEY, value=card.to_json())
    return proto


def read_card(model: str | Path | Any) -> ModelCard | None:
    """The card embedded in an ONNX file or ``ModelProto``, or None if it has none.

    Raises:
        ArtifactError: if the file is unreadable or its card is invalid.
    """
    proto = load_onnx(model, check=False) if isinstance(model, (str, Path)) else model
    for prop in proto.metadata_props:
        if prop.key == ONNX_METADATA_KEY:
            return ModelCard.from_json(prop.value)
    return None


def load_onnx(path: str | Path, *, check: bool = True) -> Any:
    """Load and (optionally) check an ONNX file.

    Raises:
        ArtifactError: if the file is missing, not ONNX, or fails ``onnx.checker``.
    """
    onnx = _onnx()
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"ONNX model {path} does not exist.")
    try:
        proto = onnx.load(str(path))
        if check:
            onnx.checker.check_model(proto)
    except Exception as err:  # protobuf DecodeError, ValidationError, OSError
        msg = " ".join(str(err).split())[:300]  # the checker's own reason, on one line
        raise ArtifactError(f"{path} is not a valid ONNX model ({type(err).__name__}: {msg}).") from err
    if not proto.graph.node:
        raise ArtifactError(f"{path} is not a valid ONNX model (empty graph).")
    return proto


def save_onnx(proto: Any, path: str | Path) -> Path:
    """Write ``proto`` atomically (:func:`edgecnn._files.atomic_write_bytes`: a temporary file in the
    same folder, then ``os.replace``), readable by all as a model is meant to be.

    An interrupted or failed save never leaves a partial ``.onnx`` at ``path``.
    """
    return atomic_write_bytes(Path(path), proto.SerializeToString())


def simplify(proto: Any) -> tuple[Any, dict[str, Any]]:
    """Simplify the graph with onnxslim (constant folding, fusion, dead-node removal).

    Returns the simplified model and a summary; the caller re-verifies it. If onnxslim fails,
    the input is returned unchanged and the summary says why: simplification is an optimization,
    and the verified unsimplified graph is a correct result.
    """
    before = len(proto.graph.node)
    dynamic = dynamic_batch_names(proto)
    try:
        onnxslim = require("onnxslim", "export")
        slim = onnxslim.slim(proto)
    except Exception as err:  # noqa: BLE001 - onnxslim raises whatever its passes raise; the graph stays as it was
        log.warning("onnxslim failed (%s: %s); keeping the unsimplified graph.", type(err).__name__, err)
        return proto, {"applied": False, "nodes_before": before, "reason": f"{type(err).__name__}: {err}"[:300]}
    if len(slim.graph.node) >= before:  # "when it helps": an unchanged graph stays tf2onnx's own
        return proto, {"applied": False, "nodes_before": before, "reason": "no fewer nodes"}
    # onnxslim keeps metadata_props and I/O names; the batch axis name is re-asserted anyway, on the
    # inputs and outputs whose batch was dynamic before: a graph fixed to batch 1 (reshapes to
    # [1, ...] inside) stays fixed, or a batch of N would come out as one merged sample.
    set_batch_axis(slim, only=dynamic)
    return slim, {"applied": True, "nodes_before": before, "nodes_after": len(slim.graph.node)}


def op_type_counts(proto: Any) -> dict[str, int]:
    """How many nodes of each op type the graph has (ORT tests' ``check_op_type_count``)."""
    return dict(sorted(collections.Counter(n.op_type for n in proto.graph.node).items()))


def io_signature(proto: Any) -> dict[str, Any]:
    """Names, shapes (None/str for dynamic axes) and element types of the graph's I/O."""
    onnx = _onnx()
    init = {i.name for i in proto.graph.initializer}

    def describe(value):
        t = value.type.tensor_type
        shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in t.shape.dim]
        return {"name": value.name, "shape": shape,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return {"inputs": [describe(v) for v in proto.graph.input if v.name not in init],
            "outputs": [describe(v) for v in proto.graph.output]}


def opset_of(proto: Any) -> int | None:
    """The default-domain (``ai.onnx``) opset a model imports."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def convert_opset(proto: Any, target: int, *, why: str) -> Any:
    """``proto`` converted to opset ``target`` by ``onnx.version_converter`` (checked afterwards).

    Raises:
        ArtifactError: naming both opsets, ``why`` the conversion was needed and the converter's
            own error, if it cannot convert the model.
    """
    onnx = _onnx()
    current = opset_of(proto)
    if current == target:
        return proto
    try:
        converted = onnx.version_converter.convert_version(proto, target)
        onnx.checker.check_model(converted)
    except Exception as err:  # the converter raises RuntimeError/ValidationError with the adapter's reason
        msg = " ".join(str(err).split())[:300]
        raise ArtifactError(f"The model has opset {current} and {why} needs opset {target}, but onnx.version_converter "
                            f"cannot convert it ({type(err).__name__}: {msg}); re-export the model at opset "
                            f"{target} or later from its framework.") from err
    log.info("Converted the model from opset %s to %s (%s).", current, target, why)
    return converted


def feeds_softmax(proto: Any) -> bool:
    """Whether the first graph output is produced by a Softmax node (probabilities, not logits)."""
    name = proto.graph.output[0].name
    producer = next((n for n in proto.graph.node if name in n.output), None)
    return producer is not None and producer.op_type == "Softmax"


def tensor_infos(proto: Any) -> tuple[list[Any], list[Any]]:
    """The graph's inputs and outputs as :class:`edgecnn.presets.TensorInfo` (for card inference)."""
    from edgecnn.presets import TensorInfo

    sig = io_signature(proto)

    def info(d: dict[str, Any]) -> TensorInfo:
        return TensorInfo(d["name"], tuple(d["shape"]), d["dtype"])

    return [info(d) for d in sig["inputs"]], [info(d) for d in sig["outputs"]]


def metadata(proto: Any) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict."""
    return {p.key: p.value for p in proto.metadata_props}


def rename_io(proto: Any, *, inputs: list[str] | None = None, outputs: list[str] | None = None) -> None:
    """Rename graph inputs and outputs (in order) everywhere they are produced or consumed."""
    pairs = list(zip([v.name for v in proto.graph.input], inputs or [])) + \
        list(zip([v.name for v in proto.graph.output], outputs or []))
    mapping = {old: new for old, new in pairs if old != new}
    if not mapping:
        return
    for node in proto.graph.node:
        node.input[:] = [mapping.get(i, i) for i in node.input]
        node.output[:] = [mapping.get(o, o) for o in node.output]
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        value.name = mapping.get(value.name, value.name)
