"""``deploy.json``: the configuration ``edgecnn tune`` picked for an export directory.

An export directory holds one ``.onnx`` file per variant (``model.onnx``, ``model.int8.onnx``,
...). ``edgecnn tune`` measures them on this machine and writes ``deploy.json`` naming the file
and how to run it: backend, OpenVINO device and precision, threads, IO binding
(:meth:`Deployment.runtime`: a :class:`~edgecnn.runtime.options.RuntimeOptions`).
:meth:`InferenceModel.from_dir <edgecnn.runtime.InferenceModel.from_dir>`, ``edgecnn predict``
and ``edgecnn serve`` open an export directory through :func:`resolve_dir`, which follows
``deploy.json`` when it is there (and says so), and otherwise takes the fp32 ``model.onnx``;
the options the caller set win, field by field (``stored.merged(typed)``).

A ``deploy.json`` is only followed while it still describes the directory: the file it names
must exist with the SHA-256 it was tuned on (a re-export removes ``deploy.json``, and a
replaced file makes it stale). Tuned on another CPU, it is followed with a warning: the ranking
of backends and thread counts is a property of the machine.
"""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgecnn._files import sha256_file
from edgecnn.errors import ArtifactError
from edgecnn.runtime.backends import BACKENDS, get_backend
from edgecnn.runtime.options import OV_PRECISIONS, RuntimeOptions

log = logging.getLogger(__name__)

__all__ = ["DEPLOY_FILE", "TUNE_REPORT", "DEPLOY_SCHEMA", "FP32_FILE", "Deployment", "read_deployment",
           "current_deployment", "resolve_dir"]

DEPLOY_FILE = "deploy.json"
TUNE_REPORT = "tune_report.json"  # everything edgecnn tune measured, beside deploy.json
DEPLOY_SCHEMA = "edgecnn.deploy/1"
FP32_FILE = "model.onnx"
# The RuntimeOptions fields deploy.json sets (a caller's own value wins).
_DEPLOY_OPTIONS = ("backend", "device", "precision", "threads", "io_binding")


@dataclass(frozen=True)
class Deployment:
    """One tuned configuration: which file of the directory, and how to run it."""

    file: str
    variant: str
    backend: str = "onnxruntime"
    device: str = "CPU"
    precision: str | None = None  # OpenVINO's execution precision (None: f32 / onnxruntime)
    threads: int | None = None
    io_binding: bool = False
    batch: int = 1
    objective: str = "latency"
    sha256: str = ""
    measured: dict[str, Any] = field(default_factory=dict)  # p50_ms, throughput_ips, accuracy, drop_pp, size_bytes
    machine: dict[str, Any] = field(default_factory=dict)  # cpu model and SIMD flags of the tuning machine
    created: str = ""
    schema: str = DEPLOY_SCHEMA

    def runtime(self) -> RuntimeOptions:
        """How this configuration runs its file (IO binding off is left unset: the runtime's default,
        off on the CPU).

        Raises:
            ArtifactError: for a device or precision no backend takes (a hand-edited file).
        """
        try:
            return RuntimeOptions(backend=self.backend, device=self.device, precision=self.precision,
                                  threads=self.threads, io_binding=True if self.io_binding else None)
        except ValueError as err:  # ConfigError
            raise ArtifactError(f"{DEPLOY_FILE} names options no backend takes ({err}); run `edgecnn tune` "
                                "again.") from None

    def describe(self) -> str:
        """``model.int8.onnx on openvino (f32, CPU), 1 thread``: for log lines."""
        return f"{self.file} on {self.runtime().describe()}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = DEPLOY_FILE) -> Deployment:
        """Raises: ArtifactError for another schema, a missing field or a value of the wrong type."""
        if not isinstance(data, Mapping) or data.get("schema") != DEPLOY_SCHEMA:
            raise ArtifactError(f"{where} is not an {DEPLOY_SCHEMA} file; run `edgecnn tune` on the directory again.")
        known = {f.name for f in fields(cls)}
        try:
            dep = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as err:
            raise ArtifactError(f"{where} is incomplete ({err}); run `edgecnn tune` on the directory again.") from None
        name = dep.file
        if not isinstance(name, str) or not name.endswith((".onnx", ".tflite")) or Path(name).name != name:
            raise ArtifactError(f"{where} names {name!r}, not a model file of its directory; run `edgecnn tune` again.")
        if dep.threads is not None and (type(dep.threads) is not int or not 1 <= dep.threads <= _MAX_THREADS):
            raise ArtifactError(f"{where} has threads={str(dep.threads)[:20]}, not 1-{_MAX_THREADS}; run `edgecnn "
                                "tune` again.")
        if type(dep.batch) is not int or not 1 <= dep.batch <= 4096:
            raise ArtifactError(f"{where} has batch={str(dep.batch)[:20]}, not 1-4096; run `edgecnn tune` again.")
        for key, allowed in (("backend", BACKENDS), ("precision", (None, *OV_PRECISIONS)),
                             ("io_binding", (True, False)), ("sha256", None), ("device", None), ("variant", None)):
            value = getattr(dep, key)
            if (allowed is not None and value not in allowed) or (allowed is None and not isinstance(value, str)):
                raise ArtifactError(f"{where} has {key}={str(value)[:40]!r}; run `edgecnn tune` again.")
        return dep


_MAX_THREADS = 1024
_MAX_BYTES = 1 << 20  # a deploy.json is a few hundred bytes


def read_deployment(directory: str | Path) -> Deployment | None:
    """The directory's ``deploy.json``, or None when it has none.

    Only a regular file of at most 1 MiB is read (a FIFO would block, a huge or deeply nested
    file would exhaust the parser); its values are bounded (threads, batch, backend ...).

    Raises:
        ArtifactError: if it is there but unreadable or not a deploy file.
    """
    path = Path(directory) / DEPLOY_FILE
    again = f"delete it or run `edgecnn tune {directory}` again"
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ArtifactError(f"Cannot read {path}: {err.strerror or err}.") from None
    if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_BYTES:
        raise ArtifactError(f"{path} is not a regular file of at most {_MAX_BYTES:,} bytes; {again}.")
    try:
        with open(path, "rb") as fh:
            text = fh.read(_MAX_BYTES + 1).decode("utf-8")
        data = json.loads(text)
    except OSError as err:
        raise ArtifactError(f"Cannot read {path}: {err.strerror or err}.") from None
    except (ValueError, RecursionError):  # invalid UTF-8 or JSON, or nested beyond the parser's depth
        raise ArtifactError(f"{path} is not valid JSON; {again}.") from None
    return Deployment.from_dict(data, where=str(path))


def _machine_differs(dep: Deployment) -> str | None:
    from edgecnn.runtime.cpu import cpu_model_and_flags

    cpu, flags = cpu_model_and_flags()
    tuned_cpu, tuned_simd = dep.machine.get("cpu"), set(dep.machine.get("simd") or ())
    here_simd = {f for f in flags if f in _RANKING_FLAGS}
    if tuned_cpu and (tuned_cpu != cpu or {f for f in tuned_simd if f in _RANKING_FLAGS} != here_simd):
        return f"tuned on {tuned_cpu}, running on {cpu}"
    return None


# CPU features that change which variant or backend is fastest.
_RANKING_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "asimd")


def current_deployment(directory: str | Path) -> Deployment | None:
    """The directory's ``deploy.json`` when it still describes the directory; None when there is
    none, or (with a warning) when the file it names is gone or changed since it was tuned.

    Raises:
        ArtifactError: for an unreadable ``deploy.json``.
    """
    root = Path(directory)
    dep = read_deployment(root)
    if dep is None:
        return None
    stale = _why_stale(root, dep)
    if stale:
        log.warning("Ignoring %s: %s; using the verified %s. Run `edgecnn tune %s` again.", root / DEPLOY_FILE, stale,
                    FP32_FILE, root)
        return None
    return dep


def _why_stale(root: Path, dep: Deployment) -> str | None:
    """Why ``deploy.json`` no longer describes the directory (None: it does)."""
    path = root / dep.file
    if not path.is_file():
        return f"it names {dep.file}, which is not there"
    if path.resolve().parent != root.resolve():
        return f"{dep.file} is a link leading out of {root}"
    if not dep.sha256:
        return "it records no SHA-256 of the file it names"
    if sha256_file(path) != dep.sha256:
        return f"{dep.file} changed since it was tuned"
    if not get_backend(dep.backend).installed():
        return f"it runs {dep.file} on {dep.backend}, which is not installed here"
    return None


def resolve_dir(directory: str | Path, typed: RuntimeOptions | None = None) -> tuple[Path, RuntimeOptions, str]:
    """The model file of an export directory, the runtime options to open it with, and one line
    saying what was chosen and why.

    ``typed`` holds what the caller asked for itself (``backend``, ``threads``, ...): it wins over
    ``deploy.json``, field by field (:meth:`RuntimeOptions.merged
    <edgecnn.runtime.options.RuntimeOptions.merged>`).

    Raises:
        ArtifactError: for a directory with neither a usable ``deploy.json`` nor a ``model.onnx``,
            or an unreadable ``deploy.json``.
    """
    root = Path(directory)
    typed = typed or RuntimeOptions()
    dep = current_deployment(root)
    if dep is not None:
        chosen = dep.runtime().merged(typed)
        chosen = chosen.for_backend(chosen.backend or "onnxruntime")  # e.g. IO binding is onnxruntime's alone
        other = _machine_differs(dep)
        if other:
            log.warning("%s was %s: run `edgecnn tune %s` on this machine for its own pick.",
                        root / DEPLOY_FILE, other, root)
        given = sorted(k for k in typed.to_dict() if k in _DEPLOY_OPTIONS)
        overridden = f" ({', '.join(given)} as given)" if given else ""
        return root / dep.file, chosen, f"Using {root / DEPLOY_FILE}: {dep.file} on {chosen.describe()}{overridden}."
    fp32 = root / FP32_FILE
    if not fp32.is_file():
        raise ArtifactError(f"{root} has no {FP32_FILE} and no usable {DEPLOY_FILE}: pass an .onnx file, or export "
                            f"into it with `edgecnn export ... --out {root}`.")
    return fp32, typed, (f"{root} has no {DEPLOY_FILE}: using {FP32_FILE}; `edgecnn tune {root}` measures "
                         "every variant and backend here and picks the fastest.")
