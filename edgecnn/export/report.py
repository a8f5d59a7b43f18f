"""The export report: what was exported, how it was verified, what each variant costs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecnn._files import atomic_write_text
from edgecnn.errors import ArtifactError

if TYPE_CHECKING:
    from edgecnn.export.accuracy_aware import AccuracyAwareSummary

__all__ = ["VariantResult", "SelfContainedResult", "ExportReport", "metric_text", "interval_text", "status_text",
           "REPORT_JSON", "REPORT_MARKDOWN"]

REPORT_JSON = "export_report.json"
REPORT_MARKDOWN = "export_report.md"



@dataclass(frozen=True, kw_only=True)
class VariantResult:
    """One exported file (fp32 or a quantized variant) and its measured cost."""

    precision: str
    file: str | None  # file name in the output folder; None when it failed and was not written
    size_bytes: int
    accuracy: float | None  # on the held-out test set; None without labels
    accuracy_delta_pp: float | None  # vs fp32 ONNX, percentage points
    top1_agreement: float | None  # vs fp32 ONNX (vs the source for fp32); classifiers only
    max_abs_diff: float  # over every output
    mean_abs_diff: float
    images: int
    seconds: float
    passed: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=dict)
    metric: str | None = None  # the task metric vs fp32 (edgecnn.export.verify.task_agreement), e.g. top1_agreement
    metric_value: float | None = None
    guard: str = ""  # how the variant was judged, in words
    accuracy_aware: AccuracyAwareSummary | None = None  # --accuracy-aware: nodes kept in float, metrics, size, latency
    verdict: dict[str, Any] | None = None  # the guard's checks with their 95% intervals (edgecnn.export.guard)

    @classmethod
    def from_dict(cls, data: Any) -> VariantResult:
        """One variant of ``export_report.json`` read back (the inverse of ``asdict``).

        Raises:
            ArtifactError: for anything but a dict of this type's fields (unknown or missing ones),
                its accuracy-aware summary included.
        """
        if isinstance(data, dict) and isinstance(data.get("accuracy_aware"), dict):
            from edgecnn.export.accuracy_aware import AccuracyAwareSummary

            data = {**data, "accuracy_aware": AccuracyAwareSummary.from_dict(data["accuracy_aware"])}
        return _from_fields(cls, data)


@dataclass(frozen=True, kw_only=True)
class SelfContainedResult:
    """One self-contained file (``--self-contained``) and its check against the two-part path: the
    variant's file with the runtime's own pre/post-processing, on the same held-out images.

    ``metric``: ``top1_identical`` (classify: share of images with the same top-1), ``detections_matched``
    (detect: share of images whose boxes match one to one, same class, IoU >= 0.99) or ``miou``
    (segment: mean IoU of the class maps); ``passed`` when it is 1 (mIoU: >= 0.999).
    """

    precision: str  # the variant it was made from
    file: str | None  # None when it failed and was not written
    size_bytes: int
    images: int
    metric: str
    value: float
    passed: bool
    seconds: float
    detail: str = ""  # what was compared, in words (how many boxes, the worst IoU, ...)

    @classmethod
    def from_dict(cls, data: Any) -> SelfContainedResult:
        """Read back from ``export_report.json``.

        Raises:
            ArtifactError: for anything but a dict of this type's fields.
        """
        return _from_fields(cls, data)


@dataclass(frozen=True, kw_only=True)
class ExportReport:
    """Everything ``export_report.json`` holds; :meth:`to_markdown` renders the table.

    Filled in step by step as the export runs (edgecnn.export.job), written last.
    """

    source: str
    source_sha256: str
    out_dir: str
    card_name: str
    layout: str
    opset: int | None
    parity: dict[str, Any]
    variants: list[VariantResult]
    simplify: dict[str, Any] = field(default_factory=dict)
    test_set: dict[str, Any] = field(default_factory=dict)
    max_accuracy_drop_pp: float | None = None
    triton: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    status: str = "ok"
    errors: list[str] = field(default_factory=list)
    source_kind: str = ""
    task: str = "classify"
    notes: list[str] = field(default_factory=list)
    assumed: str | None = None  # what was assumed about a model without a card (one line)
    guard: str = "lenient"  # what an unsure verdict does: lenient passes it, strict refuses it
    self_contained: list[SelfContainedResult] = field(default_factory=list)  # --self-contained files and their check

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ExportReport:
        """The report :meth:`to_dict` wrote, read back, its variants typed.

        Raises:
            ArtifactError: for anything but a dict of this type's fields, variants included.
        """
        if not isinstance(data, dict) or not isinstance(data.get("variants"), list):
            raise ArtifactError("not a dict with a list of variants")
        extra = data.get("self_contained", [])
        if not isinstance(extra, list):
            raise ArtifactError("self_contained is not a list")
        return _from_fields(cls, {**data, "variants": [VariantResult.from_dict(v) for v in data["variants"]],
                                  "self_contained": [SelfContainedResult.from_dict(v) for v in extra]})

    @classmethod
    def load(cls, out_dir: str | Path) -> ExportReport:
        """Read ``export_report.json`` back from an export directory.

        Raises:
            ArtifactError: when the directory has none, or it is unreadable or not an export report
                of this version of edgecnn.
        """
        path = Path(out_dir) / REPORT_JSON
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArtifactError(f"{out_dir} has no {REPORT_JSON}; export again.") from None
        except (ValueError, OSError, RecursionError) as err:
            raise ArtifactError(f"{path} is unreadable ({type(err).__name__}); export again.") from None
        try:
            return cls.from_dict(data)
        except ArtifactError as err:
            raise ArtifactError(f"{path} is not an edgecnn export report ({err}); export again.") from None

    def variant(self, precision: str) -> VariantResult:
        return next(v for v in self.variants if v.precision == precision)

    def to_markdown(self) -> str:
        agree = self.parity.get("top1_agreement")
        kind = f" ({self.source_kind})" if self.source_kind else ""
        lines = [f"# Export report: {self.card_name}", "",
                 f"- source: `{self.source}`{kind} (sha256 `{self.source_sha256[:16]}...`)",
                 f"- created: {self.created}; task {self.task}; layout {self.layout}; opset {self.opset}; "
                 f"status **{self.status}**",
                 f"- test set: {self.test_set.get('description', '-')} ({self.test_set.get('images', 0)} images, "
                 f"{'labelled' if self.test_set.get('labeled') else 'no labels'})",
                 f"- fp32 parity with the source ({self.parity.get('images', 0)} held-out images, "
                 f"{self.parity.get('outputs', 1)} output(s)): max |diff| {self.parity.get('max_abs_diff', 0):.2e}, "
                 f"mean |diff| {self.parity.get('mean_abs_diff', 0):.2e}"
                 + ("" if agree is None else f", top-1 agreement {100 * agree:.2f}%")]
        lines += [f"- {note}" for note in ([self.assumed] if self.assumed else []) + self.notes] + [""]
        if self.max_accuracy_drop_pp is not None:
            basis = ("accuracy" if self.test_set.get("labeled") else
                     "top-1 agreement with fp32 (no labels)" if self.task == "classify" else "the task metric vs fp32")
            lines += [f"Accuracy guard: a variant may lose at most {self.max_accuracy_drop_pp:g} pp of {basis}, judged "
                      f"with the 95% interval of the images it ran on; a variant the images cannot settle is "
                      f"{'passed' if self.guard == 'lenient' else 'refused'} (--guard {self.guard}).", ""]
        lines += _table(self.variants)
        judged = [f"- {v.precision}: {v.guard}" for v in self.variants if v.precision != "fp32" and v.guard]
        lines += ["", "How each variant was judged:", ""] + judged if judged else []
        for v in self.variants:
            if v.accuracy_aware:
                lines += ["", f"## Accuracy-aware {v.precision}", ""] + v.accuracy_aware.markdown_lines()
        if self.self_contained:
            lines += ["", "## Self-contained files", "", "uint8 RGB NHWC pixels in, the task's answers out "
                      "(edgecnn.export.self_contained), each checked against its variant run by the runtime:", "",
                      "| from | file | size | images | check | status |", "|---|---|---:|---:|---|---|"]
            lines += [f"| {v.precision} | {v.file or '(not written)'} | {v.size_bytes / 1024:.1f} KiB | {v.images} | "
                      f"{v.metric.replace('_', ' ')} {v.value:.4f}{'; ' + v.detail if v.detail else ''} | "
                      f"{'ok' if v.passed else 'FAILED'} |" for v in self.self_contained]
        if self.errors:
            lines += ["", "## Errors", ""] + [f"- {e}" for e in self.errors]
        if self.triton:
            lines += ["", f"Triton model repository: `{self.triton}`"]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: Path) -> tuple[Path, Path]:
        """Write ``export_report.json`` and ``export_report.md`` into ``out_dir`` (atomically)."""
        out_dir = Path(out_dir)
        j = atomic_write_text(out_dir / REPORT_JSON, json.dumps(self.to_dict(), indent=2) + "\n")
        m = atomic_write_text(out_dir / REPORT_MARKDOWN, self.to_markdown())
        return j, m


def _from_fields(cls: Any, data: Any) -> Any:
    """``cls(**data)``, refusing missing fields with one line that names them. Fields this version
    does not know are left out: a report written by a newer edgecnn, which added a field, still
    reads here (the report has no schema version of its own; its fields only ever get added)."""
    if not isinstance(data, dict):
        raise ArtifactError(f"a {cls.__name__} is a dict, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as err:  # a required field missing
        raise ArtifactError(str(err).replace(".__init__()", "")) from None


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _table(variants: list[VariantResult]) -> list[str]:
    fp32 = next((v for v in variants if v.precision == "fp32"), None)
    rows = ["| precision | file | size | ratio | accuracy | delta (pp) | vs fp32 | guard: loss [95% interval] | "
            "max abs diff | status |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for v in variants:
        ratio = f"{fp32.size_bytes / v.size_bytes:.2f}x" if fp32 and v.size_bytes else "-"
        delta = "-" if v.accuracy_delta_pp is None else f"{v.accuracy_delta_pp:+.2f}"
        rows.append(f"| {v.precision} | {v.file or '(not written)'} | {v.size_bytes / 1024:.1f} KiB | {ratio} | "
                    f"{_pct(v.accuracy)} | {delta} | {metric_text(v)} | {interval_text(v)} | {v.max_abs_diff:.2e} | "
                    f"{status_text(v)} |")
    return rows


def metric_text(v: VariantResult) -> str:
    """``top-1 agreement 99.33%``: the variant's task metric against fp32 (``-`` for fp32 itself)."""
    if v.metric is not None and v.metric_value is not None:
        return f"{v.metric.replace('_', ' ').replace('top1', 'top-1')} {100 * v.metric_value:.2f}%"
    if v.precision == "fp32" or v.top1_agreement is None:
        return "-"
    return f"top-1 agreement {100 * v.top1_agreement:.2f}%"


def interval_text(v: VariantResult) -> str:
    """``+0.12 pp [-0.30, +0.55]``: the guard's deciding check (the worst outcome) and its 95% interval."""
    checks = (v.verdict or {}).get("checks") or []
    if not checks:
        return "-"
    from edgecnn.export.guard import Check

    order = ("kept", "unsure", "exceeded")
    c = Check.from_dict(max(checks, key=lambda c: order.index(c["outcome"])))
    return f"{c.value_text()} {c.interval_text()}"


def status_text(v: VariantResult) -> str:
    """``ok``, ``ok (unsure)`` when the images could not settle the budget, or ``FAILED``."""
    if not v.passed:
        return "FAILED"
    return "ok (unsure)" if (v.verdict or {}).get("outcome") == "unsure" else "ok"
