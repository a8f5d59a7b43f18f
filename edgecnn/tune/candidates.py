"""Every way to run every verified file of an export directory: :class:`Candidate`.

The files come from the directory's ``export_report.json``, read back typed
(:meth:`edgecnn.export.report.ExportReport.load`): a variant that failed its guard, or whose file
is gone, is not a candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgecnn.errors import ArtifactError
from edgecnn.export.report import REPORT_JSON, ExportReport, VariantResult
from edgecnn.runtime.backends import REGISTRY, get_backend
from edgecnn.runtime.deploy import FP32_FILE

if TYPE_CHECKING:
    from edgecnn.runtime.core import InferenceModel
    from edgecnn.runtime.options import RuntimeOptions
    from edgecnn.tune.config import TuneConfig

__all__ = ["Candidate", "read_export", "candidates", "export_row"]



@dataclass(frozen=True, kw_only=True)
class Candidate:
    """One way to run one file: the backend, OpenVINO's precision, IO binding."""

    file: str
    variant: str  # the export variant of the file: fp32, int8, fp16, ...
    backend: str = "onnxruntime"
    precision: str | None = None  # OpenVINO's execution precision
    io_binding: bool = False

    @property
    def name(self) -> str:
        if self.backend == "openvino":
            return f"{self.variant} openvino {self.precision or 'f32'}"
        if self.backend == "litert":
            return "int8 litert" if self.variant == "litert-int8" else f"{self.variant} litert"
        return f"{self.variant} onnxruntime" + (" iobinding" if self.io_binding else "")

    @property
    def quality_key(self) -> tuple[str, str, str | None]:
        """Configurations computing the same numbers share one quality check (IO binding changes no result)."""
        return self.file, self.backend, self.precision

    def runtime(self, *, threads: int | None, device: str) -> RuntimeOptions:
        """How this configuration runs (``device``: OpenVINO's; the other backends run on the CPU),
        without the settings of another backend (:meth:`RuntimeOptions.for_backend`)."""
        from edgecnn.runtime.options import RuntimeOptions

        typed = RuntimeOptions(threads=threads, precision=self.precision, io_binding=self.io_binding, device=device)
        return typed.for_backend(self.backend)

    def open(self, directory: Path, threads: int | None, device: str) -> InferenceModel:
        """The runtime core on this configuration.

        Raises:
            ArtifactError, ProviderError: from opening the file on its backend.
        """
        from edgecnn.runtime.core import InferenceModel

        return InferenceModel(directory / self.file, self.runtime(threads=threads, device=device))


def read_export(directory: Path) -> ExportReport:
    """The export report of ``directory``, typed.

    Raises:
        ArtifactError: for a directory that is not an export (not a folder, no report, an
            unreadable one).
    """
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory; pass the output folder of `edgecnn export`.")
    if not (directory / REPORT_JSON).exists():
        raise ArtifactError(f"{directory} has no {REPORT_JSON}: tune an export directory (`edgecnn export MODEL "
                            f"--quantize int8 --out {directory}` makes one).")
    return ExportReport.load(directory)


def _backends(config: TuneConfig, notes: list[str]) -> tuple[str, ...]:
    """The backends asked for; by default every one installed (the registry's), a note for the others."""
    if config.backends is not None:
        return config.backends
    for backend in REGISTRY.values():
        if not backend.installed():
            notes.append(f"{backend.name} is not installed (pip install 'edgecnn[{backend.extra}]'): not measured.")
    return tuple(name for name, backend in REGISTRY.items() if backend.installed())


def _verified_files(directory: Path, report: ExportReport, notes: list[str]) -> list[tuple[str, str]]:
    """(file, variant) of each variant that passed and is in the directory."""
    files = []
    for v in report.variants:
        if not v.file or not v.passed:
            continue
        if not (directory / v.file).is_file():
            notes.append(f"{v.file} is in the export report but not in {directory}: skipped.")
            continue
        files.append((v.file, v.precision or Path(v.file).stem))
    if not any(f == FP32_FILE for f, _ in files):
        raise ArtifactError(f"{directory} has no {FP32_FILE}: the fp32 model is the reference every variant is "
                            "judged against; export again.")
    return files


def candidates(directory: Path, report: ExportReport, config: TuneConfig, notes: list[str]) -> list[Candidate]:
    """Every way to run every verified variant of the directory on the backends asked for.

    Raises:
        ArtifactError: when the fp32 ``model.onnx``, the reference, is not among them.
    """
    backends = _backends(config, notes)
    out = []
    for name, variant in _verified_files(directory, report, notes):
        if name.endswith(get_backend("litert").suffix):
            if "litert" in backends:
                out.append(Candidate(file=name, variant=variant, backend="litert"))
            continue
        if "onnxruntime" in backends:
            out += [Candidate(file=name, variant=variant), Candidate(file=name, variant=variant, io_binding=True)]
        if "openvino" in backends:
            out.append(Candidate(file=name, variant=variant, backend="openvino", precision="f32"))
            if variant in ("fp32", "int8"):  # bf16 execution: OpenVINO's own default on CPUs that have it
                out.append(Candidate(file=name, variant=variant, backend="openvino", precision="bf16"))
    return out


def export_row(report: ExportReport, file: str) -> dict[str, object] | None:
    """What the export measured of ``file`` (its accuracy, agreement, size), for the tune report."""
    v: VariantResult | None = next((v for v in report.variants if v.file == file), None)
    if v is None:
        return None
    return {"precision": v.precision, "accuracy": v.accuracy, "accuracy_delta_pp": v.accuracy_delta_pp,
            "top1_agreement": v.top1_agreement, "metric": v.metric, "metric_value": v.metric_value,
            "size_bytes": v.size_bytes}
