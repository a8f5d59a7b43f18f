"""LiteRT (TFLite, XNNPack) as a third backend of the runtime core (``ai-edge-litert``).

``edgecnn export RUN -q litert-int8`` writes ``model.int8.tflite``: the Keras model through the
TFLite converter with int8 weights and activations (calibrated on the same training images as
the ONNX int8 variant), the card's normalization inside the model and an int8 input that is the
pixel itself (``pixel - 128``), float32 output. Uint8 pixels reach any int8- or float-input file
through :meth:`LiteRtSession.pixel_session`'s tables; a preprocessed float input is quantized on
the way in. The edgecnn card travels inside the file, in the flatbuffer's
``metadata`` under the same key ONNX files use (:data:`edgecnn.card.ONNX_METADATA_KEY`).

:class:`LiteRtSession` is a ``.tflite`` file behind the session protocol
(:class:`~edgecnn.runtime.backends.base.Session`). LiteRT's interpreter runs one call at a time:
calls are serialized. On small CPU models its XNNPack kernels have the lowest per-call cost of
the three backends (docs/benchmarks.md), which is why ``edgecnn tune`` measures it next to onnxruntime and OpenVINO.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecnn._optional import quiet_stderr, require
from edgecnn.errors import ArtifactError, ConfigError, ProviderError
from edgecnn.runtime.backends.base import ModelMeta, SessionInfo, TensorArg, onnx_type
from edgecnn.runtime.pixels import PixelMapping, lookup_table

if TYPE_CHECKING:
    from edgecnn.card import ModelCard
    from edgecnn.runtime.options import RuntimeOptions

__all__ = ["LiteRtSession", "read_tflite_metadata", "check", "open_session", "pixel_session"]


def check(options: RuntimeOptions) -> None:
    """Refuse what LiteRT cannot do here: it runs on the CPU, at the file's own precision.

    Raises:
        ConfigError: for IO binding (onnxruntime's).
        ProviderError: for a provider, CUDA options, an OpenVINO device or precision.
    """
    if options.io_binding:
        raise ConfigError("IO binding is onnxruntime's; drop --io-binding with --backend litert.")
    if options.provider_name not in ("cpu", "auto") or options.cuda is not None or options.device_name != "CPU" \
            or options.precision is not None:
        raise ProviderError("LiteRT runs .tflite files on the CPU here; drop --provider, --device and --precision.")


def open_session(model: str | Path | bytes, options: RuntimeOptions, *,
                 profile_dir: str | Path | None = None) -> tuple[LiteRtSession, SessionInfo]:
    """Load a ``.tflite`` file into LiteRT's interpreter with the options' threads.

    Raises:
        ArtifactError: for a missing or unreadable file.
        MissingDependencyError: without ``ai-edge-litert``.
    """
    del profile_dir  # onnxruntime's profiler
    if isinstance(model, bytes) or not Path(model).is_file():
        raise ArtifactError(f"TFLite model {model if not isinstance(model, bytes) else 'bytes'} does not exist; "
                            "pass the path of a .tflite file.")
    t0 = time.perf_counter()
    session = LiteRtSession(model, threads=options.threads)
    return session, SessionInfo(requested="litert", providers=session.get_providers(), fallback=None,
                                creation_s=time.perf_counter() - t0)


def pixel_session(session: LiteRtSession, *, source: str | Path | bytes, card: ModelCard, input_name: str,
                  options: RuntimeOptions) -> tuple[LiteRtSession | None, str]:
    """The interpreter also taking uint8 pixels through per-channel lookup tables (the same session:
    float input keeps working), and one line saying where the mapping runs."""
    del source, input_name, options
    pixels = session.pixel_session(PixelMapping.of(card))
    if pixels is None:
        return None, "numpy (litert cannot take this file's input as pixels)"
    return pixels, "LiteRT lookup table (uint8 pixels in)"


def read_tflite_metadata(data: bytes) -> dict[str, bytes]:
    """The ``metadata`` entries of a TFLite flatbuffer, name -> bytes.

    Raises:
        ArtifactError: if ``data`` is not a TFLite model.
    """
    require("ai_edge_litert", "litert")
    from ai_edge_litert import schema_py_generated as schema

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ArtifactError("not a TFLite model (no TFL3 identifier)")
    try:
        model = schema.Model.GetRootAsModel(data, 0)
        out = {}
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            buffer = model.Buffers(entry.Buffer())
            out[entry.Name().decode("utf-8", "replace")] = (buffer.DataAsNumpy().tobytes() if buffer.DataLength()
                                                            else b"")
        return out
    except Exception as err:  # a truncated or garbled flatbuffer raises IndexError/struct.error/...
        raise ArtifactError(f"corrupt TFLite flatbuffer ({type(err).__name__})") from err


class LiteRtSession:
    """A ``.tflite`` model on LiteRT's interpreter (XNNPack on the CPU), behind the session protocol.

    Args:
        model: the ``.tflite`` path.
        threads: interpreter threads (None: LiteRT's default).

    Raises:
        MissingDependencyError: without ``ai-edge-litert``.
        ArtifactError: for a file LiteRT cannot read.
    """

    def __init__(self, model: str | Path, *, threads: int | None = None) -> None:
        require("ai_edge_litert", "litert")
        from ai_edge_litert.interpreter import Interpreter

        path = Path(model)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ArtifactError(f"Cannot read {path}: {err.strerror or err}.") from None
        try:
            meta = read_tflite_metadata(data)
            with quiet_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on every load
                self._interp = Interpreter(model_content=data, num_threads=threads)
                self._interp.allocate_tensors()
        except ArtifactError as err:
            raise ArtifactError(f"LiteRT cannot load {path.name}: {err}.") from None
        except Exception as err:  # noqa: BLE001 - the interpreter's ValueError/RuntimeError/...: one ArtifactError
            raise ArtifactError(f"LiteRT cannot load {path.name} ({' '.join(str(err).split())[:200]}).") from None
        self.threads = threads
        ins, outs = self._interp.get_input_details(), self._interp.get_output_details()
        if len(ins) != 1:
            raise ArtifactError(f"{path.name} has {len(ins)} inputs; edgecnn runs image models with one input.")
        self._in = ins[0]
        self._outs = outs
        self._quant_in = self._in["dtype"] in (np.int8, np.uint8)
        self._shape: tuple[int, ...] | None = tuple(int(d) for d in self._in["shape"])
        # The per-call path is three interpreter calls and nothing else when input and outputs are
        # float32 (the -q litert-int8 files): on a 20-microsecond model every Python step shows.
        self._set, self._invoke, self._get = self._interp.set_tensor, self._interp.invoke, self._interp.get_tensor
        self._in_index = self._in["index"]
        self._out_index = [o["index"] for o in outs]
        self._plain_out = all(np.dtype(o["dtype"]) == np.float32 for o in outs)
        self._meta = ModelMeta(custom_metadata_map={k: v.decode("utf-8", "replace") for k, v in meta.items()
                                                    if k != "min_runtime_version"
                                                    and not k.startswith("CONVERSION_METADATA")})
        self._lock = threading.Lock()
        self._lookup: str | None = None  # how uint8 pixels become the input (pixel_session)
        self._tables: list[np.ndarray] = []
        self._reverse = False

    @staticmethod
    def _arg(detail: dict[str, Any], *, batch: bool) -> TensorArg:
        sig = list(detail.get("shape_signature", detail["shape"]))
        shape: list[Any] = [int(d) if d > 0 else f"d{i}" for i, d in enumerate(sig)]
        if batch and shape:
            shape[0] = "N" if not isinstance(shape[0], int) else shape[0]
        return TensorArg(name=detail["name"], shape=shape, type=onnx_type(detail["dtype"]))

    def get_inputs(self) -> list[TensorArg]:
        arg = self._arg(self._in, batch=True)
        # int8-input files get float input quantized here: the core always feeds float32.
        return [TensorArg(name=arg.name, shape=arg.shape, type="tensor(float)")]

    def get_outputs(self) -> list[TensorArg]:
        return [TensorArg(name=a.name, shape=a.shape, type="tensor(float)")
                for a in (self._arg(o, batch=True) for o in self._outs)]

    def get_modelmeta(self) -> ModelMeta:
        return self._meta

    def get_providers(self) -> list[str]:
        return ["LiteRT:CPU"]

    def load(self) -> None:
        """Nothing is deferred: the interpreter allocated its tensors when the file was read."""

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in graph order (or ``output_names``' order) as float32 arrays that own their memory."""
        (x,) = feed.values()
        values = self.run_array(x)
        if output_names is None:
            return values
        index = {o["name"]: i for i, o in enumerate(self._outs)}
        try:
            return [values[index[n]] for n in output_names]
        except KeyError as err:
            raise ProviderError(f"No output {err.args[0]!r}; the model has {list(index)}.") from None

    def pixel_session(self, mapping: PixelMapping) -> LiteRtSession | None:
        """This interpreter, also taking uint8 NHWC pixels: a 256-entry table per channel maps each
        pixel to the input's value (quantized into the input's scale and zero point where the file
        takes int8), replacing numpy's normalization and the input quantization. Float input
        still works as before. None for an input that is not NHWC."""
        if mapping.layout != "nhwc" or len(self._in["shape"]) != 4:
            return None
        quant = None
        if self._quant_in:
            scale, zero = self._in["quantization"]
            quant = (float(scale), int(zero))
        table = lookup_table(mapping, dtype=np.dtype(self._in["dtype"]) if quant else np.float32, quantization=quant)
        self._reverse = mapping.reverse  # RGB pixels reversed to the model's BGR before the lookup
        shift = table.astype(np.int16) - np.arange(256, dtype=np.int16)[:, None]
        if table.dtype == np.int8 and bool((shift == -128).all()):
            self._lookup = "xor"  # pixel - 128: the input's own quantization is the pixel mapping
        elif table.dtype == np.uint8 and bool((shift == 0).all()):
            self._lookup = "same"
        elif bool((table == table[:, :1]).all()):
            self._lookup = "take"  # every channel alike: one table over the whole batch
            self._tables = [np.ascontiguousarray(table[:, 0])]
        else:
            self._lookup = "channels"  # one table per channel (4x faster than one take over offset indices)
            self._tables = [np.ascontiguousarray(table[:, c]) for c in range(mapping.channels)]
        return self

    def _from_pixels(self, px: np.ndarray) -> np.ndarray:
        if self._reverse:
            px = px[..., ::-1]
        if self._lookup == "xor":
            return (px ^ np.uint8(0x80)).view(np.int8)
        if self._lookup == "same":
            return px
        if self._lookup == "take":
            return self._tables[0].take(px)
        out = np.empty(px.shape, dtype=self._tables[0].dtype)
        for c, table in enumerate(self._tables):
            out[..., c] = table[px[..., c]]
        return out

    def run_array(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output, in graph order, for the one input ``x`` (the core's per-call path): a
        float model input, or uint8 pixels after :meth:`pixel_session`."""
        with self._lock:
            if x.shape != self._shape:
                self._resize(x.shape)
            if x.dtype == np.uint8 and self._lookup is not None:
                x = self._from_pixels(x)
            else:
                x = self.model_input(x)
            self._set(self._in_index, x)
            self._invoke()
            if self._plain_out:
                return [self._get(i) for i in self._out_index]  # get_tensor returns a copy
            return [self._dequantize(o) for o in self._outs]

    def model_input(self, x: np.ndarray) -> np.ndarray:
        """A float model input as the interpreter takes it: quantized into an int8/uint8 input's
        scale and zero point (as the converter's own Quantize op would), else as it is."""
        if not self._quant_in or x.dtype == self._in["dtype"]:
            return x
        scale, zero = self._in["quantization"]
        info = np.iinfo(self._in["dtype"])
        return np.clip(np.rint(x / scale + zero), info.min, info.max).astype(self._in["dtype"])

    def _resize(self, shape: tuple[int, ...]) -> None:
        self._interp.resize_tensor_input(self._in_index, list(shape))
        with quiet_stderr():
            self._interp.allocate_tensors()
        self._shape = tuple(shape)

    def _dequantize(self, detail: dict[str, Any]) -> np.ndarray:
        value = self._interp.get_tensor(detail["index"])  # a copy
        if value.dtype in (np.int8, np.uint8):
            scale, zero = detail["quantization"]
            return (value.astype(np.float32) - zero) * np.float32(scale)
        return value if value.dtype == np.float32 else value.astype(np.float32)
