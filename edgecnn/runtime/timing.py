"""How one point is measured: the one timing loop, its statistics, peak memory and the machine.

:func:`time_callable` is edgecnn's one timing loop (``bench``, ``tune``, the Keras/LiteRT baselines
and accuracy-aware int8 time through it) and :func:`latency_stats` the one definition of the
numbers: percentiles per call, and throughput = batch / mean latency. Peak memory is the process's
peak RSS (VmHWM), reset before each variant where Linux allows it; :func:`machine_fingerprint`
says what the numbers were measured on.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgecnn.errors import InputError

__all__ = ["latency_stats", "time_callable", "reset_peak_rss", "peak_rss_mb", "machine_fingerprint",
           "gpu_fingerprint"]


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
