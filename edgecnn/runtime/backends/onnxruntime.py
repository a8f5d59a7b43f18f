"""onnxruntime as the runtime core's first backend: explicit providers and a check that they were honoured.

onnxruntime only *warns* when a requested execution provider cannot be used and then runs on
the CPU; a benchmark or a server that does not compare ``session.get_providers()`` with the
request reports CPU numbers as GPU numbers. :func:`open_session` always passes ``providers=`` and
fails (or, if allowed, warns) on such a fallback.

:class:`OrtSession` is onnxruntime's own ``InferenceSession`` (every onnxruntime API stays: IO
binding, profiling, session options) with the session protocol's per-call array path added.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from edgecnn.errors import ArtifactError, ProviderError
from edgecnn.runtime.backends.base import SessionInfo

if TYPE_CHECKING:
    from edgecnn.card import ModelCard
    from edgecnn.runtime.options import CudaOptions, RuntimeOptions

log = logging.getLogger(__name__)

__all__ = ["OrtSession", "PROVIDER_CHAINS", "GPU_INSTALL", "check", "open_session", "pixel_session",
           "resolve_providers", "preload_cuda_libraries", "ort_error", "onnxruntime_conflict"]

# The one documented way to get the CUDA build (README "GPU install"): both wheels install into the
# same `onnxruntime` import package, so whichever was installed last wins, file by file.
GPU_INSTALL = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
_ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")

# What each user-facing name asks onnxruntime for, best first. CPU always ends the list so
# that operators an accelerator lacks still run (onnxruntime assigns nodes per provider).
PROVIDER_CHAINS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OrtSession(ort.InferenceSession):
    """onnxruntime's ``InferenceSession`` with the session protocol's array call.

    :attr:`run_array` calls onnxruntime's C++ session without the Python wrapper's per-call
    input-name check and output-name list (7 microseconds a call): the input is the first one, the
    outputs all of them. Built once here, it is the whole per-call cost of a plain run.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inputs = self.get_inputs()
        first = inputs[0].name if inputs else ""
        run, names, options = self._sess.run, [o.name for o in self.get_outputs()], ort.RunOptions()
        self.run_array = lambda x: run(names, {first: x}, options)

    def model_input(self, x: np.ndarray) -> np.ndarray:
        """A float model input as :attr:`run_array` takes it: as it is."""
        return x

    def load(self) -> None:
        """Nothing is deferred: onnxruntime built everything when the session opened."""


def check(options: RuntimeOptions) -> None:
    """Refuse what onnxruntime cannot do (OpenVINO's device is ignored: onnxruntime's is the provider).

    Raises:
        ProviderError: for an execution precision (OpenVINO's setting).
    """
    if options.precision is not None:
        raise ProviderError("--precision selects OpenVINO's execution precision; use it with --backend openvino "
                            "(onnxruntime runs a file's own precision: export an fp16 variant instead).")


def resolve_providers(provider: str) -> list[str]:
    """The onnxruntime provider list for ``cpu``, ``cuda``, ``tensorrt`` or ``auto``.

    ``auto`` picks CUDA when this onnxruntime build has it, else the CPU (never TensorRT, whose
    engine builds take minutes and need libraries the CUDA wheel does not ship).

    Raises:
        ProviderError: for an unknown name.
    """
    if provider == "auto":
        return PROVIDER_CHAINS["cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"]
    if provider not in PROVIDER_CHAINS:
        raise ProviderError(f"Unknown provider {provider!r}; choose one of cpu, cuda, tensorrt, auto.")
    return PROVIDER_CHAINS[provider]


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


def _session_options(threads: int | None, profile_dir: str | Path | None, *,
                     spin: bool | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One sequential graph: CNN classifiers are chains, inter-op threads only add contention.
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    if spin is not None:  # idle threads spin-wait by default: CPU that work beside the model could use
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    opts.log_severity_level = 3  # provider fallbacks are reported by us, as errors or one warning
    if profile_dir is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(profile_dir) / "ort_profile")
    return opts


def open_session(model: str | Path | bytes, options: RuntimeOptions, *,
                 profile_dir: str | Path | None = None) -> tuple[OrtSession, SessionInfo]:
    """Open an ONNX model on the requested provider and check that onnxruntime honoured it.

    Args:
        model: an ``.onnx`` path or the serialized model.
        options: the provider, threads, CUDA options and whether a fallback to the CPU is allowed.
        profile_dir: turn on onnxruntime's profiling, writing its JSON trace into this folder
            (see :func:`edgecnn.runtime.session.node_placement`).

    Raises:
        ArtifactError: if the file is missing or not a loadable ONNX model.
        ProviderError: if the session runs on another provider than requested and fallback is not
            allowed, or the CUDA provider rejects its options.
    """
    provider, cuda = options.provider_name, options.cuda
    wanted = resolve_providers(provider)
    _warn_conflict_once()
    if "CUDAExecutionProvider" in wanted:
        preload_cuda_libraries()
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise ArtifactError(f"ONNX model {model} does not exist; "
                            "pass the path of a .onnx file made by `edgecnn export`.")
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():  # its "not in available provider names" warning: we check below
            warnings.simplefilter("ignore", UserWarning)
            session = OrtSession(model if isinstance(model, bytes) else str(model),
                                 sess_options=_session_options(options.threads, profile_dir, spin=options.spin),
                                 providers=_with_options(wanted, cuda))
    except Exception as err:  # onnxruntime raises InvalidProtobuf, Fail, InvalidGraph, ... all mean: unusable file
        raise _open_error(model, err, wanted, cuda) from err
    creation_s = time.perf_counter() - t0
    actual = list(session.get_providers())
    fallback = None
    if provider != "auto" and actual[0] != wanted[0]:
        fallback = _fallback_message(provider, wanted, actual)
        if not options.fallback:
            raise ProviderError(
                fallback + "Check the CUDA/cuDNN libraries (onnxruntime-gpu loads them from the NVIDIA pip packages), "
                "or pass --provider cpu, or accept the CPU with --allow-fallback."
            )
        log.warning("%sFalling back as allowed.", fallback)
    return session, SessionInfo(requested=provider, providers=actual, fallback=fallback, creation_s=creation_s)


def _open_error(model: str | Path | bytes, err: Exception, wanted: list[str], cuda: CudaOptions | None) -> Exception:
    """The one-line error for a session onnxruntime would not open."""
    name = "the ONNX bytes" if isinstance(model, bytes) else str(model)
    text = str(err).strip()
    if "CUDAExecutionProvider" in wanted and any(k in text.lower() for k in ("cuda", "provider option", "cudnn")):
        # e.g. "This session cannot use the CUDA Graph feature ... all compute graph nodes have not
        # been partitioned to the CUDA EP", or an option this onnxruntime-gpu build does not know.
        return ProviderError(
            f"The CUDA provider cannot open {name} with options {cuda.provider_options() if cuda else {}} "
            f"({type(err).__name__}: {text[:400]}). CUDA graphs need every node on the GPU; "
            "prefer_nhwc needs an onnxruntime-gpu built with its NHWC kernels."
        )
    return ArtifactError(f"Cannot load {name} as an ONNX model ({ort_error(err)}); re-export it with `edgecnn export`.")


def _fallback_message(provider: str, wanted: list[str], actual: list[str]) -> str:
    available = ort.get_available_providers()
    text = (f"Asked for {provider} ({wanted[0]}) but the session runs on {actual[0]}; "
            f"this onnxruntime build offers {', '.join(available)}. ")
    conflict = onnxruntime_conflict()
    if conflict:
        text += conflict + " "
    elif "CUDAExecutionProvider" not in available:
        text += f"Install the CUDA build: `{GPU_INSTALL}` (README, GPU install). "
    return text


def pixel_session(session: OrtSession, *, source: str | Path | bytes, card: ModelCard, input_name: str,
                  options: RuntimeOptions) -> tuple[OrtSession | None, str]:
    """A session taking uint8 NHWC pixels: the card's mapping folded into the graph with standard ops
    (:func:`~edgecnn.runtime.pixels.fold_onnx`), opened with the same options; and one line saying
    where the mapping runs (numpy, and why, when it cannot run in the graph)."""
    from edgecnn.runtime.pixels import fold_onnx

    del session  # the folded graph is a new session
    folded = fold_onnx(source, card, input_name)
    if folded is None:
        return None, "numpy (the file cannot carry it, or the onnx package is missing)"
    try:
        pixels, _ = open_session(folded, options)
    except ArtifactError as err:  # the file as it is opened: never refuse it for what was added
        name = "<bytes>" if isinstance(source, bytes) else Path(source).name
        log.warning("%s: the pixel mapping cannot run in the graph (%s); numpy runs it.", name, err)
        return None, "numpy (onnxruntime refused the folded graph)"
    return pixels, "onnxruntime graph (uint8 pixels in)"
