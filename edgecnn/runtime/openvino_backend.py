"""OpenVINO as a second backend of the runtime core (the ``[openvino]`` extra).

:class:`OpenVinoSession` reads the same ``.onnx`` file (fp32 or int8 QDQ) with OpenVINO and
offers the part of onnxruntime's ``InferenceSession`` interface the core uses (inputs, outputs,
the file's metadata, ``run``), so the card, the image loader, batching and the task heads are
the same whichever backend runs the graph. OpenVINO keeps an ONNX file's ``metadata_props`` in
its ``rt_info["framework"]``: the edgecnn card travels unchanged.

A device or an inference precision that is not there is an error, never a silent substitute:
OpenVINO falls back from ``bf16`` to ``f32`` on CPUs without bf16 support, and that fallback is
checked after compiling.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn._optional import require
from edgecnn.errors import ArtifactError, ProviderError
from edgecnn.runtime.pixels import PixelMapping
from edgecnn.runtime.session import ModelMeta, TensorArg

__all__ = ["OpenVinoSession", "OV_PRECISIONS", "OV_DEVICES"]

OV_PRECISIONS = ("f32", "bf16")
OV_DEVICES = ("CPU", "GPU", "NPU")
_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "f64": "tensor(double)", "u8": "tensor(uint8)",
          "i64": "tensor(int64)", "i32": "tensor(int32)"}


class OpenVinoSession:
    """An ONNX file compiled by OpenVINO for ``device``, behind the core's session interface.

    Args:
        model: the ``.onnx`` path.
        device: ``CPU``, ``GPU``, ``NPU`` (or ``GPU.1`` ...), as OpenVINO names them.
        threads: inference threads (None: OpenVINO's choice).
        precision: ``f32`` (the default: results match onnxruntime's) or ``bf16`` execution (OpenVINO's
            own default on CPUs with bf16, a variant to choose: faster, less exact).

    Raises:
        MissingDependencyError: without the ``[openvino]`` extra.
        ProviderError: for a device OpenVINO does not see here, or a precision it would not honour.
        ArtifactError: for a file OpenVINO cannot read or compile.
    """

    def __init__(self, model: str | Path, *, device: str = "CPU", threads: int | None = None,
                 precision: str | None = None) -> None:
        ov = require("openvino", "openvino")
        if isinstance(model, (bytes, bytearray)):
            raise ArtifactError("The OpenVINO backend reads .onnx files; write the model to a file first.")
        if precision is not None and precision not in OV_PRECISIONS:
            raise ProviderError(f"OpenVINO precision must be one of {', '.join(OV_PRECISIONS)}; got {precision!r}.")
        core = ov.Core()
        available = list(core.available_devices)
        if not any(d == device or d.split(".")[0] == device for d in available):
            raise ProviderError(f"OpenVINO has no {device} device here (it sees {', '.join(available) or 'none'}); "
                                "pass --device CPU, or --backend onnxruntime.")
        self._config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        precision = precision or "f32"
        self._config["INFERENCE_PRECISION_HINT"] = precision
        self._core, self._name = core, Path(model).name
        try:
            self._model = core.read_model(str(model))
        except Exception as err:  # OpenVINO raises RuntimeError for unreadable graphs
            raise ArtifactError(f"OpenVINO cannot load {Path(model).name} ({' '.join(str(err).split())[:300]}).") \
                from err
        self.device, self.precision = device, precision
        self._compiled: Any = None  # compiled on first use (compile()): a pixel session may replace it unused
        self._lock = threading.Lock()
        try:
            framework = self._model.get_rt_info()["framework"]
            meta = {str(k): v.astype(str) if hasattr(v, "astype") else str(v) for k, v in dict(framework).items()}
        except (KeyError, TypeError, RuntimeError):
            meta = {}
        self._meta = ModelMeta(meta)
        self._inputs = [self._arg(p) for p in self._model.inputs]
        self._outputs = [self._arg(p) for p in self._model.outputs]

    def compile(self) -> None:
        """Compile for the device (once), and check it honours the precision.

        Raises:
            ArtifactError: for a graph OpenVINO cannot compile.
            ProviderError: when the device would run another precision than asked.
        """
        if self._compiled is not None:
            return
        try:
            compiled = self._core.compile_model(self._model, self.device, self._config)
        except Exception as err:  # OpenVINO raises RuntimeError for unsupported graphs
            raise ArtifactError(f"OpenVINO cannot load {self._name} ({' '.join(str(err).split())[:300]}).") from err
        hint = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()  # "<type: 'float32'>"
        got = next((short for long, short in (("bfloat16", "bf16"), ("float32", "f32"), ("float16", "f16"))
                    if long in hint), hint)
        if self.precision != got:
            raise ProviderError(f"OpenVINO on {self.device} runs this model in {got}, not {self.precision}: the device "
                                f"lacks {self.precision} support; pass --precision f32.")
        self._request = compiled.create_infer_request()
        self._ports = list(compiled.outputs)
        self._compiled = compiled

    def pixel_session(self, mapping: PixelMapping) -> OpenVinoSession | None:
        """This model compiled with the pixel mapping in OpenVINO's ``PrePostProcessor``: uint8
        NHWC pixels in (convert, channel order, mean, scale and layout inside the compiled model),
        the same outputs. None when the input is not a 4-D float one."""
        import openvino as ov
        from openvino.preprocess import ColorFormat, PrePostProcessor

        if len(self._model.inputs) != 1 or self._model.input(0).get_element_type() != ov.Type.f32 \
                or self._model.input(0).get_partial_shape().rank.get_length() != 4:
            return None
        model = self._model.clone()
        ppp = PrePostProcessor(model)
        h, w = mapping.input_size
        tensor = ppp.input().tensor()
        tensor.set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
        tensor.set_shape(ov.PartialShape([model.input(0).get_partial_shape()[0], h, w, mapping.channels]))
        steps = ppp.input().preprocess()
        if mapping.reverse:
            tensor.set_color_format(ColorFormat.RGB)
            steps.convert_color(ColorFormat.BGR)
        steps.convert_element_type(ov.Type.f32)
        if any(mapping.mean):
            steps.mean(list(mapping.mean))
        steps.scale([1.0 / v for v in mapping.inv_std])
        ppp.input().model().set_layout(ov.Layout("NCHW" if mapping.layout == "nchw" else "NHWC"))
        pixels = object.__new__(OpenVinoSession)
        pixels.__dict__.update(self.__dict__)
        pixels._model, pixels._compiled, pixels._lock = ppp.build(), None, threading.Lock()
        pixels.compile()
        return pixels

    @staticmethod
    def _arg(port: Any) -> TensorArg:
        shape = [d.get_length() if d.is_static else f"d{i}" for i, d in enumerate(port.get_partial_shape())]
        return TensorArg(port.get_any_name(), shape,
                         _TYPES.get(port.get_element_type().get_type_name(), "tensor(float)"))

    def get_inputs(self) -> list[TensorArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[TensorArg]:
        return list(self._outputs)

    def get_modelmeta(self) -> ModelMeta:
        return self._meta

    def get_providers(self) -> list[str]:
        return [f"OpenVINO:{self.device}"]

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in graph order (or ``output_names``' order), as numpy arrays that own their memory."""
        (x,) = feed.values()
        values = self.run_array(x)
        if output_names is None:
            return values
        index = {o.name: i for i, o in enumerate(self._outputs)}
        return [values[index[n]] for n in output_names]

    def run_array(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output, in graph order, for the one input ``x`` (the core's per-call path): the
        input shared with the request, no copy; each output copied once, out of the request's
        buffers, which the next call overwrites."""
        if self._compiled is None:
            with self._lock:
                self.compile()  # once: a second caller finds it compiled
        with self._lock:  # one infer request: calls are serialized, as onnxruntime's are per session
            result = self._request.infer({0: x}, share_inputs=True, share_outputs=True)
            # By position: compiling may rename an output port (a Cast fused into it keeps the
            # Cast's input name, as in an fp16 file with float32 outputs).
            return [np.array(result[port], copy=True) for port in self._ports]
