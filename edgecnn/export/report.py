"""The export report: what was exported, how it was verified, what each variant costs."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecnn.card import atomic_write_text

__all__ = ["VariantResult", "ExportReport"]

_umask = os.umask(0)
os.umask(_umask)
_FILE_MODE = 0o666 & ~_umask


@dataclass
class VariantResult:
    """One exported file (fp32 or a quantized variant) and its measured cost."""

    precision: str
    file: str | None  # file name in the output folder; None when it failed and was not written
    size_bytes: int
    accuracy: float | None  # on the held-out test set; None without labels
    accuracy_delta_pp: float | None  # vs fp32 ONNX, percentage points
    top1_agreement: float  # vs fp32 ONNX (vs Keras for fp32)
    max_abs_diff: float
    mean_abs_diff: float
    images: int
    seconds: float
    passed: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=dict)


@dataclass
class ExportReport:
    """Everything ``export_report.json`` holds; :meth:`to_markdown` renders the table."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def variant(self, precision: str) -> VariantResult:
        return next(v for v in self.variants if v.precision == precision)

    def to_markdown(self) -> str:
        lines = [f"# Export report: {self.card_name}", "",
                 f"- source: `{self.source}` (sha256 `{self.source_sha256[:16]}...`)",
                 f"- created: {self.created}; layout {self.layout}; opset {self.opset}; status **{self.status}**",
                 f"- test set: {self.test_set.get('description', '-')} ({self.test_set.get('images', 0)} images)",
                 f"- fp32 parity with the source ({self.parity.get('images', 0)} held-out images): "
                 f"max |diff| {self.parity.get('max_abs_diff', 0):.2e}, mean |diff| {self.parity.get('mean_abs_diff', 0):.2e}, "
                 f"top-1 agreement {100 * self.parity.get('top1_agreement', 0):.2f}%", ""]
        if self.max_accuracy_drop_pp is not None:
            lines += [f"Accuracy guard: a variant may lose at most {self.max_accuracy_drop_pp:g} pp.", ""]
        lines += _table(self.variants)
        if self.errors:
            lines += ["", "## Errors", ""] + [f"- {e}" for e in self.errors]
        if self.triton:
            lines += ["", f"Triton model repository: `{self.triton}`"]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: Path) -> tuple[Path, Path]:
        """Write ``export_report.json`` and ``export_report.md`` into ``out_dir`` (atomically)."""
        out_dir = Path(out_dir)
        j = atomic_write_text(out_dir / "export_report.json", json.dumps(self.to_dict(), indent=2) + "\n")
        m = atomic_write_text(out_dir / "export_report.md", self.to_markdown())
        for p in (j, m):
            os.chmod(p, _FILE_MODE)  # atomic_write_text's mkstemp leaves 0600
        return j, m


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _table(variants: list[VariantResult]) -> list[str]:
    fp32 = next((v for v in variants if v.precision == "fp32"), None)
    rows = ["| precision | file | size | ratio | accuracy | delta (pp) | top-1 agreement | max abs diff | status |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for v in variants:
        ratio = f"{fp32.size_bytes / v.size_bytes:.2f}x" if fp32 and v.size_bytes else "-"
        delta = "-" if v.accuracy_delta_pp is None else f"{v.accuracy_delta_pp:+.2f}"
        rows.append(f"| {v.precision} | {v.file or '(not written)'} | {v.size_bytes / 1024:.1f} KiB | {ratio} | "
                    f"{_pct(v.accuracy)} | {delta} | {_pct(v.top1_agreement)} | {v.max_abs_diff:.2e} | "
                    f"{'ok' if v.passed else 'FAILED'} |")
    return rows
