"""``tune(export_dir)``: measure every configuration of an export directory here and pick one.

The steps: the candidates from the export report (:mod:`edgecnn.tune.candidates`), their quality
against fp32 on the same held-out images (:mod:`edgecnn.tune.quality`), a first timing pass over
threads and batch sizes (:mod:`edgecnn.tune.measure`), the ranking within the accuracy budget with
its Pareto front, the finalists measured again interleaved, and the pick written as
``deploy.json`` beside ``tune_report.json`` (:mod:`edgecnn.tune.report`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgecnn._files import atomic_write_text, sha256_file
from edgecnn.errors import ConfigError
from edgecnn.export.report import ExportReport
from edgecnn.runtime.benchmark import machine_fingerprint
from edgecnn.runtime.deploy import DEPLOY_FILE, TUNE_REPORT, Deployment
from edgecnn.tune.candidates import Candidate, candidates, export_row, read_export
from edgecnn.tune.config import TuneConfig, default_threads
from edgecnn.tune.measure import Cell, confirm, finalist_cells, sweep
from edgecnn.tune.quality import Quality, QualityKey, Reference, drop_sort, judge_all, within
from edgecnn.tune.report import TuneReport, pareto, recommend

__all__ = ["tune"]


def tune(export_dir: str | Path, config: TuneConfig | None = None, *, write: bool = True,
         progress: Callable[[str], None] | None = None) -> TuneReport:
    """Measure every configuration of ``export_dir`` on this machine and pick one.

    Writes ``deploy.json`` and ``tune_report.json`` into the directory (atomically) unless
    ``write`` is false. ``progress`` gets one line per step.

    Raises:
        ArtifactError: for a directory that is not an export (no report, no fp32 model).
        DataError: without held-out images (pass ``config.data``).
        ConfigError: when no configuration is within the accuracy budget.
    """
    config = config or TuneConfig()
    say = progress or (lambda _line: None)
    directory = Path(export_dir)
    export = read_export(directory)
    notes: list[str] = []
    cands = candidates(directory, export, config, notes)
    threads = config.threads or default_threads()
    ref = Reference.measure(directory, config)
    say(f"Quality on {len(ref.images)} images of {ref.description} against fp32 on onnxruntime.")
    qualities, usable = judge_all(cands, directory, ref, config, notes=notes, say=say)
    cells = sweep(usable, threads, directory, images=ref.images, config=config, say=say)
    if not cells:
        raise ConfigError(f"Nothing in {directory} could be measured at batch sizes {list(config.batch_sizes)}.")
    ranking = _Ranking.of(usable, cells, qualities, directory=directory, config=config)
    if not ranking.in_budget:
        raise ConfigError(f"No configuration of {directory} stays within {config.max_drop_pp} pp of fp32; raise "
                          "--max-drop, or export again with --accuracy-aware.")
    finalists = finalist_cells(ranking.in_budget, config.confirm)
    say(f"Confirming {len(finalists)} finalists (the {config.confirm} fastest in budget and each backend's "
        "fastest), interleaved.")
    confirmed = confirm(finalists, directory, images=ref.images, config=config)
    winner, value = min(confirmed, key=lambda cv: cv[1])
    machine = machine_fingerprint()
    pick = _deployment(winner, value, qualities[winner.candidate.quality_key], directory=directory, config=config,
                       machine=machine)
    report = TuneReport(
        export_dir=str(directory), config={**asdict(config), "threads": list(threads)}, machine=machine,
        test_set={"description": ref.description, "images": int(len(ref.images)), "labeled": ref.labels is not None,
                  "fp32_accuracy": ref.accuracy},
        candidates=ranking.rows(qualities, export), cells=cells, pick=pick,
        confirm=[{**cell.to_dict(), "confirmed": v} for cell, v in confirmed], notes=notes,
        pick_vs_fastest=winner.key(config.objective) / ranking.in_budget[0].key(config.objective),
        recommendation=recommend(pick, winner, cells, qualities[winner.candidate.quality_key],
                                 size_bytes=ranking.sizes[pick.file], config=config, labeled=ref.labels is not None))
    if write:
        atomic_write_text(directory / TUNE_REPORT, json.dumps(report.to_dict(), indent=2, default=float) + "\n")
        atomic_write_text(directory / DEPLOY_FILE, pick.to_json())
    return report


@dataclass(frozen=True, kw_only=True)
class _Ranking:
    """The first pass ranked: each configuration's best cell at the objective's batch size, the
    Pareto front of (objective, accuracy drop, size), and the cells within the budget, fastest first."""

    usable: list[Candidate]
    sizes: dict[str, int]  # file -> bytes
    within_budget: dict[str, bool]  # configuration name -> within the accuracy budget
    best: dict[str, Cell]  # configuration name -> its best cell at the objective's batch size
    front: set[str]
    in_budget: list[Cell]

    @classmethod
    def of(cls, usable: list[Candidate], cells: list[Cell], qualities: dict[QualityKey, Quality], *,
           directory: Path, config: TuneConfig) -> _Ranking:
        sizes = {c.file: (directory / c.file).stat().st_size for c in usable}
        budget_ok = {c.name: within(qualities[c.quality_key], config.max_drop_pp) for c in usable}
        obj_batch = config.objective_batch
        if not any(c.batch == obj_batch for c in cells):  # a fixed-batch file took none of the sizes asked
            obj_batch = next(c.batch for c in cells)
        best: dict[str, Cell] = {}
        for cell in cells:
            if cell.batch == obj_batch:
                cur = best.get(cell.candidate.name)
                if cur is None or cell.key(config.objective) < cur.key(config.objective):
                    best[cell.candidate.name] = cell
        front = pareto({n: (cell.key(config.objective), drop_sort(qualities[cell.candidate.quality_key]),
                            sizes[cell.candidate.file]) for n, cell in best.items()})
        in_budget = sorted((cell for cell in cells if cell.batch == obj_batch and budget_ok[cell.candidate.name]),
                           key=lambda cell: cell.key(config.objective))
        return cls(usable=usable, sizes=sizes, within_budget=budget_ok, best=best, front=front, in_budget=in_budget)

    def rows(self, qualities: dict[QualityKey, Quality], export: ExportReport) -> list[dict[str, Any]]:
        """One ``tune_report.json`` candidate row per configuration: file, size, quality, budget, front."""
        rows = []
        for c in self.usable:
            q = qualities[c.quality_key]
            rows.append({"config": c.name, **asdict(c), "size_bytes": self.sizes[c.file], "drop_pp": q.drop_pp,
                         "accuracy": q.accuracy, "metric": q.metric, "metric_value": q.metric_value,
                         "max_abs_diff": q.max_abs_diff, "within_budget": self.within_budget[c.name],
                         "pareto": c.name in self.front,
                         "best_threads": self.best[c.name].threads if c.name in self.best else None,
                         "export_report": export_row(export, c.file)})
        return rows


def _deployment(winner: Cell, value: float, q: Quality, *, directory: Path, config: TuneConfig,
                machine: dict[str, Any]) -> Deployment:
    """``deploy.json`` for the confirmed winner (``value``: its confirmed objective)."""
    cand = winner.candidate
    measured = {"p50_ms": winner.p50_ms, "throughput_ips": winner.throughput_ips, "batch": winner.batch,
                "confirmed_p50_ms": value * winner.batch if config.objective == "throughput" else value,
                "accuracy": q.accuracy, "drop_pp": q.drop_pp, "metric": q.metric, "metric_value": q.metric_value,
                "size_bytes": (directory / cand.file).stat().st_size}
    return Deployment(file=cand.file, variant=cand.variant, backend=cand.backend, device=config.device,
                      precision=cand.runtime(threads=winner.threads, device=config.device).precision,
                      threads=winner.threads,
                      io_binding=cand.io_binding, batch=winner.batch, objective=config.objective,
                      sha256=sha256_file(directory / cand.file), measured=measured,
                      machine={"cpu": machine["cpu"], "simd": machine["simd"], "usable_cpus": machine["usable_cpus"]},
                      created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
