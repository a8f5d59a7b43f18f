"""Timing each configuration: the call an app makes, from uint8 pixels to every output.

Every sample comes from :func:`edgecnn.runtime.benchmark.time_callable`, the one timing loop of
edgecnn, and every statistic from :func:`~edgecnn.runtime.benchmark.latency_stats`: the images per
second (``throughput_ips``) are batch / mean latency, as ``edgecnn bench`` reports them. The first
pass measures every configuration x threads x batch once (:func:`sweep`); the finalists are then
measured again in interleaved rounds (:func:`confirm`), so that one noisy first pass does not decide.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.runtime.benchmark import latency_stats, time_callable
from edgecnn.tune.candidates import Candidate
from edgecnn.tune.config import TuneConfig

__all__ = ["Cell", "batch_input", "time_pixels", "sweep", "finalist_cells", "confirm"]

_CONFIRM_ROUNDS = 3


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One measured point: a configuration at one thread count and batch size."""

    candidate: Candidate
    threads: int
    batch: int
    p50_ms: float
    mean_ms: float
    p90_ms: float
    throughput_ips: float  # images per second over the measured calls: batch / mean latency (latency_stats)
    runs: int

    @classmethod
    def from_times(cls, candidate: Candidate, *, threads: int, batch: int, times: list[float]) -> Cell:
        """The cell of ``times`` (seconds per call)."""
        s = latency_stats(times, batch)
        return cls(candidate=candidate, threads=threads, batch=batch, p50_ms=s["p50_ms"], mean_ms=s["mean_ms"],
                   p90_ms=s["p90_ms"], throughput_ips=s["throughput_ips"], runs=int(s["runs"]))

    def key(self, objective: str) -> float:
        """Smaller is better: p50 (latency) or p50 per image (throughput). Both rank by the median
        call, so that one call preempted on a shared machine does not decide."""
        return self.p50_ms if objective == "latency" else self.p50_ms / self.batch

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.candidate.name, **asdict(self.candidate), "threads": self.threads, "batch": self.batch,
                "p50_ms": self.p50_ms, "mean_ms": self.mean_ms, "p90_ms": self.p90_ms,
                "throughput_ips": self.throughput_ips, "runs": self.runs}


def batch_input(images: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` uint8 images at the input size (the test images, repeated if too few)."""
    reps = -(-batch // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:batch] if reps > 1 else images[:batch])


def time_pixels(model: Any, pixels: np.ndarray, seconds: float) -> list[float]:
    """Seconds per call of the whole per-call work an app pays, from uint8 pixels to every output
    (the pixel mapping included: in the backend where it runs there, else numpy's), for ``seconds``.

    The warm-up takes about a fifth of the measuring time, judged by one first call (2 to 20 calls).
    """
    def call() -> Any:
        return model.run_pixels(pixels)

    first = time_callable(call, warmup=0, runs=1)[0]
    warmup = max(2, min(20, int(0.2 * seconds / max(first, 1e-6))))
    return time_callable(call, warmup=warmup, runs=0, duration_s=seconds, min_runs=5)


def sweep(usable: list[Candidate], threads: tuple[int, ...], directory: Path, *, images: np.ndarray,
          config: TuneConfig, say: Callable[[str], None]) -> list[Cell]:
    """The first pass: every configuration at every thread count and batch size its file takes."""
    cells: list[Cell] = []
    for cand in usable:
        for t in threads:
            model = cand.open(directory, t, config.device)
            for batch in config.batch_sizes:
                if model.fixed_batch is not None and batch != model.fixed_batch:
                    continue
                times = time_pixels(model, batch_input(images, batch), config.seconds)
                cell = Cell.from_times(cand, threads=t, batch=batch, times=times)
                cells.append(cell)
                say(f"  {cand.name}, {t} thread(s), batch {batch}: p50 {cell.p50_ms:.3f} ms, "
                    f"{cell.throughput_ips:,.0f} img/s")
            del model
    return cells


def finalist_cells(ranked: list[Any], n: int,
                   backend: Callable[[Any], str] = lambda c: c.candidate.backend) -> list[Any]:
    """The ``n`` first of ``ranked`` (fastest first) and the first of each ``backend``: a backend
    that one noisy first pass ranked low still gets its best configuration re-measured. Cells or
    ``tune_report.json``'s cell dicts (``backend=lambda c: c["backend"]``)."""
    out = list(ranked[:n])
    seen = {backend(c) for c in out}
    for cell in ranked:
        if backend(cell) not in seen:
            seen.add(backend(cell))
            out.append(cell)
    return out


def confirm(cells: list[Cell], directory: Path, *, images: np.ndarray, config: TuneConfig) -> list[tuple[Cell, float]]:
    """The median over interleaved rounds of each cell's objective (p50 ms per call, or per image)."""
    models = [(cell, cell.candidate.open(directory, cell.threads, config.device)) for cell in cells]
    inputs = [batch_input(images, cell.batch) for cell, _ in models]
    rounds: list[list[float]] = [[] for _ in models]
    for _ in range(_CONFIRM_ROUNDS):
        for i, (cell, m) in enumerate(models):
            p50_ms = 1e3 * float(np.median(time_pixels(m, inputs[i], max(0.2, config.seconds / 2))))
            rounds[i].append(p50_ms if config.objective == "latency" else p50_ms / cell.batch)
    return [(cell, float(np.median(r))) for (cell, _), r in zip(models, rounds)]
