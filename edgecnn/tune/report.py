"""What one ``edgecnn tune`` run measured and decided: ``tune_report.json``, the table, the
Pareto front and the one-line recommendation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgecnn.runtime.deploy import FP32_FILE, Deployment
from edgecnn.tune.candidates import Candidate
from edgecnn.tune.config import TuneConfig
from edgecnn.tune.measure import Cell
from edgecnn.tune.quality import Quality

__all__ = ["TuneReport", "pareto", "recommend"]

TUNE_SCHEMA = "edgecnn.tune/1"


@dataclass(frozen=True, kw_only=True)
class TuneReport:
    """Everything one ``edgecnn tune`` run measured and decided (``tune_report.json``)."""

    export_dir: str
    config: dict[str, Any]
    machine: dict[str, Any]
    test_set: dict[str, Any]
    candidates: list[dict[str, Any]]  # config, file, size, quality, within budget, pareto
    cells: list[Cell]
    pick: Deployment | None
    confirm: list[dict[str, Any]] = field(default_factory=list)
    recommendation: str = ""
    notes: list[str] = field(default_factory=list)
    # The pick's first-pass value over the fastest first-pass cell within budget: how far the
    # confirmation round moved the choice away from one noisy pass (1.0: it kept the fastest).
    pick_vs_fastest: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"schema": TUNE_SCHEMA, "export_dir": self.export_dir, "config": self.config,
                "machine": self.machine, "test_set": self.test_set, "candidates": self.candidates,
                "cells": [c.to_dict() for c in self.cells], "confirm": self.confirm,
                "pick": None if self.pick is None else self.pick.to_dict(), "pick_vs_fastest": self.pick_vs_fastest,
                "recommendation": self.recommendation, "notes": self.notes}

    def table(self) -> tuple[list[str], list[list[str]]]:
        """One row per configuration and thread count: size, quality, a column per batch size."""
        batches = sorted({c.batch for c in self.cells})
        cols = ["", "configuration", "threads", "size MB", "accuracy", "drop pp"] + \
            [f"p50 ms b{b}" for b in batches] + [f"img/s b{b}" for b in batches if b > 1]
        info = {c["config"]: c for c in self.candidates}
        seen: dict[tuple[str, int], dict[int, Cell]] = {}
        for cell in self.cells:
            seen.setdefault((cell.candidate.name, cell.threads), {})[cell.batch] = cell
        rows = []
        for (name, threads), by_batch in seen.items():
            c = info[name]
            acc = c["accuracy"] if c["accuracy"] is not None else c["metric_value"]
            rows.append([self._mark(c, next(iter(by_batch.values())).candidate, threads), name, str(threads),
                         f"{c['size_bytes'] / 1e6:.2f}", "-" if acc is None else f"{100 * acc:.2f}%",
                         "-" if c["drop_pp"] is None else f"{c['drop_pp']:.2f}"]
                        + [_ms(by_batch[b].p50_ms) if b in by_batch else "-" for b in batches]
                        + [f"{by_batch[b].throughput_ips:,.0f}" if b in by_batch else "-" for b in batches if b > 1])
        return cols, rows

    def _mark(self, row: dict[str, Any], candidate: Candidate, threads: int) -> str:
        """``*`` the pick, ``P`` on the Pareto front (at its best thread count), ``x`` over the budget."""
        pick = self.pick
        chosen = pick is not None and candidate.file == pick.file and threads == pick.threads and \
            _same(candidate, pick)
        front = row["pareto"] and threads == row["best_threads"]
        return ("*" if chosen else "") + ("P" if front else "") + ("" if row["within_budget"] else "x")


def _same(candidate: Candidate, dep: Deployment) -> bool:
    return candidate.backend == dep.backend and candidate.precision == dep.precision and \
        candidate.io_binding == dep.io_binding


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def pareto(points: dict[str, tuple[float, float, float]]) -> set[str]:
    """Names of the points no other point beats on every axis (and strictly on one)."""
    front = set()
    for name, p in points.items():
        dominated = any(all(a <= b for a, b in zip(o, p)) and any(a < b for a, b in zip(o, p))
                        for other, o in points.items() if other != name)
        if not dominated:
            front.add(name)
    return front


def recommend(pick: Deployment, winner: Cell, cells: list[Cell], quality: Quality, *, size_bytes: int,
              config: TuneConfig, labeled: bool) -> str:
    """``Deploy model.int8.onnx on ...: p50 ..., accuracy ... fp32 (budget ...), ... MB; 2.1x the
    speed of fp32 on onnxruntime at its best thread count (1).``"""
    batch = winner.batch
    base = [c for c in cells if c.candidate.file == FP32_FILE and c.candidate.backend == "onnxruntime"
            and not c.candidate.io_binding and c.batch == batch]
    what = "accuracy" if labeled else (quality.metric or "agreement")
    speed = (f"p50 {winner.p50_ms:.3f} ms at batch {batch}" if config.objective == "latency"
             else f"{winner.throughput_ips:,.0f} img/s at batch {batch}")
    drop = quality.drop_pp or 0.0  # the pick is within the budget, so it was judged
    change = "the same as" if abs(drop) < 5e-3 else f"{abs(drop):.2f} pp {'below' if drop > 0 else 'above'}"
    line = (f"Deploy {pick.describe()}: {speed}, {what} {change} fp32 (budget {config.max_drop_pp} pp), "
            f"{size_bytes / 1e6:.2f} MB")
    if base:
        ref = min(base, key=lambda c: c.key(config.objective))
        ratio = ref.key(config.objective) / winner.key(config.objective)
        line += f"; {ratio:.2f}x the speed of fp32 on onnxruntime at its best thread count ({ref.threads})"
    return line + "."
