"""OpenVINO as a second backend of the runtime core (the ``[openvino]`` extra).

:class:`OpenVinoSession` reads the same ``.onnx`` file (fp32 or int8 QDQ) with OpenVINO behind
the session protocol (:class:`~edgecnn.runtime.backends.base.Session`), so the card, the image
loader, batching and the task heads are the same whichever backend runs the graph. OpenVINO
keeps an ONNX file's ``metadata_props`` in its ``rt_info["framework"]``: the edgecnn card travels
unchanged.

A device or an inference precision that is not there is an error, never a silent substitute:
OpenVINO falls back from ``bf16`` to ``f32`` on CPUs without bf16 support, and that fallback is
checked after compiling.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecnn._optional import require
from edgecnn.errors import ArtifactError, ConfigError, ProviderError
from edgecnn.runtime.backends.base import ModelMeta, SessionInfo, TensorArg, onnx_type
from edgecnn.runtime.options import OV_PRECISIONS
from edgecnn.runtime.pixels import PixelMapping

if TYPE_CHECKING:
    from edgecnn.card import ModelCard
    from edgecnn.runtime.options import RuntimeOptions

__all__ = ["OpenVinoSession", "check", "open_session", "pixel_session"]


def check(options: RuntimeOptions) -> None:
    """Refuse what OpenVINO cannot do here.

    Raises:
        ConfigError: for IO binding (onnxruntime's).
        ProviderError: for an onnxruntime execution provider or CUDA options.
    """
    if options.io_binding:
        raise ConfigError("IO binding is onnxruntime's; drop --io-binding with --backend openvino.")
    if options.provider_name not in ("cpu", "auto") or options.cuda is not None:
        raise ProviderError(f"--provider {options.provider_name} and the CUDA options are onnxruntime's; with "
                            "--backend openvino pick the device with --device CPU|GPU|NPU.")


def open_session(model: str | Path | bytes, options: RuntimeOptions, *,
                 profile_dir: str | Path | None = None) -> tuple[OpenVinoSession, SessionInfo]:
    """Read ``model`` with OpenVINO for the options' device, threads and precision (compiled on first
    use, or by :meth:`OpenVinoSession.load`).

    Raises:
        ArtifactError: for a missing or unreadable file.
        ProviderError: for a device OpenVINO does not see, or a precision it would not honour.
        MissingDependencyError: without the ``[openvino]`` extra.
    """
    del profile_dir  # onnxruntime's profiler: OpenVINO reports no per-node placement here
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise ArtifactError(f"ONNX model {model} does not exist; pass the path of a .onnx file.")
    t0 = time.perf_counter()
    device, precision = options.device_name, options.precision
    session = OpenVinoSession(model, device=device, threads=options.threads, precision=precision)
    label = f"openvino:{device}" + (f":{precision}" if precision else "")
    return session, SessionInfo(requested=label, providers=session.get_providers(), fallback=None,
                                creation_s=time.perf_counter() - t0)


def pixel_session(session: OpenVinoSession, *, source: str | Path | bytes, card: ModelCard, input_name: str,
                  options: RuntimeOptions) -> tuple[OpenVinoSession | None, str]:
    """The model compiled with the card's mapping in OpenVINO's ``PrePostProcessor``, and one line
    saying where the mapping runs."""
    del source, input_name, options  # the session holds the model it read
    pixels = session.pixel_session(PixelMapping.of(card))
    if pixels is None:
        return None, "numpy (openvino cannot take this file's input as pixels)"
    return pixels, "OpenVINO PrePostProcessor (uint8 pixels in)"


class OpenVinoSession:
    """An ONNX file compiled by OpenVINO for ``device``, behind the session protocol.

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

    def __init__(self, model: str | Path | bytes, *, device: str = "CPU", threads: int | None = None,
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
        self._compiled: Any = None  # compiled on first use (load()): a pixel session may replace it unused
        self._lock = threading.Lock()
        try:
            framework = self._model.get_rt_info()["framework"]
            meta = {str(k): v.astype(str) if hasattr(v, "astype") else str(v) for k, v in dict(framework).items()}
        except (KeyError, TypeError, RuntimeError):
            meta = {}
        self._meta = ModelMeta(custom_metadata_map=meta)
        self._inputs = [self._arg(p) for p in self._model.inputs]
        self._outputs = [self._arg(p) for p in self._model.outputs]

    def load(self) -> None:
        """Compile for the device (once), and check it honours the precision: what opening defers,
        since a pixel session may replace this one unused.

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
        pixels.load()
        return pixels

    @staticmethod
    def _arg(port: Any) -> TensorArg:
        shape = [d.get_length() if d.is_static else f"d{i}" for i, d in enumerate(port.get_partial_shape())]
        return TensorArg(name=port.get_any_name(), shape=shape, type=onnx_type(port.get_element_type().get_type_name()))

    def get_inputs(self) -> list[TensorArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[TensorArg]:
        return list(self._outputs)

    def get_modelmeta(self) -> ModelMeta:
        return self._meta

    def get_providers(self) -> list[str]:
        return [f"OpenVINO:{self.device}"]

    def model_input(self, x: np.ndarray) -> np.ndarray:
        """A float model input as :meth:`run_array` takes it: as it is."""
        return x

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
                self.load()  # once: a second caller finds it compiled
        with self._lock:  # one infer request: calls are serialized, as onnxruntime's are per session
            result = self._request.infer({0: x}, share_inputs=True, share_outputs=True)
            # By position: compiling may rename an output port (a Cast fused into it keeps the
            # Cast's input name, as in an fp16 file with float32 outputs).
            return [np.array(result[port], copy=True) for port in self._ports]
