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
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.errors import ArtifactError, ConfigError, InputError
from edgecnn.runtime.backends import BACKENDS
from edgecnn.runtime.options import CudaOptions, RuntimeOptions

log = logging.getLogger(__name__)

__all__ = ["BaselineRunner", "BenchConfig", "BenchResult", "BenchReport", "latency_stats", "machine_fingerprint",
           "gpu_fingerprint", "time_callable",
           "bench_onnx", "run_benchmark", "parse_int_list", "CSV_FIELDS", "peak_rss_mb", "reset_peak_rss"]

CSV_FIELDS = ["model", "variant", "runner", "precision", "provider", "batch", "threads", "runs", "mean_ms", "std_ms",
              "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms", "throughput_ips", "session_s", "peak_rss_mb"]


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


@dataclass
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

# Times the Keras/LiteRT baselines: (keras_file, card dict, *, config=BenchConfig.to_dict(), runners,
# calibration_data) -> the measured points; edgecnn.baselines.run_baselines is one.
BaselineRunner = Callable[..., list[BenchResult]]


@dataclass
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


# ---------------------------------------------------------------------------------- statistics

def latency_stats(times_s: Sequence[float], batch: int) -> dict[str, float]:
    """Latency statistics in milliseconds and throughput in images per second.

    Percentiles use linear interpolation (numpy's default); ``std`` is the population standard
    deviation. ``throughput_ips`` is the images per second over the measured calls: ``batch /
    mean latency`` (``batch x runs / their total time``), the one definition every edgecnn report
    uses (``edgecnn bench``, ``edgecnn tune``'s table and report, ``deploy.json``). The p50 is
    beside it for what one call costs; a throughput from the p50 would hide the slow calls a
    stream of batches does pay.

    Raises:
        InputError: for no timings or a batch < 1.
    """
    t = np.asarray(times_s, dtype=np.float64) * 1e3
    if t.size == 0 or batch < 1:
        raise InputError(f"Need at least one timing and batch >= 1, got {t.size} timings, batch {batch}.")
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    mean = float(t.mean())
    return {"runs": int(t.size), "mean_ms": mean, "std_ms": float(t.std()), "min_ms": float(t.min()),
            "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "max_ms": float(t.max()),
            "throughput_ips": batch * 1e3 / mean if mean > 0 else float("inf")}


def time_callable(fn: Callable[[], Any], *, warmup: int, runs: int, duration_s: float | None = None,
                  min_runs: int = 10) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then time it ``runs`` times (or for ``duration_s``):
    the one timing loop of edgecnn (bench, tune and the baselines time through it), as bare as a
    hand-written one; a caller interleaving several models calls it once per model per round.

    Returns seconds per call, one sample per call: ``perf_counter_ns`` around ``fn()`` and nothing
    else. With ``duration_s`` the calls go on until that many seconds have passed and at least
    ``min_runs`` calls were timed (``runs`` is then unused).
    """
    for _ in range(warmup):
        fn()
    clock = time.perf_counter_ns
    times: list[int] = []
    if duration_s is None:
        for _ in range(runs):
            t0 = clock()
            fn()
            times.append(clock() - t0)
    else:
        deadline = clock() + int(duration_s * 1e9)
        while len(times) < min_runs or clock() < deadline:
            t0 = clock()
            fn()
            times.append(clock() - t0)
    return [t * 1e-9 for t in times]


# --------------------------------------------------------------------------------- memory, machine

def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process in MiB (VmHWM, else ru_maxrss)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
    except (ImportError, OSError):
        return None


def machine_fingerprint() -> dict[str, Any]:
    """CPU model, SIMD flags, cores and library versions of this machine."""
    import onnxruntime as ort

    from edgecnn.runtime.cpu import cpu_model_and_flags

    cpu, flags = cpu_model_and_flags()
    simd = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
            "amx_int8", "amx_bf16", "neon", "asimd"]
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu, "simd": [f for f in simd if f in flags], "logical_cpus": os.cpu_count(), "usable_cpus": usable,
        "gpu": gpu_fingerprint(),
        "machine": platform.machine(), "os": platform.platform(), "python": platform.python_version(),
        "numpy": np.__version__, "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def gpu_fingerprint() -> list[dict[str, str]]:
    """Name, driver and memory of each NVIDIA GPU (``nvidia-smi``); empty without one."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    keys = ("name", "driver", "memory")
    return [dict(zip(keys, (v.strip() for v in line.split(",")))) for line in out.splitlines() if line.strip()]


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
                results.append(BenchResult(card.name, variant, name, card.precision, core.providers[0], batch,
                                           threads, latency_stats(times, batch), session_s=core.info.creation_s,
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
        _disambiguate(per_model, models)
        results = [r for rows in per_model for r in rows]
        if compare:
            results += _baselines(models, config, compare, keras_path, calibration_data, baseline_runner)
    except KeyboardInterrupt:
        _disambiguate(per_model, models)
        results = [r for rows in per_model for r in rows]
        interrupted = f"Interrupted: {len(results)} measured point(s) kept, the rest were not run."
    report = BenchReport(machine_fingerprint(), {**config.to_dict(), "models": [str(m) for m in models],
                                                  "compare": list(compare)}, results)
    report.notes = compare_notes(results) + ([interrupted] if interrupted else [])
    report.interrupted = interrupted is not None
    return report


def _disambiguate(per_model: list[list[BenchResult]], models: Sequence[str | Path]) -> None:
    """Two files with the same card name and precision: add the file name to the variant."""
    names = [rows[0].variant if rows else None for rows in per_model]
    for i, rows in enumerate(per_model):
        if rows and names.count(names[i]) > 1:
            for r in rows:
                r.variant = f"{r.variant} ({Path(models[i]).name})"


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
    from edgecnn.errors import ArtifactError

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
