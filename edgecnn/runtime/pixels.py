"""The card's pixel mapping, run inside the backend: uint8 pixels in, no numpy preprocessing per call.

Every edgecnn model takes ``(pixel - mean) / std`` per channel, in ``channel_order`` and
``layout`` (:func:`~edgecnn.runtime.preprocess.normalize_batch`). That is four numpy passes over
the batch per call (cast, subtract, multiply, transpose), 0.5 ms for one 224x224 image: on a
1.5 ms model a third of the call. Each backend can run it instead, on uint8 NHWC pixels:

- onnxruntime: :func:`fold_onnx` prepends the mapping to the graph with standard ONNX ops
  (``Gather`` for the channel order, ``Transpose``, ``Cast``, ``Sub``, ``Mul``), the same float32
  arithmetic as the numpy path, so the model input is bit for bit what numpy computes;
- OpenVINO: its ``PrePostProcessor`` (:meth:`edgecnn.runtime.backends.openvino.OpenVinoSession.pixel_session`);
- LiteRT: a 256-entry table per channel (:func:`lookup_table`): pixel -> the model's input value,
  quantized into an int8 input's own scale and zero point where the file takes int8.

:class:`PixelMapping` is the one description of the mapping the three share.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.card import ModelCard
from edgecnn.runtime.preprocess import normalization_constants

log = logging.getLogger(__name__)

__all__ = ["PixelMapping", "fold_onnx", "lookup_table", "PIXELS_INPUT", "FreshNames"]

PIXELS_INPUT = "pixels"  # the name of a folded graph's uint8 input (made unique in the graph)
_MAX_FOLD_BYTES = 1 << 30  # protobuf serializes at most 2 GiB; CNNs are far below, leave such files alone


@dataclass(frozen=True)
class PixelMapping:
    """uint8 RGB (or gray) NHWC pixels at the input size -> the model input, as the card says.

    ``mean`` and ``inv_std`` are float32, in the model's channel order, exactly the constants
    :func:`~edgecnn.runtime.preprocess.normalize_batch` uses.
    """

    channels: int
    reverse: bool  # RGB pixels -> BGR model channels
    mean: tuple[float, ...]
    inv_std: tuple[float, ...]
    layout: str  # the model input's: nhwc or nchw
    input_size: tuple[int, int]

    @classmethod
    def of(cls, card: ModelCard) -> PixelMapping:
        mean, inv = normalization_constants(card)
        return cls(channels=card.channels, reverse=card.channels == 3 and card.channel_order == "BGR",
                   mean=tuple(float(v) for v in mean), inv_std=tuple(float(v) for v in inv), layout=card.layout,
                   input_size=card.input_size)


def lookup_table(mapping: PixelMapping, *, dtype: Any = np.float32,
                 quantization: tuple[float, int] | None = None) -> np.ndarray:
    """(256, C) table: pixel value -> the model input value of each channel (in model channel order).

    With ``quantization`` = (scale, zero point) of an int8/uint8 input, the value is the
    quantized one, ``clip(round(x / scale) + zero)``, as the TFLite converter's own Quantize
    op computes it; the float values are the numpy path's float32 ones exactly.
    """
    px = np.arange(256, dtype=np.float32)[:, None]
    x = (px - np.asarray(mapping.mean, dtype=np.float32)) * np.asarray(mapping.inv_std, dtype=np.float32)
    if quantization is None:
        return np.ascontiguousarray(x.astype(dtype))
    scale, zero = quantization
    info = np.iinfo(dtype)
    q = np.rint(x.astype(np.float64) / float(scale)) + int(zero)
    return np.ascontiguousarray(np.clip(q, info.min, info.max).astype(dtype))


def fold_onnx(model: str | Path | bytes, card: ModelCard, input_name: str) -> bytes | None:
    """The ONNX model with ``mapping`` prepended: its input becomes uint8 NHWC pixels.

    Returns None (and logs why at debug level) where the file cannot carry it: no ``onnx``
    package, external weight files, a non-float or not 4-D input, more than 1 GiB.
    """
    loaded = _load_foldable(model, input_name)
    if loaded is None:
        return None
    from onnx import TensorProto, helper

    proto, inp = loaded
    graph = proto.graph
    dims = inp.type.tensor_type.shape.dim
    m = PixelMapping.of(card)
    h, w = m.input_size
    fresh = FreshNames({n for node in graph.node for n in (*node.input, *node.output)}
                        | {i.name for i in graph.input} | {t.name for t in graph.initializer})
    pixels = fresh(PIXELS_INPUT)
    batch = dims[0].dim_value if dims[0].HasField("dim_value") and dims[0].dim_value > 0 else (dims[0].dim_param or "N")
    nodes, inits = _mapping_nodes(m, pixels, fresh, half=inp.type.tensor_type.elem_type == TensorProto.FLOAT16)
    nodes[-1].output[0] = input_name  # the last node produces what the graph took as its input
    new_input = helper.make_tensor_value_info(pixels, TensorProto.UINT8, [batch, h, w, m.channels])
    index = list(graph.input).index(inp)
    graph.input.remove(inp)
    graph.input.insert(index, new_input)
    graph.initializer.extend(inits)
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)
    return proto.SerializeToString()


def _load_foldable(model: str | Path | bytes, input_name: str) -> tuple[Any, Any] | None:
    """The ONNX model and its input ``input_name``, or None where the mapping cannot be folded in."""
    try:
        import onnx
        from onnx import TensorProto
    except ImportError:
        log.debug("onnx is not installed: preprocessing runs in numpy")
        return None
    try:
        if isinstance(model, (bytes, bytearray)):
            if len(model) > _MAX_FOLD_BYTES:
                return None
            proto = onnx.load_from_string(bytes(model))
        else:
            if Path(model).stat().st_size > _MAX_FOLD_BYTES:
                return None
            proto = onnx.load(str(model), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - the session already read it; no fold is the safe answer
        log.debug("cannot fold preprocessing into %s: %s", model if not isinstance(model, bytes) else "bytes", err)
        return None
    graph = proto.graph
    if any(t.data_location == TensorProto.EXTERNAL for t in graph.initializer):
        return None
    inputs = [i for i in graph.input if i.name == input_name]
    if len(inputs) != 1:
        return None
    inp = inputs[0]
    elem = inp.type.tensor_type.elem_type
    dims = inp.type.tensor_type.shape.dim
    if elem not in (TensorProto.FLOAT, TensorProto.FLOAT16) or len(dims) != 4:
        return None
    if not any(o.domain in ("", "ai.onnx") and o.version >= 7 for o in proto.opset_import):
        return None  # Cast's `to` was a string before opset 6: leave such old files alone
    return proto, inp


class FreshNames:
    """Names not yet in the graph: ``base``, else ``base_1``, ``base_2``, ... (each taken when given;
    export's self-contained files name their nodes with it too)."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken

    def __call__(self, base: str) -> str:
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


def _mapping_nodes(m: PixelMapping, pixels: str, fresh: FreshNames, *, half: bool) -> tuple[list[Any], list[Any]]:
    """The nodes (the last one's output still to be renamed to the model input) and initializers
    that map the uint8 ``pixels`` input to the model input, float16 when ``half``."""
    from onnx import TensorProto, helper, numpy_helper

    h, w = m.input_size
    # onnxruntime broadcasts a (1, 1, 1, C) constant element by element (0.8 ms for one 224x224
    # image, slower than numpy); a scalar, a (1, C, 1, 1) one or a whole (1, H, W, C) one runs at
    # memory speed. Equal channels get scalars, an NCHW model gets the pixels transposed first (a
    # quarter of the bytes of a float transpose) and (1, C, 1, 1) constants, an NHWC model whole
    # images of constants (a transpose pair would be pushed through the arithmetic and cancelled
    # by onnxruntime's optimizer, back to the slow broadcast).
    uniform = len(set(m.mean)) == 1 and len(set(m.inv_std)) == 1
    nodes: list[Any] = []
    inits: list[Any] = []
    x = pixels

    def node(op: str, inputs: list[str], base: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [fresh(base)], **attrs))
        return nodes[-1].output[0]

    def const(values: tuple[float, ...], base: str) -> str:
        name = fresh(base)
        arr = np.asarray(values, dtype=np.float32)
        if uniform:
            arr = arr[0]
        elif m.layout == "nchw":
            arr = arr.reshape(1, m.channels, 1, 1)
        else:
            arr = np.ascontiguousarray(np.broadcast_to(arr, (1, h, w, m.channels)))
        inits.append(numpy_helper.from_array(arr, name))
        return name

    if m.reverse:
        order = fresh("edgecnn_bgr_order")
        inits.append(numpy_helper.from_array(np.asarray([2, 1, 0], dtype=np.int64), order))
        x = node("Gather", [x, order], "edgecnn_bgr", axis=3)
    if m.layout == "nchw":
        x = node("Transpose", [x], "edgecnn_nchw", perm=[0, 3, 1, 2])
    x = node("Cast", [x], "edgecnn_float", to=TensorProto.FLOAT)
    if any(m.mean):  # x - 0 is x: skipping it changes no bit
        x = node("Sub", [x, const(m.mean, "edgecnn_mean")], "edgecnn_centred")
    x = node("Mul", [x, const(m.inv_std, "edgecnn_inv_std")], "edgecnn_normalized")
    if half:  # numpy's path casts the float32 result the same way
        x = node("Cast", [x], "edgecnn_half", to=TensorProto.FLOAT16)
    return nodes, inits
