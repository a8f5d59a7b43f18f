"""ONNX Runtime sessions with an explicit provider request and a check that it was honoured.

onnxruntime only *warns* when a requested execution provider cannot be used and then runs on
the CPU; a benchmark or a server that does not compare ``session.get_providers()`` with the
request reports CPU numbers as GPU numbers. :func:`create_session` always passes
``providers=`` and fails (or, if allowed, warns) on such a fallback.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from edgecnn.errors import ArtifactError, ProviderError

log = logging.getLogger(__name__)

__all__ = ["PROVIDERS", "SessionInfo", "create_session", "resolve_providers"]

# What each user-facing name asks onnxruntime for, best first. CPU always ends the list so
# that operators an accelerator lacks still run (onnxruntime assigns nodes per provider).
PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


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
        return "cuda" if self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"


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
) -> tuple[ort.InferenceSession, SessionInfo]:
    """Open an ONNX model on the requested provider and check that onnxruntime honoured it.

    Raises:
        ArtifactError: if the file is missing or not a loadable ONNX model.
        ProviderError: if the session runs on another provider than requested and
            ``allow_fallback`` is false.
    """
    wanted = resolve_providers(provider)
    source: str | bytes = model if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise ArtifactError(f"ONNX model {model} does not exist; pass the path of a .onnx file made by `edgecnn export`.")
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():  # its "not in available provider names" warning: we check below
            warnings.simplefilter("ignore", UserWarning)
            session = ort.InferenceSession(source, sess_options=_session_options(threads), providers=wanted)
    except Exception as err:  # onnxruntime raises InvalidProtobuf, Fail, InvalidGraph, ... all mean: unusable file
        name = "the ONNX bytes" if isinstance(model, bytes) else str(model)
        raise ArtifactError(
            f"Cannot load {name} as an ONNX model ({type(err).__name__}: {str(err).strip()[:300]}); "
            "re-export it with `edgecnn export`."
        ) from err
    creation_s = time.perf_counter() - t0
    actual = list(session.get_providers())
    fallback = None
    if provider != "auto" and actual[0] != wanted[0]:
        fallback = (
            f"Asked for {provider} ({wanted[0]}) but the session runs on {actual[0]}; "
            f"this onnxruntime build offers {', '.join(ort.get_available_providers())}. "
        )
        if not allow_fallback:
            raise ProviderError(
                fallback + "Replace onnxruntime by onnxruntime-gpu (`pip uninstall onnxruntime && pip install "
                "onnxruntime-gpu`; never both) and check the CUDA/cuDNN libraries, or pass provider='cpu' (--provider cpu), "
                "or allow the fallback (allow_fallback=True, --allow-fallback)."
            )
        log.warning("%sFalling back as allowed.", fallback)
    return session, SessionInfo(provider, actual, fallback, creation_s)
