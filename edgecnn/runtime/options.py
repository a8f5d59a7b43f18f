"""How a model runs: one frozen type for backend, provider, device, precision, threads, IO binding
and the CUDA provider's options, with the choice lists every command takes them from.

Stdlib only (the CLI imports it for ``--help``). A field left ``None`` is *not set*: the backend's
own default applies, and :meth:`RuntimeOptions.merged` lets a caller's settings (flags the user
typed) win over stored ones (an export directory's ``deploy.json``) field by field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from edgecnn.errors import ConfigError, ProviderError
from edgecnn.runtime.backends import BACKENDS

__all__ = ["RuntimeOptions", "CudaOptions", "PROVIDERS", "BACKENDS", "OV_DEVICES", "OV_PRECISIONS",
           "CONV_ALGO_SEARCH", "TFLITE_SUFFIX"]

PROVIDERS = ("cpu", "cuda", "tensorrt", "auto")  # onnxruntime's execution providers, by edgecnn's names
OV_DEVICES = ("CPU", "GPU", "NPU")
OV_PRECISIONS = ("f32", "bf16")  # OpenVINO's execution precision (INFERENCE_PRECISION_HINT)
CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
TFLITE_SUFFIX = ".tflite"


@dataclass(frozen=True, kw_only=True)
class CudaOptions:
    """Options of onnxruntime's CUDA execution provider (ignored when the session runs on the CPU).

    Args:
        device_id: the GPU to run on.
        cudnn_conv_algo_search: how cuDNN picks each convolution's algorithm, once per input
            shape: ``EXHAUSTIVE`` benchmarks every algorithm (onnxruntime's default; the first run
            of each new shape is slow), ``HEURISTIC`` asks cuDNN's heuristics (no benchmarking),
            ``DEFAULT`` always takes the implicit-GEMM algorithm.
        cuda_graph: capture the whole run as one CUDA graph and replay it (``enable_cuda_graph``):
            removes the per-kernel launch cost, which dominates at batch 1. Needs every node on the
            GPU and fixed input/output addresses, so the runtime binds device buffers of one fixed
            shape and refuses other shapes.
        prefer_nhwc: let the CUDA provider run convolutions channels-last (``prefer_nhwc``;
            onnxruntime-gpu >= 1.20 built with its NHWC kernels). None leaves the build's default.
    """

    device_id: int = 0
    cudnn_conv_algo_search: str = "EXHAUSTIVE"
    cuda_graph: bool = False
    prefer_nhwc: bool | None = None

    def __post_init__(self) -> None:
        algo = str(self.cudnn_conv_algo_search).upper()
        if algo not in CONV_ALGO_SEARCH:
            raise ConfigError(f"cudnn_conv_algo_search must be one of {', '.join(CONV_ALGO_SEARCH)}; "
                              f"got {self.cudnn_conv_algo_search!r}.")
        object.__setattr__(self, "cudnn_conv_algo_search", algo)
        if type(self.device_id) is not int or self.device_id < 0:
            raise ConfigError(f"device_id must be an integer >= 0, got {self.device_id!r}.")

    def provider_options(self) -> dict[str, str]:
        """The ``CUDAExecutionProvider`` options dict (onnxruntime wants strings)."""
        out = {"device_id": str(self.device_id), "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
               "enable_cuda_graph": "1" if self.cuda_graph else "0"}
        if self.prefer_nhwc is not None:
            out["prefer_nhwc"] = "1" if self.prefer_nhwc else "0"
        return out


@dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    """How to run a model. ``None`` everywhere means "not set": the defaults below apply.

    Args:
        backend: ``onnxruntime`` (default for ``.onnx``), ``openvino`` (the ``[openvino]`` extra)
            or ``litert`` (the ``[litert]`` extra; the default, and the only one, for ``.tflite``).
        provider: onnxruntime's execution provider: ``cpu`` (default), ``cuda``, ``tensorrt`` or
            ``auto`` (the best one installed).
        device: OpenVINO's device: ``CPU`` (default), ``GPU`` or ``NPU``.
        precision: OpenVINO's execution precision: ``f32`` (default: the same results as
            onnxruntime) or ``bf16``.
        threads: intra-op threads (default: the backend's own, one per physical core).
        io_binding: onnxruntime only: inputs and outputs in device buffers reused while the shape
            stays the same (default: on for a GPU session, off on the CPU; CUDA graphs need it).
        spin: onnxruntime only (other backends ignore it): whether idle intra-op threads spin-wait
            for the next call (default: onnxruntime's, on). False gives the CPU back between calls,
            for work beside the model: ``edgecnn batch``'s decoding processes.
        allow_fallback: run on the CPU with a warning when the provider asked for is unusable,
            instead of refusing (default: refuse).
        cuda: the CUDA provider's options (:class:`CudaOptions`).

    Settings one backend cannot honour (OpenVINO's precision asked of onnxruntime, IO binding of
    OpenVINO or LiteRT, ...) are refused when a model opens on that backend: each backend's
    ``check`` (:mod:`edgecnn.runtime.backends`), because the backend of a model is known only with
    the model (:meth:`backend_for`).

    Raises:
        ProviderError: for an unknown backend or provider.
        ConfigError: for another value outside its choices, or CUDA graphs on the CPU or without IO
            binding.
    """

    backend: str | None = None
    provider: str | None = None
    device: str | None = None
    precision: str | None = None
    threads: int | None = None
    io_binding: bool | None = None
    spin: bool | None = None
    allow_fallback: bool | None = None
    cuda: CudaOptions | None = None

    def __post_init__(self) -> None:
        if self.backend is not None and self.backend not in BACKENDS:
            raise ProviderError(f"Unknown backend {str(self.backend)[:40]!r}; choose {', '.join(BACKENDS)}.")
        if self.provider is not None and self.provider not in PROVIDERS:
            raise ProviderError(f"Unknown provider {str(self.provider)[:40]!r}; choose one of {', '.join(PROVIDERS)}.")
        if self.precision is not None and self.precision not in OV_PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(OV_PRECISIONS)}; got {str(self.precision)[:40]!r}.")
        if self.device is not None and str(self.device).upper().split(".")[0] not in OV_DEVICES:
            raise ConfigError(f"device must be one of {', '.join(OV_DEVICES)} (OpenVINO's; GPU.1 for a "
                              f"second GPU); got {str(self.device)[:40]!r}.")
        if self.threads is not None and (type(self.threads) is not int or self.threads < 1):
            raise ConfigError(f"threads must be an integer >= 1, got {str(self.threads)[:20]!r}.")
        if self.cuda is not None and self.cuda.cuda_graph:
            if self.provider_name == "cpu":
                raise ConfigError("--cuda-graph needs --provider cuda: CUDA graphs (cuda_graph=True) are a feature of "
                                  "the CUDA provider (provider='cuda').")
            if self.io_binding is False:
                raise ConfigError("--cuda-graph replays fixed device buffers: CUDA graphs need IO binding (drop "
                                  "--no-io-binding, io_binding=False).")

    # ----------------------------------------------------------------- the values in effect
    @property
    def provider_name(self) -> str:
        return self.provider or "cpu"

    @property
    def device_name(self) -> str:
        return self.device or "CPU"

    @property
    def fallback(self) -> bool:
        return bool(self.allow_fallback)

    def backend_for(self, model: str | Path | bytes) -> str:
        """The backend that runs ``model``: LiteRT for a ``.tflite`` file unless another backend than
        onnxruntime (the default, which cannot read it) is set, so that the backend's own error says
        so; else the one set, else onnxruntime."""
        tflite = not isinstance(model, bytes) and Path(model).suffix.lower() == TFLITE_SUFFIX
        if tflite and self.backend in (None, "onnxruntime"):
            return "litert"
        return self.backend or "onnxruntime"

    def for_backend(self, backend: str) -> RuntimeOptions:
        """These options for ``backend``, without the settings that belong to another one
        (onnxruntime's IO binding and CUDA options, OpenVINO's device and precision): how one set of
        flags runs on several backends side by side (``edgecnn bench --backend onnxruntime,openvino``)."""
        drop: dict[str, Any] = {}
        if backend != "onnxruntime":
            drop.update(io_binding=None, cuda=None, spin=None)
        if backend != "openvino":
            drop.update(precision=None, device=None)
        return replace(self, backend=backend, **drop)

    @classmethod
    def given(cls, options: RuntimeOptions | None, fields_: dict[str, Any], *, what: str) -> RuntimeOptions:
        """``options`` (None: every default) with the keyword arguments a Python caller passed set on
        top: ``Classifier("model.onnx", provider="cpu", threads=2)`` builds its options this way.

        Raises:
            TypeError: for a keyword that is not a runtime option (card values go in ``overrides``).
            ConfigError, ProviderError: as the constructor.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(fields_) - known)
        if unknown:
            raise TypeError(f"{what} got an unexpected keyword argument {unknown[0]!r}; runtime options are "
                            f"{', '.join(sorted(known))}, card values go in overrides=ModelOverrides(...).")
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"{what} takes a RuntimeOptions after the model, got {type(options).__name__}; pass "
                            "runtime settings by keyword (provider='cuda', threads=2).")
        base = options if options is not None else cls()
        return replace(base, **fields_) if fields_ else base

    # ------------------------------------------------------------------------------ merging
    def merged(self, over: RuntimeOptions | None) -> RuntimeOptions:
        """These options with every field ``over`` sets replacing this one's: ``stored.merged(typed)``
        lets the flags a user typed win over a ``deploy.json``. When ``over`` names another backend,
        this one's backend-specific settings (OpenVINO's precision, onnxruntime's IO binding) are
        dropped: they mean nothing there."""
        if over is None:
            return self
        given = over.to_dict()
        if over.backend is not None and over.backend != self.backend:
            given = {"precision": None, "io_binding": None, "spin": None, **given}
        return replace(self, **given)

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set (``cuda`` as a dict): what deploy.json and reports store."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        if self.cuda is not None:
            out["cuda"] = asdict(self.cuda)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RuntimeOptions:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: for an unknown key or a value outside its choices.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown runtime option {unknown[0]!r}; known: {', '.join(sorted(known))}.")
        values = dict(data)
        if isinstance(values.get("cuda"), dict):
            values["cuda"] = CudaOptions(**values["cuda"])
        return cls(**values)

    def describe(self) -> str:
        """``openvino (bf16, CPU), 2 threads``: for log lines."""
        how = self.backend or "onnxruntime"
        if how == "openvino":
            how += f" ({self.precision or 'f32'}, {self.device_name})"
        elif self.provider_name != "cpu":
            how += f" on {self.provider_name}"
        if self.io_binding:
            how += " with IO binding"
        threads = "default threads" if self.threads is None else f"{self.threads} thread{'s' * (self.threads != 1)}"
        return f"{how}, {threads}"
