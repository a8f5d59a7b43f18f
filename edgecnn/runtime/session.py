"""Opening a model on a backend, and where onnxruntime ran each node.

:func:`create_session` is the one way a model file becomes a session: it picks the backend
(:meth:`RuntimeOptions.backend_for <edgecnn.runtime.options.RuntimeOptions.backend_for>`), lets
it refuse what it cannot honour, and opens the file with it (:mod:`edgecnn.runtime.backends`:
onnxruntime with explicit providers and a fallback check, OpenVINO, LiteRT).

A session can run on the CUDA provider and still execute some nodes on the CPU (onnxruntime
assigns each node to the first provider that has a kernel for it, and inserts device copies
around the rest). :func:`node_placement` reports where every node ran, from onnxruntime's own
profiling trace, so a benchmark can say "nodes on CPU: 0 of 65" instead of assuming it.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgecnn.errors import ArtifactError
from edgecnn.runtime.backends import BACKENDS, get_backend
from edgecnn.runtime.backends.base import Session, SessionInfo
from edgecnn.runtime.backends.onnxruntime import (
    GPU_INSTALL,
    OrtSession,
    onnxruntime_conflict,
    ort_error,
    preload_cuda_libraries,
    resolve_providers,
)
from edgecnn.runtime.options import CONV_ALGO_SEARCH, CudaOptions, RuntimeOptions

# Re-exported: where callers have always found them (their homes are options.py and backends/).
__all__ = ["CONV_ALGO_SEARCH", "CudaOptions", "NodePlacement", "SessionInfo", "create_session",
           "resolve_providers", "node_placement", "parse_profile", "preload_cuda_libraries", "onnxruntime_conflict",
           "GPU_INSTALL", "ort_error", "BACKENDS"]


def create_session(model: str | Path | bytes, options: RuntimeOptions | None = None, *,
                   profile_dir: str | Path | None = None, **runtime: Any) -> tuple[Session, SessionInfo]:
    """Open a model on the backend the options name (else the one its file needs) and check that
    the backend honours them.

    Args:
        model: an ``.onnx`` or ``.tflite`` path, or a serialized ONNX model.
        options: how to run it (:class:`~edgecnn.runtime.options.RuntimeOptions`; None: the defaults).
        profile_dir: turn on onnxruntime's profiling, writing its JSON trace into this folder
            (see :func:`node_placement`).
        **runtime: :class:`~edgecnn.runtime.options.RuntimeOptions` fields set over ``options``
            (``provider="cpu", threads=2``).

    Raises:
        ArtifactError: if the file is missing or not a loadable model.
        ProviderError: for a backend that cannot read this file or honour these options, or a
            session that runs on another provider than requested without ``allow_fallback``.
        ConfigError: for options a backend does not have (IO binding outside onnxruntime).
    """
    options = RuntimeOptions.given(options, runtime, what="create_session()")
    backend = get_backend(options.backend_for(model))
    return backend.open(model, options, profile_dir=profile_dir)


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


def node_placement(model: str | Path | bytes, options: RuntimeOptions | None = None, *, batch: int = 1,
                   shapes: dict[str, list[int]] | None = None, **runtime: Any) -> NodePlacement:
    """Run ``model`` once on zeros in an onnxruntime profiling session and report where each node ran.

    ``shapes`` gives the shape to feed an input by name (the card's input size: a model with a
    dynamic height and width may not run at all on the 1x1 its other dynamic axes get).

    The profiling session is a separate one (profiling slows every run), with the same provider,
    fallback rule and CUDA options except CUDA graphs, which do not change placement and hide the
    nodes.

    Raises:
        ArtifactError, ProviderError: as :func:`create_session`.
    """
    import numpy as np

    from edgecnn.runtime.backends.base import numpy_dtype

    options = RuntimeOptions.given(options, runtime, what="node_placement()")
    cuda = options.cuda
    if cuda is not None and cuda.cuda_graph:
        cuda = replace(cuda, cuda_graph=False)
    profiled = RuntimeOptions(provider=options.provider, allow_fallback=options.allow_fallback, cuda=cuda)
    with tempfile.TemporaryDirectory(prefix="edgecnn-profile-") as tmp:
        session, _ = get_backend("onnxruntime").open(model, profiled, profile_dir=tmp)
        feed = {}
        for inp in session.get_inputs():
            shape = (shapes or {}).get(inp.name) or \
                [d if isinstance(d, int) and d > 0 else (batch if i == 0 else 1) for i, d in enumerate(inp.shape)]
            feed[inp.name] = np.zeros(shape, dtype=numpy_dtype(inp.type))
        session.run(None, feed)
        assert isinstance(session, OrtSession)  # the onnxruntime backend's: its trace is what is parsed
        path = session.end_profiling()
        return parse_profile(path)
