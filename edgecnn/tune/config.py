"""What ``edgecnn tune`` sweeps and how it judges: :class:`TuneConfig` and the objectives.

Nothing heavy is imported here (no numpy, no onnxruntime): the CLI takes its choices from this
module when it builds ``--help``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from edgecnn.errors import ConfigError

__all__ = ["OBJECTIVES", "TuneConfig", "default_threads"]

OBJECTIVES = ("latency", "throughput")


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

    ``objective``: ``latency`` ranks by p50 per call at the smallest batch size, ``throughput``
    by p50 per image at the largest (the median call, so that one call preempted on a shared
    machine does not decide; the images per second reported beside it are batch / mean latency,
    as everywhere in edgecnn). ``max_drop_pp``: the accuracy budget in percentage points below
    fp32 on onnxruntime (of the task's agreement with fp32 when there are no labels).
    ``seconds``: measuring time per cell. ``images``: held-out images for the quality check.
    ``confirm``: how many of the fastest configurations are measured again, interleaved.

    Raises:
        ConfigError: for an unknown objective or backend, or a count or budget out of range.
    """

    batch_sizes: tuple[int, ...] = (1,)
    threads: tuple[int, ...] | None = None  # None: default_threads()
    backends: tuple[str, ...] | None = None  # None: onnxruntime, and openvino/litert when installed
    device: str = "CPU"
    objective: str = "latency"
    max_drop_pp: float = 1.0
    seconds: float = 1.0
    images: int = 2000
    data: str | None = None
    confirm: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        # here, not at the top: the CLI builds `tune --help` from this module without loading the runtime
        # (tests/test_imports.py); runtime.options itself is light
        from edgecnn.runtime.options import BACKENDS

        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective must be {' or '.join(OBJECTIVES)}, got {self.objective!r}.")
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
        """The batch size the objective ranks at: the smallest for latency, the largest for throughput."""
        return min(self.batch_sizes) if self.objective == "latency" else max(self.batch_sizes)
