"""ONNX Runtime sessions with an explicit provider request and a check that it was honoured.

onnxruntime only *warns* when a requested execution provider cannot be used and then runs on
the CPU; a benchmark or a server that does not compare ``session.get_providers()`` with the
request reports CPU numbers as GPU numbers. :func:`create_session` always passes
``providers=`` and fails (or, if allowed, warns) on such a fallback.

A session can run on the CUDA provider and still execute some nodes on the CPU (onnxruntime
assigns each node to the first provider that has a kernel for it, and inserts device copies
around the rest). :func:`node_placement` reports where every node ran, from onnxruntime's own
profiling trace, so a benchmark can say "nodes on CPU: 0 of 65" instead of assuming it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from edgecnn.errors import ArtifactError, ConfigError, ProviderError

log = logging.getLogger(__name__)

__all__ = ["PROVIDERS", "CONV_ALGO_SEARCH", "CudaOptions", "NodePlacement", "SessionInfo", "create_session",
           "resolve_providers", "node_placement", "parse_profile", "preload_cuda_libraries", "onnxruntime_conflict",
           "GPU_INSTALL", "ort_error", "BACKENDS"]

# The one documented way to get the CUDA build (README "GPU install"): both wheels install into the
# same `onnxruntime` import package, so whichever was installed last wins, file by file.
GPU_INSTALL = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
_ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")

# What each user-facing name asks onnxruntime for, best first. CPU always ends the list so
# that operators an accelerator lacks still run (onnxruntime assigns nodes per provider).
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}

_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
BACKENDS = ("onnxruntime", "openvino", "litert")
CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


@dataclass(frozen=True)
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
            GPU and fixed input/output addresses, so the :class:`~edgecnn.runtime.Classifier`
            binds device buffers of one fixed shape and refuses other shapes.
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
        if not isinstance(self.device_id, int) or self.device_id < 0:
            raise ConfigError(f"device_id must be an integer >= 0, got {self.device_id!r}.")

    def provider_options(self) -> dict[str, str]:
        """The ``CUDAExecutionProvider`` options dict (onnxruntime wants strings)."""
        out = {"device_id": str(self.device_id), "cudnn_conv_algo_search": self.cudnn_conv_algo_search,
               "enable_cuda_graph": "1" if self.cuda_graph else "0"}
        if self.prefer_nhwc is not None:
            out["prefer_nhwc"] = "1" if self.prefer_nhwc else "0"
        return out


@dataclass(frozen=True)
class TensorArg:
    """An input or output as ``InferenceSession.get_inputs()`` describes it (name, shape with
    names for dynamic axes, ``tensor(float)``-style type): what the OpenVINO and LiteRT sessions
    return, so the core reads every backend alike."""

    name: str
    shape: list[Any]
    type: str


@dataclass(frozen=True)
class ModelMeta:
    """``InferenceSession.get_modelmeta()``'s part the core reads: the file's metadata map."""

    custom_metadata_map: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionInfo:
    """What was asked for and what onnxruntime actually runs."""

    requested: str
    providers: list[str]
    fallback: str | None  # a message when the session runs on another provider than requested
    creation_s: float

    @property
    def device(self) -> str:
        """``cuda`` when the first provider is a GPU one, else ``cpu``."""
        return "cuda" if self.providers[0] in _GPU_PROVIDERS else "cpu"


def resolve_providers(provider: str) -> list[str]:
    """The onnxruntime provider list for ``cpu``, ``cuda``, ``tensorrt`` or ``auto``.

    ``auto`` picks CUDA when this onnxruntime build has it, else the CPU (never TensorRT, whose
    engine builds take minutes and need libraries the CUDA wheel does not ship).

    Raises:
        ProviderError: for an unknown name.
    """
    if provider == "auto":
        return PROVIDERS["cuda"] if "CUDAExecutionProvider" in ort.get_available_providers() else PROVIDERS["cpu"]
    if provider not in PROVIDERS:
        raise ProviderError(f"Unknown provider {provider!r}; choose one of cpu, cuda, tensorrt, auto.")
    return PROVIDERS[provider]


def _with_options(providers: list[str], cuda: CudaOptions | None) -> list[Any]:
    """The provider list with the CUDA provider's options attached (as onnxruntime's (name, dict))."""
    if cuda is None or "CUDAExecutionProvider" not in ort.get_available_providers():
        return list(providers)  # a build without CUDA ignores them anyway (after a C++-level warning)
    return [(p, cuda.provider_options()) if p == "CUDAExecutionProvider" else p for p in providers]


_preloaded = False


def preload_cuda_libraries() -> bool:
    """Load the CUDA and cuDNN libraries that onnxruntime-gpu needs (``onnxruntime.preload_dlls``).

    onnxruntime-gpu >= 1.21 finds them in the NVIDIA pip packages (those that come with torch) only
    when asked to; without them the CUDA provider fails to load and the session runs on the CPU.
    Done once per process, only when this onnxruntime build has the CUDA provider.

    Returns:
        True when the preload ran (or had run) without an error.
    """
    global _preloaded
    if _preloaded:
        return True
    if "CUDAExecutionProvider" not in ort.get_available_providers() or not hasattr(ort, "preload_dlls"):
        return False
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):  # it prints what it could not find; keep stdout clean
            ort.preload_dlls()
    except Exception as err:  # noqa: BLE001 - any preload failure: the provider check after session creation says more
        log.debug("onnxruntime.preload_dlls() failed: %s", err)
        return False
    finally:
        if out.getvalue().strip():
            log.debug("onnxruntime.preload_dlls(): %s", out.getvalue().strip())
    _preloaded = True
    return True


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")


_ORT_LOAD = re.compile(r"^Load model from .*? failed:\s*(This is an invalid model\.\s*)?")
_ORT_NODE = re.compile(r'In Node, \("(?P<node>[^"]*)", (?P<op>\w+),.*, Error (?P<why>.*)$')


def ort_error(err: BaseException) -> str:
    """onnxruntime's own message on one line, cut to its cause: without the status prefix and the
    file path, and for a node the graph checker refused, just the node, its op and the reason
    (``node conv/DequantizeLinear (DequantizeLinear): Unrecognized attribute: axis ...``)."""
    text = _ORT_LOAD.sub("", _ORT_PREFIX.sub("", " ".join(str(err).split())))
    node = _ORT_NODE.search(text)
    if node:
        text = f"node {node['node']} ({node['op']}): {node['why']}"
    return f"{type(err).__name__}: {text[:400]}"


def onnxruntime_conflict(distributions: dict[str, str] | None = None) -> str | None:
    """A one-line fix when the CPU and GPU builds of onnxruntime are installed side by side.

    ``onnxruntime`` and ``onnxruntime-gpu`` both install the ``onnxruntime`` import package; with
    both present, the files of whichever was installed last shadow the other's, and the CUDA
    provider silently disappears (or the import breaks). ``pip install edgecnn`` pulls the CPU
    build, so a GPU user who then adds ``onnxruntime-gpu`` lands exactly here.

    Args:
        distributions: name -> version of the installed onnxruntime distributions (default: read
            from the installed package metadata).

    Returns:
        None when at most one build is installed, else the message naming what to run.
    """
    if distributions is None:
        from importlib.metadata import PackageNotFoundError, version

        distributions = {}
        for name in _ORT_DISTRIBUTIONS:
            try:
                distributions[name] = version(name)
            except PackageNotFoundError:
                continue
    present = [f"{name} {distributions[name]}" for name in _ORT_DISTRIBUTIONS if name in distributions]
    if len(present) < 2:
        return None
    return (f"Both {' and '.join(present)} are installed and shadow each other; keep one: `{GPU_INSTALL}` "
            "for the GPU (or `pip uninstall -y onnxruntime-gpu` for the CPU build alone).")


_conflict_checked = False


def _warn_conflict_once() -> None:
    global _conflict_checked
    if not _conflict_checked:
        _conflict_checked = True
        conflict = onnxruntime_conflict()
        if conflict:
            log.warning("%s", conflict)


def _session_options(threads: int | None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One sequential graph: CNN classifiers are chains, inter-op threads only add contention.
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads is not None:
        if threads < 1:
            raise ProviderError(f"threads must be >= 1 (or None for onnxruntime's default), got {threads}.")
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3  # provider fallbacks are reported by us, as errors or one warning
    return opts


def create_session(
    model: str | Path | bytes,
    *,
    provider: str = "cpu",
    threads: int | None = None,
    allow_fallback: bool = False,
    cuda: CudaOptions | None = None,
    profile_dir: str | Path | None = None,
    backend: str = "onnxruntime",
    device: str = "CPU",
    precision: str | None = None,
) -> tuple[Any, SessionInfo]:
    """Open an ONNX model on the requested provider and check that onnxruntime honoured it.

    ``backend="openvino"`` opens it with OpenVINO on ``device`` (``CPU``, ``GPU``, ``NPU``) at
    ``precision`` (``f32``/``bf16``) instead, behind the same interface
    (:class:`~edgecnn.runtime.openvino_backend.OpenVinoSession`); ``provider`` and ``cuda`` are
    onnxruntime's and must stay at their defaults then.

    Args:
        model: an ``.onnx`` path or the serialized model.
        provider: ``cpu``, ``cuda``, ``tensorrt`` or ``auto``.
        threads: intra-op threads (None: onnxruntime's default).
        allow_fallback: warn instead of raising when the session runs on another provider.
        cuda: options of the CUDA provider (used when the request includes it).
        profile_dir: turn on onnxruntime's profiling, writing its JSON trace into this folder
            (see :func:`node_placement`).

    Raises:
        ArtifactError: if the file is missing or not a loadable ONNX model.
        ProviderError: if the session runs on another provider than requested and
            ``allow_fallback`` is false, or the CUDA provider rejects its options.
    """
    if backend not in BACKENDS:
        raise ProviderError(f"Unknown backend {backend!r}; choose {', '.join(BACKENDS)}.")
    tflite = not isinstance(model, bytes) and Path(model).suffix.lower() == ".tflite"
    if tflite != (backend == "litert"):
        raise ProviderError(f"{Path(str(model)).name}: LiteRT runs .tflite files, {backend} runs .onnx files; pass "
                            f"{'--backend litert' if tflite else 'a .tflite file (edgecnn export -q litert-int8)'}."
                            if not isinstance(model, bytes) else "LiteRT reads .tflite files; pass a path.")
    if backend == "litert":
        return _litert_session(model, provider=provider, threads=threads, cuda=cuda, device=device,
                               precision=precision)
    if backend == "openvino":
        return _openvino_session(model, provider=provider, threads=threads, cuda=cuda, device=device,
                                 precision=precision)
    if precision is not None:
        raise ProviderError("--precision selects OpenVINO's execution precision; use it with --backend openvino "
                            "(onnxruntime runs a file's own precision: export an fp16 variant instead).")
    wanted = resolve_providers(provider)
    _warn_conflict_once()
    if "CUDAExecutionProvider" in wanted:
        preload_cuda_libraries()
    source: str | bytes = model if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise ArtifactError(f"ONNX model {model} does not exist; "
                            "pass the path of a .onnx file made by `edgecnn export`.")
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():  # its "not in available provider names" warning: we check below
            warnings.simplefilter("ignore", UserWarning)
            opts = _session_options(threads)
            if profile_dir is not None:
                opts.enable_profiling = True
                opts.profile_file_prefix = str(Path(profile_dir) / "ort_profile")
            session = ort.InferenceSession(source, sess_options=opts, providers=_with_options(wanted, cuda))
    except Exception as err:  # onnxruntime raises InvalidProtobuf, Fail, InvalidGraph, ... all mean: unusable file
        name = "the ONNX bytes" if isinstance(model, bytes) else str(model)
        text = str(err).strip()
        if "CUDAExecutionProvider" in wanted and any(k in text.lower() for k in ("cuda", "provider option", "cudnn")):
            # e.g. "This session cannot use the CUDA Graph feature ... all compute graph nodes have not
            # been partitioned to the CUDA EP", or an option this onnxruntime-gpu build does not know.
            raise ProviderError(
                f"The CUDA provider cannot open {name} with options {cuda.provider_options() if cuda else {}} "
                f"({type(err).__name__}: {text[:400]}). CUDA graphs need every node on the GPU; "
                "prefer_nhwc needs an onnxruntime-gpu built with its NHWC kernels."
            ) from err
        raise ArtifactError(
            f"Cannot load {name} as an ONNX model ({ort_error(err)}); re-export it with `edgecnn export`."
        ) from err
    creation_s = time.perf_counter() - t0
    actual = list(session.get_providers())
    fallback = None
    if provider != "auto" and actual[0] != wanted[0]:
        fallback = (
            f"Asked for {provider} ({wanted[0]}) but the session runs on {actual[0]}; "
            f"this onnxruntime build offers {', '.join(ort.get_available_providers())}. "
        )
        conflict = onnxruntime_conflict()
        if conflict:
            fallback += conflict + " "
        elif "CUDAExecutionProvider" not in ort.get_available_providers():
            fallback += f"Install the CUDA build: `{GPU_INSTALL}` (README, GPU install). "
        if not allow_fallback:
            raise ProviderError(
                fallback + "Check the CUDA/cuDNN libraries (onnxruntime-gpu loads them from the NVIDIA pip packages), "
                "or pass --provider cpu, or accept the CPU with --allow-fallback."
            )
        log.warning("%sFalling back as allowed.", fallback)
    return session, SessionInfo(provider, actual, fallback, creation_s)


def _openvino_session(model: str | Path | bytes, *, provider: str, threads: int | None, cuda: CudaOptions | None,
                      device: str, precision: str | None) -> tuple[Any, SessionInfo]:
    from edgecnn.runtime.openvino_backend import OpenVinoSession

    if provider not in ("cpu", "auto") or cuda is not None:
        raise ProviderError(f"--provider {provider} and the CUDA options are onnxruntime's; with --backend openvino "
                            "pick the device with --device CPU|GPU|NPU.")
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise ArtifactError(f"ONNX model {model} does not exist; pass the path of a .onnx file.")
    t0 = time.perf_counter()
    session = OpenVinoSession(model, device=device, threads=threads, precision=precision)
    label = f"openvino:{device}" + (f":{precision}" if precision else "")
    return session, SessionInfo(label, session.get_providers(), None, time.perf_counter() - t0)


def _litert_session(model: str | Path, *, provider: str, threads: int | None, cuda: CudaOptions | None,
                    device: str, precision: str | None) -> tuple[Any, SessionInfo]:
    from edgecnn.runtime.litert_backend import LiteRtSession

    if provider not in ("cpu", "auto") or cuda is not None or device != "CPU" or precision is not None:
        raise ProviderError("LiteRT runs .tflite files on the CPU here; drop --provider, --device and --precision.")
    if not Path(model).is_file():
        raise ArtifactError(f"TFLite model {model} does not exist; pass the path of a .tflite file.")
    t0 = time.perf_counter()
    session = LiteRtSession(model, threads=threads)
    return session, SessionInfo("litert", session.get_providers(), None, time.perf_counter() - t0)


# --------------------------------------------------------------------------------- node placement

_COPY_OPS = ("MemcpyFromHost", "MemcpyToHost")


@dataclass(frozen=True)
class NodePlacement:
    """Where each node of an (optimized) onnxruntime graph ran, from one profiled run.

    ``nodes`` maps node name -> (op type, provider). The Memcpy nodes onnxruntime inserts between
    a GPU node and a CPU node count like any other node (they run on the GPU provider); ``copies``
    counts them separately because they are the visible cost of every CPU-placed node.
    """

    nodes: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.nodes)

    @property
    def by_provider(self) -> dict[str, int]:
        return dict(Counter(p for _, p in self.nodes.values()).most_common())

    @property
    def on_cpu(self) -> int:
        return sum(1 for _, p in self.nodes.values() if p == "CPUExecutionProvider")

    @property
    def cpu_share(self) -> float:
        return self.on_cpu / self.total if self.total else 0.0

    @property
    def cpu_ops(self) -> dict[str, int]:
        """Op types of the CPU-placed nodes, most frequent first."""
        return dict(Counter(op for op, p in self.nodes.values() if p == "CPUExecutionProvider").most_common())

    @property
    def copies(self) -> int:
        return sum(1 for op, _ in self.nodes.values() if op in _COPY_OPS)

    def summary(self) -> str:
        """``nodes on CPU: N of M (x%)``, plus the CPU op types and device copies when there are any."""
        text = f"nodes on CPU: {self.on_cpu} of {self.total} ({100 * self.cpu_share:.0f}%)"
        if self.on_cpu and self.on_cpu < self.total:
            text += " - " + ", ".join(f"{op} x{n}" for op, n in self.cpu_ops.items())
        if self.copies:
            text += f"; {self.copies} host/device copy node(s)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "on_cpu": self.on_cpu, "cpu_share": round(self.cpu_share, 6),
                "by_provider": self.by_provider, "cpu_ops": self.cpu_ops, "copies": self.copies}


def parse_profile(trace: str | Path | Iterable[dict[str, Any]]) -> NodePlacement:
    """The node placement in an onnxruntime profiling trace (the JSON ``end_profiling`` writes).

    Each executed node leaves a ``"cat": "Node"`` event named ``<node>_kernel_time`` whose
    ``args`` hold ``op_name`` and ``provider``; the ``_fence_before``/``_fence_after`` events have
    no provider and are skipped, and repeated runs of the same node count once.

    Raises:
        ArtifactError: if the file is not a profiling trace.
    """
    if isinstance(trace, (str, Path)):
        try:
            events = json.loads(Path(trace).read_text())
        except (OSError, ValueError) as err:
            raise ArtifactError(f"Cannot read the onnxruntime profile {trace}: {err}.") from err
    else:
        events = list(trace)
    if isinstance(events, dict):  # the Chrome trace object form
        events = events.get("traceEvents", [])
    if not isinstance(events, list):
        raise ArtifactError("An onnxruntime profile is a JSON list of events.")
    nodes: dict[str, tuple[str, str]] = {}
    for ev in events:
        args = ev.get("args") if isinstance(ev, dict) else None
        if ev.get("cat") != "Node" or not isinstance(args, dict) or "provider" not in args:
            continue
        name = str(ev.get("name", ""))
        name = name[: -len("_kernel_time")] if name.endswith("_kernel_time") else name
        key = f"{name}#{args['node_index']}" if "node_index" in args else name
        nodes[key] = (str(args.get("op_name", "?")), str(args["provider"]))
    return NodePlacement(nodes)


def node_placement(
    model: str | Path | bytes,
    *,
    provider: str = "cpu",
    cuda: CudaOptions | None = None,
    allow_fallback: bool = False,
    batch: int = 1,
    shapes: dict[str, list[int]] | None = None,
) -> NodePlacement:
    """Run ``model`` once on zeros in a profiling session and report where each node ran.

    ``shapes`` gives the shape to feed an input by name (the card's input size: a model with a
    dynamic height and width may not run at all on the 1x1 its other dynamic axes get).

    The profiling session is a separate one (profiling slows every run), with the same provider
    and CUDA options except CUDA graphs, which do not change placement and hide the nodes.

    Raises:
        ArtifactError, ProviderError: as :func:`create_session`.
    """
    import numpy as np

    if cuda is not None and cuda.cuda_graph:
        cuda = CudaOptions(cuda.device_id, cuda.cudnn_conv_algo_search, False, cuda.prefer_nhwc)
    with tempfile.TemporaryDirectory(prefix="edgecnn-profile-") as tmp:
        session, _ = create_session(model, provider=provider, cuda=cuda, allow_fallback=allow_fallback,
                                    profile_dir=tmp)
        feed = {}
        for inp in session.get_inputs():
            shape = (shapes or {}).get(inp.name) or \
                [d if isinstance(d, int) and d > 0 else (batch if i == 0 else 1) for i, d in enumerate(inp.shape)]
            dtype = {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(inp.type, np.float32)
            feed[inp.name] = np.zeros(shape, dtype=dtype)
        session.run(None, feed)
        path = session.end_profiling()
        return parse_profile(path)
