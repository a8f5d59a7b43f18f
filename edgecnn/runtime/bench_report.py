"""What ``edgecnn bench`` measured: :class:`BenchResult` per point, :class:`BenchReport` per run.

The report renders itself as JSON (with the machine fingerprint and the node placement of each
variant), CSV (:data:`CSV_FIELDS`), the terminal's table and a p50-by-batch plot;
:func:`compare_notes` states each quantized variant's speed against fp32 in words.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgecnn.errors import ArtifactError

__all__ = ["BenchResult", "BenchReport", "CSV_FIELDS", "compare_notes"]

CSV_FIELDS = ["model", "variant", "runner", "precision", "provider", "batch", "threads", "runs", "mean_ms", "std_ms",
              "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "throughput_ips", "session_s", "peak_rss_mb"]


@dataclass(frozen=True, kw_only=True)
class BenchResult:
    """One measured point: a variant at one batch size and thread count."""

    model: str
    variant: str
    runner: str  # onnxruntime, keras.predict, keras.tf_function, litert
    precision: str
    provider: str  # the provider that actually ran it
    batch: int
    threads: int
    stats: dict[str, float]
    session_s: float | None = None
    peak_rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)
    placement: dict[str, Any] | None = None  # NodePlacement.to_dict() of the model (JSON: report "placement")

    def row(self) -> dict[str, Any]:
        return {"model": self.model, "variant": self.variant, "runner": self.runner, "precision": self.precision,
                "provider": self.provider, "batch": self.batch, "threads": self.threads, **self.stats,
                "session_s": self.session_s, "peak_rss_mb": self.peak_rss_mb}

    def to_dict(self) -> dict[str, Any]:
        """Every field, as :meth:`from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchResult:
        """A result from its fields (the inverse of :meth:`to_dict`), each of its type.

        Raises:
            ArtifactError: for an unknown or missing field or a value of the wrong type, in one line.
        """
        if not isinstance(data, Mapping):
            raise ArtifactError(f"A bench result is a mapping of its fields, not a {type(data).__name__}.")
        known = [f.name for f in fields(cls)]
        unknown = [k for k in data if k not in known]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), known, 1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; its fields: {', '.join(known)}"
            raise ArtifactError(f"A bench result has no field {str(unknown[0])[:40]!r}{hint}.")
        missing = [f.name for f in fields(cls) if f.name not in data and f.default is MISSING
                   and f.default_factory is MISSING]
        if missing:
            raise ArtifactError(f"A bench result needs {', '.join(missing)}; got {', '.join(map(str, data))}.")
        for key, value in data.items():
            if not _FIELD_CHECKS[key](value):
                raise ArtifactError(f"A bench result's {key} is {str(value)[:40]!r} ({type(value).__name__}), "
                                    f"not {_FIELD_TYPES[key]}.")
        return cls(**data)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_FIELD_TYPES = {"model": "str", "variant": "str", "runner": "str", "precision": "str", "provider": "str",
                "batch": "int", "threads": "int", "stats": "dict[str, float]", "session_s": "float | None",
                "peak_rss_mb": "float | None", "notes": "list[str]", "placement": "dict | None"}
_FIELD_CHECKS: dict[str, Callable[[Any], bool]] = {
    **dict.fromkeys(("model", "variant", "runner", "precision", "provider"), lambda v: isinstance(v, str)),
    **dict.fromkeys(("batch", "threads"), lambda v: type(v) is int),
    "stats": lambda v: isinstance(v, dict) and all(isinstance(k, str) and _number(x) for k, x in v.items()),
    **dict.fromkeys(("session_s", "peak_rss_mb"), lambda v: v is None or _number(v)),
    "notes": lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
    "placement": lambda v: v is None or isinstance(v, dict),
}

@dataclass(frozen=True, kw_only=True)
class BenchReport:
    """All results of one ``edgecnn bench`` run plus the machine fingerprint."""

    machine: dict[str, Any]
    config: dict[str, Any]
    results: list[BenchResult]
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "edgecnn.bench/1", "machine": self.machine, "config": self.config,
                "results": [{**r.row(), "notes": r.notes} for r in self.results], "notes": self.notes,
                "placement": self.placements()}

    def placements(self) -> dict[str, dict[str, Any]]:
        """Node placement per variant (and provider), for the variants that measured it."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.results:
            if r.placement is not None:
                out.setdefault(f"{r.variant} [{r.provider.replace('ExecutionProvider', '')}]", r.placement)
        return out

    def placement_lines(self) -> list[str]:
        """``nodes on CPU: N of M (x%)`` per variant, for the terminal."""
        return [f"{name}: {p['summary']}" for name, p in self.placements().items()]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for r in self.results:
            writer.writerow({k: _fmt_csv(v) for k, v in r.row().items()})
        return buf.getvalue()

    def table_rows(self) -> tuple[list[str], list[list[str]]]:
        cols = ["variant", "runner", "provider", "batch", "thr", "mean ms", "std", "min", "p50", "p90", "p99",
                "max", "img/s", "session s", "peak MB"]
        rows = []
        for r in self.results:
            s = r.stats
            rows.append([r.variant, r.runner, r.provider.replace("ExecutionProvider", ""), str(r.batch), str(r.threads)]
                        + [_fmt_ms(s[k])
                           for k in ("mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")]
                        + [f"{s['throughput_ips']:,.0f}", "-" if r.session_s is None else f"{r.session_s:.3f}",
                           "-" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f}"])
        return cols, rows

    def plot(self, path: str | Path) -> Path:
        """PNG of p50 latency by batch size, one line per variant/runner/threads (needs matplotlib)."""
        from edgecnn._optional import pyplot

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 4.5))
        series: dict[str, list[tuple[int, float]]] = {}
        for r in self.results:
            series.setdefault(f"{r.variant} [{r.runner}, {r.threads}t]", []).append((r.batch, r.stats["p50_ms"]))
        for name, pts in series.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="p50 latency (ms)",
               title=f"edgecnn bench - {self.machine.get('cpu', '?')}")
        batches = sorted({r.batch for r in self.results})
        ax.set_xticks(batches, [str(b) for b in batches])  # the measured sizes, not the log axis' 2, 3, 4, 6
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.png")
        fig.savefig(tmp, dpi=120)
        tmp.replace(path)
        plt.close(fig)
        return path


def _fmt_ms(v: float) -> str:
    return f"{v:.2f}" if v >= 100 else f"{v:.3f}" if v >= 1 else f"{v:.4f}"


def _fmt_csv(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)


def compare_notes(results: Sequence[BenchResult]) -> list[str]:
    """Plain statements on each non-fp32 variant against the fastest fp32 variant of the same model,
    runner, provider, batch and threads; a quantized variant slower than fp32 is called SLOWER."""
    fp32: dict[tuple, BenchResult] = {}
    for r in results:
        key = (r.model, r.runner, r.provider, r.batch, r.threads)
        if r.precision == "fp32" and (key not in fp32 or r.stats["p50_ms"] < fp32[key].stats["p50_ms"]):
            fp32[key] = r
    notes = []
    for r in results:
        ref = fp32.get((r.model, r.runner, r.provider, r.batch, r.threads))
        if ref is None or r.precision == "fp32":
            continue
        ratio = r.stats["p50_ms"] / ref.stats["p50_ms"]
        verdict = (f"SLOWER than fp32 ({ratio:.2f}x the latency)" if ratio > 1.0
                   else f"{1 / ratio:.2f}x faster than fp32")
        notes.append(f"{r.variant} is {verdict} on this machine at batch {r.batch}, {r.threads} thread(s): "
                     f"p50 {r.stats['p50_ms']:.3f} ms vs {ref.stats['p50_ms']:.3f} ms ({ref.variant}).")
    return notes
