"""``edgecnn bench``: latency and throughput of ONNX models (and, on request, Keras/LiteRT baselines).

The timed loop is as bare as a hand-written one: the input tensor is built once, outside the
loop, and each sample is ``perf_counter_ns`` around one ``session.run`` (tools/bench_harness_check.py
shows the p50 agrees with a plain loop). Peak memory is the process's peak RSS (VmHWM), reset
before each variant where Linux allows it.

Each point is timed twice: the model alone, its preprocessed input ready (the runners below),
and the call an app makes, from uint8 pixels at the input size to every output
(``InferenceModel.run_pixels``: the card's mapping included, inside the backend where it runs
there), as runner ``<runner>+pixels``. The gap between the two is the runtime's per-call cost.

Three ways to call the session (the ``runner`` column):

- ``onnxruntime``: ``session.run`` on a host numpy array; on a GPU every call copies the input
  to the device and the output back (what a naive caller gets).
- ``onnxruntime.iobinding``: input and output live in device buffers bound once; the loop times
  ``run_with_iobinding`` only (default on CUDA: a camera pipeline with GPU decode feeds the device).
- ``onnxruntime.cudagraph``: the same with ``enable_cuda_graph``: onnxruntime captures the run
  once per batch size (a session per batch size) and replays it.

On every model, one extra profiled run reports where the nodes ran ("nodes on CPU: N of M"),
so a CUDA number is never a silent mix of GPU and CPU kernels.

This module sweeps and runs; the timing loop, its statistics, peak memory and the machine
fingerprint are :mod:`edgecnn.runtime.timing`'s, the results and their JSON, CSV, table and plot
:mod:`edgecnn.runtime.bench_report`'s (their names import from here too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.errors import ArtifactError, ConfigError
from edgecnn.runtime.backends import BACKENDS
from edgecnn.runtime.bench_report import CSV_FIELDS, BenchReport, BenchResult, compare_notes
from edgecnn.runtime.options import CudaOptions, RuntimeOptions
from edgecnn.runtime.timing import (
    gpu_fingerprint,
    latency_stats,
    machine_fingerprint,
    peak_rss_mb,
    reset_peak_rss,
    time_callable,
)

log = logging.getLogger(__name__)

__all__ = ["BaselineRunner", "BenchConfig", "BenchResult", "BenchReport", "latency_stats", "machine_fingerprint",
           "gpu_fingerprint", "time_callable",
           "bench_onnx", "run_benchmark", "parse_int_list", "CSV_FIELDS", "peak_rss_mb", "reset_peak_rss",
           "compare_notes"]

# Times the Keras/LiteRT baselines: (keras_file, card dict, *, config=BenchConfig.to_dict(), runners,
# calibration_data) -> the measured points; edgecnn.baselines.run_baselines is one.
BaselineRunner = Callable[..., list[BenchResult]]


@dataclass(frozen=True)
class BenchConfig:
    """What to sweep and how long to measure each point, and the runtime options of every point
    (one thread count and one backend of the sweep each: :meth:`runtime`)."""

    batch_sizes: tuple[int, ...] = (1, 32)
    threads: tuple[int, ...] = (1,)
    provider: str = "cpu"
    warmup: int = 10
    runs: int = 200
    duration_s: float | None = None  # when set: run until this many seconds (at least `min_runs`)
    min_runs: int = 10
    allow_fallback: bool = False
    seed: int = 0
    io_binding: bool | None = None  # None: on for a GPU session, off on the CPU
    cuda: CudaOptions = CudaOptions()  # the CUDA provider's options (a CPU run has none)
    placement: bool = True  # report the share of nodes on each provider (one profiled run per model)
    backends: tuple[str, ...] = ("onnxruntime",)  # each model is measured on each, side by side
    device: str = "CPU"  # OpenVINO's device
    precision: str | None = None  # OpenVINO's execution precision (f32 when None)
    pixels: bool = True  # also time the app's call from uint8 pixels (runner "<runner>+pixels")

    def __post_init__(self) -> None:
        unknown = [b for b in self.backends if b not in BACKENDS]
        if not self.backends or unknown:
            raise ConfigError(f"--backend takes {', '.join(BACKENDS)} (comma-separated); got {list(self.backends)}.")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"Batch sizes must be >= 1, got {self.batch_sizes}.")
        if not self.threads or min(self.threads) < 1:
            raise ConfigError(f"Thread counts must be >= 1, got {self.threads}.")
        if self.warmup < 0 or self.runs < 1 or self.min_runs < 1:
            raise ConfigError(f"Need warmup >= 0 and runs >= 1, got warmup={self.warmup}, runs={self.runs}.")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError(f"duration must be positive, got {self.duration_s}.")
        self.runtime()  # the runtime options' own checks (CUDA graphs need the CUDA provider and IO binding)

    def runtime(self, backend: str = "onnxruntime", threads: int | None = None) -> RuntimeOptions:
        """The runtime options of the points measured on ``backend`` with ``threads``: the CUDA
        options on a GPU provider only, each backend's own settings on that backend only.

        Raises:
            ConfigError: for CUDA graphs on the CPU provider or without IO binding.
        """
        cuda = self.cuda if self.provider != "cpu" or self.cuda.cuda_graph else None
        options = RuntimeOptions(provider=self.provider, threads=threads, allow_fallback=self.allow_fallback,
                                 io_binding=self.io_binding, cuda=cuda, device=self.device, precision=self.precision)
        return options.for_backend(backend)

    def to_dict(self) -> dict[str, Any]:
        """The settings as reports store them (the CUDA options flat, as they always were)."""
        out = asdict(self)
        cuda = out.pop("cuda")
        at = list(out).index("io_binding") + 1
        items = list(out.items())
        return dict(items[:at] + [(k, cuda[k]) for k in ("cuda_graph", "cudnn_conv_algo_search", "prefer_nhwc",
                                                          "device_id")] + items[at:])


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> (1, 8, 32).

    Raises:
        ConfigError: for anything but positive integers.
    """
    try:
        values = tuple(int(p) for p in str(text).split(",") if p.strip())
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers such as 1,32; got {text!r}.") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{what} must be positive integers such as 1,32; got {text!r}.")
    return values


# ---------------------------------------------------------------------------------- ONNX runner

def _synthetic_pixels(card: Any, batch: int, seed: int) -> np.ndarray:
    h, w = card.input_size
    return np.random.default_rng(seed).integers(0, 256, size=(batch, h, w, card.channels), dtype=np.uint8)


# A bench input larger than this is refused before it is allocated (a typo such as --batch 100000000,
# or a model declaring a 100000x100000 input, must not end in a MemoryError or the OOM killer).
MAX_INPUT_BYTES = 4 * 1024**3


def _batches_for(model: Any, config: BenchConfig) -> tuple[list[int], list[str]]:
    """The batch sizes this model can run, and a note for those it cannot (a static batch axis)."""
    notes: list[str] = []
    fixed = model.fixed_batch
    batches = list(config.batch_sizes)
    if fixed is not None and any(b != fixed for b in batches):
        skipped = [b for b in batches if b != fixed]
        batches = [fixed]
        notes.append(f"{model.model_path.name} has a static batch size of {fixed}: measured batch {fixed} only, "
                     f"skipped {', '.join(map(str, skipped))}.")
    per_image = int(np.prod(model.card.input_shape(1)[1:])) * 4
    too_big = [b for b in batches if b * per_image > MAX_INPUT_BYTES]
    if too_big:
        raise ConfigError(f"Batch {too_big[0]} of {model.model_path.name} would need a "
                          f"{too_big[0] * per_image / 1024**3:.1f} GiB input tensor "
                          f"(limit {MAX_INPUT_BYTES / 1024**3:.0f} GiB); pass a smaller --batch.")
    return batches, notes


def bench_onnx(model: str | Path, config: BenchConfig, *, pixels: np.ndarray | None = None,
               overrides: Any = None, on_result: Callable[[BenchResult], None] | None = None,
               backend: str = "onnxruntime") -> list[BenchResult]:
    """Benchmark one ONNX model over the config's thread counts and batch sizes.

    A fresh session is created per thread count (its creation time is reported); the input is a
    fixed random image batch, preprocessed once outside the timed loop. Any model the runtime
    core opens can be timed, labelled or not, of any task; a static batch axis limits the
    batch sizes to that one (the result's notes say which were skipped).

    Raises:
        ArtifactError, ProviderError: from opening the model.
        ConfigError: for a batch whose input tensor would not fit in memory.
    """
    from edgecnn.runtime.core import InferenceModel

    results = []
    placement = None
    for threads in config.threads:
        reset_peak_rss()
        options = config.runtime(backend, threads)
        core = None
        batches: list[int] = list(config.batch_sizes)
        skipped: list[str] = []
        for i, batch in enumerate(list(batches)):
            if core is None or (config.cuda.cuda_graph and i > 0):
                # A CUDA graph is captured for one input shape: a fresh session per batch size.
                core = InferenceModel(model, options, overrides=overrides)
                if i == 0:
                    batches, skipped = _batches_for(core, config)
                    if core.assumptions() and threads == config.threads[0]:
                        log.warning("%s", core.assumptions())
            if batch not in batches:
                continue
            card = core.card
            variant = _variant_name(Path(model), card)
            if config.placement and placement is None and core.backend == "onnxruntime":
                placement = _placement(core)
            px = (pixels[:batch] if pixels is not None and len(pixels) >= batch
                  else _synthetic_pixels(card, batch, config.seed))
            px = np.ascontiguousarray(px, dtype=np.uint8)
            runner, run = core.timed_call(core.preprocess(px))  # the runner: the backend, or how onnxruntime is called
            notes = ([core.info.fallback] if core.info.fallback else []) + skipped
            calls = [(runner, run)]
            if config.pixels:  # the app's call: uint8 pixels to every output, the card's mapping included
                calls.append((f"{runner}+pixels", lambda core=core, px=px: core.run_pixels(px)))
            for name, call in calls:
                times = time_callable(call, warmup=config.warmup, runs=config.runs, duration_s=config.duration_s,
                                      min_runs=config.min_runs)
                results.append(BenchResult(model=card.name, variant=variant, runner=name, precision=card.precision,
                                           provider=core.providers[0], batch=batch, threads=threads,
                                           stats=latency_stats(times, batch), session_s=core.info.creation_s,
                                           peak_rss_mb=peak_rss_mb(), notes=notes, placement=placement))
                if on_result is not None:
                    on_result(results[-1])
                log.debug("%s %s batch %d threads %d: p50 %.3f ms", variant, name, batch, threads,
                          results[-1].stats["p50_ms"])
        del core
    return results


def _placement(model: Any) -> dict[str, Any]:
    """Where the nodes ran, or why that is unknown: the profiled run is a report, never the reason
    a benchmark fails."""
    try:
        p = model.node_placement()
    except Exception as err:  # noqa: BLE001 - any failure of the extra profiled run
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        log.warning("%s: node placement unknown (%s)", model.model_path.name, reason)
        return {"summary": f"placement unknown ({reason})"}
    return {**p.to_dict(), "summary": p.summary()}


def _variant_name(path: Path, card: Any) -> str:
    return f"{card.name}:{card.precision}" if card.architecture not in ("unknown", "external") else path.stem


# ---------------------------------------------------------------------------------- the whole run

def run_benchmark(
    models: Sequence[str | Path],
    config: BenchConfig,
    *,
    compare: Sequence[str] = (),
    keras_path: str | Path | None = None,
    calibration_data: str | Path | None = None,
    baseline_runner: BaselineRunner | None = None,
    overrides: Any = None,
    on_result: Callable[[BenchResult], None] | None = None,
) -> BenchReport:
    """Benchmark every model, plus the Keras/LiteRT baselines named in ``compare``.

    ``calibration_data`` (an .npz in the keras layout; default: the embedded CIFAR-10 sample)
    gives the first 128 train images that calibrate the LiteRT int8 conversion.
    ``baseline_runner`` times the baselines (the CLI passes :func:`edgecnn.baselines.run_baselines`):
    they need TensorFlow, which the runtime never imports, so the caller supplies them.
    ``overrides`` (:class:`edgecnn.presets.ModelOverrides`) describe models without a card;
    ``on_result`` hears of every measured point as it is measured (progress). Ctrl-C keeps the
    points already measured: the report says it was interrupted.

    Raises:
        ArtifactError, ProviderError, ConfigError, MissingDependencyError: for missing models,
            providers, options or baseline dependencies.
    """
    results: list[BenchResult] = []
    per_model: list[list[BenchResult]] = []
    interrupted = None
    try:
        for model in models:
            rows: list[BenchResult] = []
            per_model.append(rows)

            def keep(result: BenchResult, rows: list[BenchResult] = rows) -> None:
                rows.append(result)  # kept as measured: an interrupt loses no finished point
                if on_result is not None:
                    on_result(result)

            for backend in config.backends:
                bench_onnx(model, config, overrides=overrides, on_result=keep, backend=backend)
        results = _disambiguate(per_model, models)
        if compare:
            results += _baselines(models, config, compare, keras_path, calibration_data, baseline_runner)
    except KeyboardInterrupt:
        results = _disambiguate(per_model, models)
        interrupted = f"Interrupted: {len(results)} measured point(s) kept, the rest were not run."
    return BenchReport(machine=machine_fingerprint(),
                       config={**config.to_dict(), "models": [str(m) for m in models], "compare": list(compare)},
                       results=results, notes=compare_notes(results) + ([interrupted] if interrupted else []),
                       interrupted=interrupted is not None)


def _disambiguate(per_model: list[list[BenchResult]], models: Sequence[str | Path]) -> list[BenchResult]:
    """Every model's results in one list; where two files have the same card name and precision,
    their variants get the file name added."""
    names = [rows[0].variant if rows else None for rows in per_model]
    return [replace(r, variant=f"{r.variant} ({Path(models[i]).name})") if names.count(names[i]) > 1 else r
            for i, rows in enumerate(per_model) for r in rows]


def _baselines(models: Sequence[str | Path], config: BenchConfig, compare: Sequence[str],
               keras_path: str | Path | None, calibration_data: str | Path | None,
               baseline_runner: BaselineRunner | None) -> list[BenchResult]:
    unknown = set(compare) - {"keras", "tflite", "litert"}
    if unknown:
        raise ConfigError(f"Unknown --compare value(s) {sorted(unknown)}; choose keras and/or tflite.")
    if config.provider != "cpu":
        raise ConfigError("The Keras and LiteRT baselines run on the CPU; use --provider cpu with --compare.")
    if baseline_runner is None:
        raise ConfigError("compare needs a baseline_runner, e.g. edgecnn.baselines.run_baselines.")
    from edgecnn.runtime.core import InferenceModel

    card = InferenceModel(models[0], provider="cpu").card
    keras_file = _find_keras(keras_path, card)
    results = baseline_runner(keras_file, card.to_dict(), config=config.to_dict(),
                              runners=["litert" if c == "tflite" else c for c in compare],
                              calibration_data=calibration_data)
    wrong = next((r for r in results if not isinstance(r, BenchResult)), None)
    if wrong is not None:
        raise TypeError(f"The baseline runner returned a {type(wrong).__name__}; it returns BenchResult objects "
                        "(BenchResult.from_dict reads one from its fields).")
    return list(results)


def _find_keras(keras_path: str | Path | None, card: Any) -> Path:
    candidates = []
    if keras_path is not None:
        candidates.append(Path(keras_path))
    elif card.export.get("source_run"):
        candidates.append(Path(card.export["source_run"]))
    for c in candidates:
        if c.is_dir() and (c / "model.keras").is_file():
            return c / "model.keras"
        if c.is_file() and c.suffix == ".keras":
            return c
    raise ArtifactError(
        "--compare needs the Keras model: pass --keras RUN_DIR (holding model.keras) or a .keras file"
        + (f"; {candidates[0]} has none" if candidates else "; the model card names no source run") + "."
    )
