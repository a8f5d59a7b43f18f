"""Upstream workarounds for tf2onnx, kept in one place so each can go when upstream is fixed.

1. ``tf2onnx.convert.from_keras`` does not work with Keras 3 (``AttributeError: _get_save_spec``
   or ``KeyError: 'keras_tensor_N'``): https://github.com/onnx/tensorflow-onnx/issues/2329 and
   https://github.com/onnx/tensorflow-onnx/issues/2448. We trace ``model(x, training=False)`` in a
   ``tf.function`` with an explicit input signature and convert that with ``from_function``.
   Remove once a tf2onnx release lists Keras 3 support and ``from_keras`` passes our tests.
2. tf2onnx names graph outputs after the traced TensorFlow tensors (``Identity:0``), and an
   unconvertible op is only *logged* (``Tensorflow op [...] is not supported``) while the TF node
   stays in the graph. We rename the output and turn those log records into an error that names
   the op. Keep this for as long as tf2onnx exposes no ``unsupported_ops`` result.
3. ``tf2onnx.convert.from_tflite`` reads the flatbuffer with ``tf.lite.Interpreter``, which warns on
   every use that it is deprecated in favour of ``ai_edge_litert`` (TensorFlow >= 2.18); the
   warning is about tf2onnx's code, not the user's model, so it is silenced for that call.
   Remove once tf2onnx uses ``ai_edge_litert`` (tf2onnx 1.17 does not).
4. TensorFlow computes the exact GELU (``keras.activations.gelu``, ``tf.nn.gelu``) with ``Erfc`` since
   tensorflow/tensorflow@456e264, and tf2onnx 1.17 has no handler for it ("Tensorflow op Erfc is not
   supported"; https://github.com/onnx/tensorflow-onnx/issues/2347, fix proposed in
   https://github.com/onnx/tensorflow-onnx/pull/2463). We register one: ``erfc(x) = 1 - erf(x)``
   (ONNX ``Erf``, opset 9+). Remove once a tf2onnx release converts ``Erfc`` itself.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Callable
from typing import Any

from edgecnn._optional import require
from edgecnn.errors import ArtifactError

__all__ = ["keras_to_onnx", "function_to_onnx", "tflite_to_onnx"]

log = logging.getLogger(__name__)

_UNSUPPORTED = re.compile(r"Tensorflow op \[(?P<node>[^:\]]+): (?P<op>[^\]]+)\] is not supported")


class _UnsupportedOpCollector(logging.Handler):
    """Collects tf2onnx's "op is not supported" log records during one conversion."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.ops: dict[str, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = _UNSUPPORTED.search(record.getMessage())
        if match:
            self.ops.setdefault(match["op"], []).append(match["node"])


def keras_to_onnx(
    model: Any,
    *,
    input_shape: tuple[int, ...],
    input_name: str,
    output_name: str,
    opset: int,
    nchw: bool = False,
) -> Any:
    """Convert a single-input Keras 3 model to an ``onnx.ModelProto``.

    Args:
        model: a ``keras.Model`` taking float32 images (NHWC unless its input says otherwise).
        input_shape: the input shape without the batch axis (left dynamic), e.g. (height, width, channels).
        input_name: name of the ONNX graph input.
        output_name: name given to the ONNX graph output (``<name>_<i>`` for each of several outputs).
        opset: ONNX opset to target.
        nchw: transpose an NHWC input to NCHW (tf2onnx ``inputs_as_nchw``).

    Raises:
        ArtifactError: if an op cannot be converted (named in the message) or conversion fails.
    """
    n_out = len(getattr(model, "outputs", None) or [None])
    names = [output_name] if n_out == 1 else [f"{output_name}_{i}" for i in range(n_out)]
    return function_to_onnx(lambda x: model(x, training=False), input_shape=input_shape, input_name=input_name,
                            output_names=names, opset=opset, nchw=nchw)


def function_to_onnx(
    fn: Callable[[Any], Any],
    *,
    input_shape: tuple[int, ...],
    input_name: str,
    output_names: list[str],
    opset: int,
    nchw: bool = False,
) -> Any:
    """Trace ``fn`` (one float32 batch in, a tensor or a list of tensors out) and convert it.

    The graph outputs get ``output_names`` in order. Used for Keras models and SavedModel
    signatures alike.

    Raises:
        ArtifactError: if an op cannot be converted (named in the message) or conversion fails.
    """
    tf = require("tensorflow", "train")
    tf2onnx = require("tf2onnx", "export")
    _register_erfc()
    spec = (tf.TensorSpec((None, *input_shape), tf.float32, name=input_name),)
    with _collect_unsupported() as collector:
        try:
            proto, _ = tf2onnx.convert.from_function(
                tf.function(fn), input_signature=spec, opset=opset,
                inputs_as_nchw=[input_name] if nchw else None,
            )
        except Exception as err:  # tf2onnx raises bare ValueError/KeyError/RuntimeError from deep inside
            if collector.ops:
                raise ArtifactError(_unsupported_message(collector.ops)) from err
            raise ArtifactError(f"tf2onnx could not convert the model ({type(err).__name__}: {err}).") from err
    if collector.ops:
        raise ArtifactError(_unsupported_message(collector.ops))
    if len(proto.graph.input) != 1 or len(proto.graph.output) != len(output_names):
        raise ArtifactError(
            f"Expected one input and {len(output_names)} outputs, got {len(proto.graph.input)} and "
            f"{len(proto.graph.output)}; edgecnn exports single-input image models."
        )
    for out, new in zip(list(proto.graph.output), output_names):
        _rename_output(proto, out.name, new)
    return proto


def tflite_to_onnx(path: str, *, opset: int, nchw_input: str | None = None) -> Any:
    """Convert a float ``.tflite`` file with ``tf2onnx.convert.from_tflite``.

    Raises:
        ArtifactError: if an op cannot be converted (named in the message) or the file is unusable.
    """
    tf2onnx = require("tf2onnx", "export")
    with _collect_unsupported() as collector, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated", category=UserWarning)
        try:
            proto, _ = tf2onnx.convert.from_tflite(path, opset=opset,
                                                   inputs_as_nchw=[nchw_input] if nchw_input else None)
        except Exception as err:  # flatbuffer decoding and conversion errors
            if collector.ops:
                raise ArtifactError(_unsupported_message(collector.ops)) from err
            raise ArtifactError(f"tf2onnx could not convert {path} ({type(err).__name__}: {str(err)[:200]}).") from err
    if collector.ops:
        raise ArtifactError(_unsupported_message(collector.ops))
    return proto


_ERFC_REGISTERED = False


def _register_erfc() -> None:
    """Workaround 4: a tf2onnx handler for ``Erfc`` (the exact GELU's), as ``1 - Erf(x)``."""
    global _ERFC_REGISTERED
    if _ERFC_REGISTERED:
        return
    import numpy as np
    import tf2onnx.onnx_opset  # noqa: F401  (registers tf2onnx's own handlers)
    from tf2onnx import constants, utils
    from tf2onnx.handler import tf_op

    if any("Erfc" in ops for ops in tf_op.get_opsets().get(constants.ONNX_DOMAIN, [])):  # upstream has it now
        _ERFC_REGISTERED = True
        return

    @tf_op("Erfc")
    class _Erfc:
        @classmethod
        def version_9(cls, ctx: Any, node: Any, **kwargs: Any) -> None:
            node.type = "Erf"  # the node now computes erf(x); a Sub(1, .) takes over its consumers
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.output[0]))
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
            ctx.insert_new_node_on_output("Sub", node.output[0], name=utils.make_name(f"{node.name}_erfc"),
                                          inputs=[one.output[0], node.output[0]])

    _ERFC_REGISTERED = True


@contextlib.contextmanager
def _collect_unsupported():
    collector = _UnsupportedOpCollector()
    tf2onnx_logger = logging.getLogger("tf2onnx")
    tf2onnx_logger.addHandler(collector)
    level = tf2onnx_logger.level
    if not log.isEnabledFor(logging.DEBUG):
        tf2onnx_logger.setLevel(logging.WARNING)  # its per-pass INFO lines mean nothing to users
    try:
        yield collector
    finally:
        tf2onnx_logger.removeHandler(collector)
        tf2onnx_logger.setLevel(level)


def _unsupported_message(ops: dict[str, list[str]]) -> str:
    parts = [f"{op} (at {', '.join(nodes[:3])})" for op, nodes in sorted(ops.items())]
    if all(op.startswith("TFL_") for op in ops):  # a .tflite's custom op (MediaPipe's, for one)
        return ("tf2onnx cannot convert TFLite op " + "; ".join(parts) + ": the .tflite cannot become ONNX, but "
                "edgecnn runs it as it is (predict, bench, tune and serve take the .tflite), or cut the graph "
                "before that op in the model's own tool.")
    return ("tf2onnx cannot convert TensorFlow op " + "; ".join(parts)
            + ": replace the layer that uses it with supported ops, or add a custom op handler.")


def _rename_output(proto: Any, old: str, new: str) -> None:
    """Rename a graph output everywhere it is produced or consumed."""
    if old == new:
        return
    for node in proto.graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    for out in proto.graph.output:
        if out.name == old:
            out.name = new
