"""``edgecnn tune EXPORT_DIR``: every variant x backend x threads x batch size, measured here.

An export directory holds the variants ``edgecnn export`` verified (fp32, int8, fp16, ...). The
tuner runs each of them on each backend that can (onnxruntime with and without IO binding;
OpenVINO in f32, and in bf16 for the fp32 and int8 files where the CPU has it; LiteRT for the
``model.int8.tflite`` of ``-q litert-int8``), at each thread count and batch size asked for, and
joins every configuration with

- its quality, measured on the same held-out images for all of them: accuracy against the
  labels and the drop in percentage points from fp32 on onnxruntime (without labels, or for
  detection and segmentation, the task's agreement with fp32: top-1 agreement, mAP@0.5, mIoU,
  and for raw models the outputs' cosine similarity;
  see :func:`edgecnn.export.verify.task_agreement`);
- its size on disk;
- its latency (p50 of the whole per-call work: input in, outputs out) and throughput.

Then it keeps the configurations within the accuracy budget, re-measures the fastest few and
each backend's fastest interleaved (one noisy first pass must not decide), and writes ``deploy.json``
(:mod:`edgecnn.runtime.deploy`) and ``tune_report.json``. The Pareto front (latency, accuracy
drop, size) is in the report and the table.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.card import atomic_write_text, sha256_file
from edgecnn.errors import ArtifactError, ConfigError, ProviderError
from edgecnn.export.report import REPORT_JSON
from edgecnn.runtime.deploy import DEPLOY_FILE, FP32_FILE, TUNE_REPORT, Deployment

log = logging.getLogger(__name__)

__all__ = ["TuneConfig", "Candidate", "Cell", "TuneReport", "tune", "default_threads", "finalist_cells"]

OBJECTIVES = ("latency", "throughput")
_CONFIRM_ROUNDS = 3


def default_threads() -> tuple[int, ...]:
    """1, 2, 4, ... up to the usable cores, and the usable cores themselves."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return tuple(sorted({*(2**i for i in range(int(math.log2(cores)) + 1)), cores}))


@dataclass(frozen=True)
class TuneConfig:
    """What ``edgecnn tune`` sweeps and how it judges.

    ``objective``: ``latency`` ranks by p50 at the smallest batch size, ``throughput`` by images
    per second at the largest. ``max_drop_pp``: the accuracy budget in percentage points below
    fp32 on onnxruntime (of the task's agreement with fp32 when there are no labels).
    ``seconds``: measuring time per cell. ``images``: held-out images for the quality check.
    ``confirm``: how many of the fastest configurations are measured again, interleaved.
    """

    batch_sizes: tuple[int, ...] = (1,)
    threads: tuple[int, ...] | None = None  # None: default_threads()
    backends: tuple[str, ...] | None = None  # None: onnxruntime, and openvino when installed
    device: str = "CPU"
    objective: str = "latency"
    max_drop_pp: float = 1.0
    seconds: float = 1.0
    images: int = 2000
    data: str | None = None
    confirm: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        from edgecnn.runtime.session import BACKENDS

        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective must be latency or throughput, got {self.objective!r}.")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"Batch sizes must be >= 1, got {self.batch_sizes}.")
        if self.threads is not None and (not self.threads or min(self.threads) < 1):
            raise ConfigError(f"Thread counts must be >= 1, got {self.threads}.")
        if self.backends is not None and (not self.backends or any(b not in BACKENDS for b in self.backends)):
            raise ConfigError(f"--backend takes {', '.join(BACKENDS)} (comma-separated); got {list(self.backends)}.")
        if not self.max_drop_pp >= 0:
            raise ConfigError(f"--max-drop must be >= 0 percentage points, got {self.max_drop_pp}.")
        if not self.seconds > 0 or self.images < 1 or self.confirm < 1:
            raise ConfigError("--seconds must be > 0, --images >= 1 and --confirm >= 1.")

    @property
    def objective_batch(self) -> int:
        return min(self.batch_sizes) if self.objective == "latency" else max(self.batch_sizes)


@dataclass(frozen=True)
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

    def open(self, directory: Path, threads: int | None, device: str) -> Any:
        from edgecnn.runtime.core import InferenceModel

        ov = self.backend == "openvino"
        return InferenceModel(directory / self.file, threads=threads, backend=self.backend,
                              device=device if ov else "CPU", precision=self.precision if ov else None,
                              io_binding=self.io_binding if self.backend == "onnxruntime" else None)


@dataclass
class Quality:
    """How close a configuration's answers are to fp32 on onnxruntime, on the same images."""

    drop_pp: float | None  # None: it could not be judged (a raw model that is not exact)
    accuracy: float | None = None
    metric: str | None = None
    metric_value: float | None = None
    max_abs_diff: float | None = None


@dataclass
class Cell:
    """One measured point: a configuration at one thread count and batch size."""

    candidate: Candidate
    threads: int
    batch: int
    p50_ms: float
    mean_ms: float
    p90_ms: float
    throughput_ips: float  # batch / p50
    runs: int

    def key(self, objective: str) -> float:
        """Smaller is better: p50 (latency) or seconds per image (throughput)."""
        return self.p50_ms if objective == "latency" else self.p50_ms / self.batch

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.candidate.name, **asdict(self.candidate), "threads": self.threads, "batch": self.batch,
                "p50_ms": self.p50_ms, "mean_ms": self.mean_ms, "p90_ms": self.p90_ms,
                "throughput_ips": self.throughput_ips, "runs": self.runs}


@dataclass
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
        return {"schema": "edgecnn.tune/1", "export_dir": self.export_dir, "config": self.config,
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
        pick = self.pick
        rows = []
        seen: dict[tuple[str, int], dict[int, Cell]] = {}
        for cell in self.cells:
            seen.setdefault((cell.candidate.name, cell.threads), {})[cell.batch] = cell
        for (name, threads), by_batch in seen.items():
            c = info[name]
            any_cell = next(iter(by_batch.values()))
            chosen = pick is not None and any_cell.candidate.file == pick.file and threads == pick.threads and \
                _same(any_cell.candidate, pick)
            front = c["pareto"] and threads == c["best_threads"]
            mark = ("*" if chosen else "") + ("P" if front else "") + ("" if c["within_budget"] else "x")
            acc = c["accuracy"] if c["accuracy"] is not None else c["metric_value"]
            rows.append([mark, name, str(threads), f"{c['size_bytes'] / 1e6:.2f}",
                         "-" if acc is None else f"{100 * acc:.2f}%",
                         "-" if c["drop_pp"] is None else f"{c['drop_pp']:.2f}"]
                        + [_ms(by_batch[b].p50_ms) if b in by_batch else "-" for b in batches]
                        + [f"{by_batch[b].throughput_ips:,.0f}" if b in by_batch else "-" for b in batches if b > 1])
        return cols, rows


def _same(candidate: Candidate, dep: Deployment) -> bool:
    return candidate.backend == dep.backend and candidate.precision == dep.precision and \
        candidate.io_binding == dep.io_binding


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


# --------------------------------------------------------------------------------- candidates

def _read_report(directory: Path) -> dict[str, Any]:
    import json

    path = directory / REPORT_JSON
    if not directory.is_dir():
        raise ArtifactError(f"{directory} is not a directory; pass the output folder of `edgecnn export`.")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{directory} has no {REPORT_JSON}: tune an export directory (`edgecnn export MODEL "
                            f"--quantize int8 --out {directory}` makes one).") from None
    except (ValueError, OSError) as err:
        raise ArtifactError(f"{path} is unreadable ({type(err).__name__}); export again.") from None
    if not isinstance(report, dict) or not isinstance(report.get("variants"), list):
        raise ArtifactError(f"{path} is not an edgecnn export report; export again.")
    return report


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def candidates(directory: Path, report: dict[str, Any], config: TuneConfig, notes: list[str]) -> list[Candidate]:
    """Every way to run every verified variant of the directory on the backends asked for."""
    backends = config.backends
    if backends is None:
        backends = ("onnxruntime", *(b for b, module in (("openvino", "openvino"), ("litert", "ai_edge_litert"))
                                     if _installed(module)))
        for backend, extra in (("openvino", "openvino"), ("litert", "litert")):
            if backend not in backends:
                notes.append(f"{backend} is not installed (pip install 'edgecnn[{extra}]'): not measured.")
    files = []
    for v in report["variants"]:
        name = v.get("file") if isinstance(v, dict) else None
        if not name or not v.get("passed", True):
            continue
        if not (directory / name).is_file():
            notes.append(f"{name} is in the export report but not in {directory}: skipped.")
            continue
        files.append((name, str(v.get("precision") or Path(name).stem)))
    if not any(f == FP32_FILE for f, _ in files):
        raise ArtifactError(f"{directory} has no {FP32_FILE}: the fp32 model is the reference every variant is "
                            "judged against; export again.")
    out = []
    for name, variant in files:
        if name.endswith(".tflite"):
            if "litert" in backends:
                out.append(Candidate(name, variant, "litert"))
            continue
        if "onnxruntime" in backends:
            out += [Candidate(name, variant), Candidate(name, variant, io_binding=True)]
        if "openvino" in backends:
            out.append(Candidate(name, variant, "openvino", "f32"))
            if variant in ("fp32", "int8"):  # bf16 execution: OpenVINO's own default on CPUs that have it
                out.append(Candidate(name, variant, "openvino", "bf16"))
    return out


# ------------------------------------------------------------------------------------ quality

def _outputs(model: Any, images: np.ndarray, batch: int = 64) -> list[np.ndarray]:
    from edgecnn.export.verify import predict_outputs

    return predict_outputs(model.run_pixels, images, batch_size=batch)


def _quality(reference: list[np.ndarray], ref_accuracy: float | None, got: list[np.ndarray], labels: Any,
             card: Any) -> Quality:
    from edgecnn.export.verify import accuracy, compare_outputs, task_agreement

    metric = task_agreement(card.task, reference, got, card)
    diff = compare_outputs(reference, got, task=card.task).max_abs_diff
    q = Quality(drop_pp=None, metric=metric.name, metric_value=metric.value, max_abs_diff=diff)
    if labels is not None and card.task == "classify":
        q.accuracy = accuracy(got[0], labels)
        q.drop_pp = 100.0 * (ref_accuracy - q.accuracy)
    else:  # 1.0 is identical behaviour for every task (raw: the outputs' cosine similarity)
        q.drop_pp = 100.0 * (1.0 - metric.value)
    return q


# ------------------------------------------------------------------------------------- timing

def _input(model: Any, images: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` uint8 images at the input size (the test images, repeated if too few)."""
    reps = -(-batch // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:batch] if reps > 1 else images[:batch])


def _time(model: Any, pixels: np.ndarray, seconds: float) -> list[float]:
    """Seconds per call of the whole per-call work an app pays, from uint8 pixels to every output
    (the pixel mapping included: in the backend where it runs there, else numpy's)."""
    from edgecnn.runtime.benchmark import time_callable

    call = lambda: model.run_pixels(pixels)  # noqa: E731
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    warmup = max(2, min(20, int(0.2 * seconds / max(first, 1e-6))))
    return time_callable(call, warmup=warmup, runs=0, duration_s=seconds, min_runs=5)


def _cell(candidate: Candidate, threads: int, batch: int, times: list[float]) -> Cell:
    from edgecnn.runtime.benchmark import latency_stats

    s = latency_stats(times, batch)
    # Throughput from the median call: on a shared machine one preempted call must not move it.
    return Cell(candidate, threads, batch, s["p50_ms"], s["mean_ms"], s["p90_ms"], batch * 1e3 / s["p50_ms"], s["runs"])


# --------------------------------------------------------------------------------------- tune

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
    from edgecnn.export.pipeline import load_test_data
    from edgecnn.runtime.benchmark import machine_fingerprint
    from edgecnn.runtime.core import InferenceModel

    config = config or TuneConfig()
    say = progress or (lambda _line: None)
    directory = Path(export_dir)
    report = _read_report(directory)
    notes: list[str] = []
    cands = candidates(directory, report, config, notes)
    threads = config.threads or default_threads()

    reference_model = InferenceModel(directory / FP32_FILE)
    card = reference_model.card
    images, labels, description = load_test_data(card, config.data, limit=config.images, flag="--data")
    from edgecnn.export._data import to_channels

    images = to_channels(images, card.channels, gray=card.gray)
    if card.task != "classify":
        labels = None
    say(f"Quality on {len(images)} images of {description} against fp32 on onnxruntime.")
    reference = _outputs(reference_model, images)
    ref_acc = None
    if labels is not None:
        from edgecnn.export.verify import accuracy

        ref_acc = accuracy(reference[0], labels)
    qualities: dict[tuple, Quality] = {}
    usable: list[Candidate] = []
    for cand in cands:
        if cand.quality_key not in qualities:
            try:
                model = cand.open(directory, None, config.device)
            except (ProviderError, ArtifactError) as err:
                notes.append(f"{cand.name}: {err}")
                say(f"  {cand.name}: skipped ({err})")
                qualities[cand.quality_key] = None  # type: ignore[assignment]
                continue
            same = cand.quality_key == (FP32_FILE, "onnxruntime", None)  # the reference itself
            qualities[cand.quality_key] = _quality(reference, ref_acc, reference if same else _outputs(model, images),
                                                   labels, card)
            q = qualities[cand.quality_key]
            say(f"  {cand.name}: " + ("not judged" if q.drop_pp is None else f"drop {q.drop_pp:+.2f} pp"))
        if qualities[cand.quality_key] is not None:
            usable.append(cand)

    cells: list[Cell] = []
    for cand in usable:
        for t in threads:
            model = cand.open(directory, t, config.device)
            for batch in config.batch_sizes:
                if model.fixed_batch is not None and batch != model.fixed_batch:
                    continue
                cell = _cell(cand, t, batch, _time(model, _input(model, images, batch), config.seconds))
                cells.append(cell)
                say(f"  {cand.name}, {t} thread(s), batch {batch}: p50 {cell.p50_ms:.3f} ms, "
                    f"{cell.throughput_ips:,.0f} img/s")
            del model
    if not cells:
        raise ConfigError(f"Nothing in {directory} could be measured at batch sizes {list(config.batch_sizes)}.")

    sizes = {c.file: (directory / c.file).stat().st_size for c in usable}
    budget_ok = {c.name: _within(qualities[c.quality_key], config.max_drop_pp) for c in usable}
    obj_batch = config.objective_batch
    if not any(c.batch == obj_batch for c in cells):
        obj_batch = next(c.batch for c in cells)
    best: dict[str, Cell] = {}
    for cell in cells:
        if cell.batch == obj_batch:
            cur = best.get(cell.candidate.name)
            if cur is None or cell.key(config.objective) < cur.key(config.objective):
                best[cell.candidate.name] = cell
    pareto = _pareto({n: (cell.key(config.objective), _drop_sort(qualities[cell.candidate.quality_key]),
                          sizes[cell.candidate.file]) for n, cell in best.items()})
    cand_rows = []
    for c in usable:
        q = qualities[c.quality_key]
        cand_rows.append({"config": c.name, **asdict(c), "size_bytes": sizes[c.file], "drop_pp": q.drop_pp,
                          "accuracy": q.accuracy, "metric": q.metric, "metric_value": q.metric_value,
                          "max_abs_diff": q.max_abs_diff, "within_budget": budget_ok[c.name],
                          "pareto": c.name in pareto, "best_threads": best[c.name].threads if c.name in best else None,
                          "export_report": _export_row(report, c.file)})

    in_budget = sorted((cell for cell in cells if cell.batch == obj_batch and budget_ok[cell.candidate.name]),
                       key=lambda cell: cell.key(config.objective))
    machine = machine_fingerprint()
    tune_report = TuneReport(str(directory), {**asdict(config), "threads": list(threads)}, machine,
                             {"description": description, "images": int(len(images)), "labeled": labels is not None,
                              "fp32_accuracy": ref_acc},
                             cand_rows, cells, None, notes=notes)
    if not in_budget:
        raise ConfigError(f"No configuration of {directory} stays within {config.max_drop_pp} pp of fp32; raise "
                          "--max-drop, or export again with --accuracy-aware.")
    finalists = finalist_cells(in_budget, config.confirm)
    say(f"Confirming {len(finalists)} finalists (the {config.confirm} fastest in budget and each backend's "
        "fastest), interleaved.")
    confirmed = _confirm(finalists, directory, images, config)
    tune_report.confirm = [{**cell.to_dict(), "confirmed": value} for cell, value in confirmed]
    winner, value = min(confirmed, key=lambda cv: cv[1])
    tune_report.pick_vs_fastest = winner.key(config.objective) / in_budget[0].key(config.objective)
    q = qualities[winner.candidate.quality_key]
    cand = winner.candidate
    measured = {"p50_ms": winner.p50_ms, "throughput_ips": winner.throughput_ips, "batch": winner.batch,
                "confirmed_p50_ms": value * winner.batch if config.objective == "throughput" else value,
                "accuracy": q.accuracy, "drop_pp": q.drop_pp, "metric": q.metric, "metric_value": q.metric_value,
                "size_bytes": sizes[cand.file]}
    pick = Deployment(file=cand.file, variant=cand.variant, backend=cand.backend, device=config.device,
                      precision=cand.precision if cand.backend == "openvino" else None, threads=winner.threads,
                      io_binding=cand.io_binding, batch=winner.batch, objective=config.objective,
                      sha256=sha256_file(directory / cand.file), measured=measured,
                      machine={"cpu": machine["cpu"], "simd": machine["simd"], "usable_cpus": machine["usable_cpus"]},
                      created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    tune_report.pick = pick
    tune_report.recommendation = _recommend(pick, winner, value, cells, qualities, sizes, config, labels is not None)
    if write:
        atomic_write_text(directory / TUNE_REPORT, _dumps(tune_report.to_dict()))
        atomic_write_text(directory / DEPLOY_FILE, pick.to_json())
    return tune_report


def _dumps(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, default=float) + "\n"


def _within(q: Quality | None, budget: float) -> bool:
    return q is not None and q.drop_pp is not None and q.drop_pp <= budget + 1e-9


def _drop_sort(q: Quality) -> float:
    return math.inf if q.drop_pp is None else max(0.0, q.drop_pp)


def _pareto(points: dict[str, tuple[float, float, float]]) -> set[str]:
    """Names of the points no other point beats on every axis (and strictly on one)."""
    front = set()
    for name, p in points.items():
        dominated = any(all(a <= b for a, b in zip(o, p)) and any(a < b for a, b in zip(o, p))
                        for other, o in points.items() if other != name)
        if not dominated:
            front.add(name)
    return front


def _export_row(report: dict[str, Any], file: str) -> dict[str, Any] | None:
    for v in report["variants"]:
        if isinstance(v, dict) and v.get("file") == file:
            return {k: v.get(k) for k in ("precision", "accuracy", "accuracy_delta_pp", "top1_agreement", "metric",
                                          "metric_value", "size_bytes")}
    return None


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


def _confirm(cells: list[Cell], directory: Path, images: np.ndarray, config: TuneConfig) -> list[tuple[Cell, float]]:
    """The median over interleaved rounds of each cell's objective (p50 ms per call, or per image)."""
    models = [(cell, cell.candidate.open(directory, cell.threads, config.device)) for cell in cells]
    inputs = [_input(m, images, cell.batch) for cell, m in models]
    rounds: list[list[float]] = [[] for _ in models]
    for _ in range(_CONFIRM_ROUNDS):
        for i, (cell, m) in enumerate(models):
            p50_ms = 1e3 * float(np.median(_time(m, inputs[i], max(0.2, config.seconds / 2))))
            rounds[i].append(p50_ms if config.objective == "latency" else p50_ms / cell.batch)
    return [(cell, float(np.median(r))) for (cell, _), r in zip(models, rounds)]


def _recommend(pick: Deployment, winner: Cell, value: float, cells: list[Cell], qualities: dict, sizes: dict,
               config: TuneConfig, labeled: bool) -> str:
    batch = winner.batch
    base = [c for c in cells if c.candidate.file == FP32_FILE and c.candidate.backend == "onnxruntime"
            and not c.candidate.io_binding and c.batch == batch]
    q = qualities[winner.candidate.quality_key]
    what = "accuracy" if labeled else (q.metric or "agreement")
    speed = (f"p50 {winner.p50_ms:.3f} ms at batch {batch}" if config.objective == "latency"
             else f"{winner.throughput_ips:,.0f} img/s at batch {batch}")
    change = "the same as" if abs(q.drop_pp) < 5e-3 else \
        f"{abs(q.drop_pp):.2f} pp {'below' if q.drop_pp > 0 else 'above'}"
    line = (f"Deploy {pick.describe()}: {speed}, {what} {change} fp32 (budget {config.max_drop_pp} pp), "
            f"{sizes[pick.file] / 1e6:.2f} MB")
    if base:
        ref = min(base, key=lambda c: c.key(config.objective))
        ratio = ref.key(config.objective) / winner.key(config.objective)
        line += f"; {ratio:.2f}x the speed of fp32 on onnxruntime at its best thread count ({ref.threads})"
    return line + "."
