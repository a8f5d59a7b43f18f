"""One batch job: a model over every input of a SOURCE, into Parquet shards in OUT, resumable.

OUT is a Parquet dataset folder (``pyarrow.parquet.read_table(OUT)``, pandas, Spark, Ray and
DuckDB read it whole): ``part-00000.parquet``, ``part-00001.parquet``, ... each holding the rows
of a fixed range of inputs (``shard_size`` of them, in the inputs' order), and ``_manifest.json``
saying what the job is (the inputs' SHA-256, the model file's, the settings). Each shard is written
to a temporary file and renamed into place when complete, so a kill at any instant leaves whole
shards only; ``--resume`` checks the manifest is this job's, removes what a killed run left half
written, and runs only the shards that are missing: no row is lost or written twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecnn._files import atomic_path, atomic_write_text, sha256_file
from edgecnn.batch.inputs import Inputs
from edgecnn.batch.rows import schema
from edgecnn.errors import ConfigError

__all__ = ["BatchConfig", "BatchSummary", "Plan", "ENGINES", "MANIFEST", "shard_name"]

ENGINES = ("local", "ray")
MANIFEST = "_manifest.json"
_SCHEMA = "edgecnn.batch/1"


@dataclass(frozen=True, kw_only=True)
class BatchConfig:
    """Options of one batch job.

    ``workers``: decoding threads (local engine; 0 decodes in the calling thread) or model actors
    (Ray: ``concurrency``). ``cpus_per_worker``: Ray's ``num_cpus`` per actor (None: 1, or less so the
    actors leave Ray's own read tasks half a CPU: two actors of 1 CPU each on a 2-CPU Ray starve them
    and the job hangs).

    Raises:
        ConfigError: for a value out of range or an unknown engine.
    """

    out: Path
    resume: bool = False
    engine: str = "local"
    batch_size: int = 64
    shard_size: int = 4096
    workers: int = 1
    cpus_per_worker: float | None = None  # Ray: None is 1, or less so that the actors leave Ray half a CPU
    address: str | None = None  # Ray: an existing cluster ("auto", "ray://host:10001"); None starts a local one
    top_k: int = 5
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.engine not in ENGINES:
            problems.append(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.batch_size < 1 or self.shard_size < 1 or self.top_k < 1 or self.max_det < 1:
            problems.append("batch size, shard size, top-k and max-det must be >= 1")
        if self.workers < 0 or (self.engine == "ray" and self.workers < 1):
            problems.append(f"workers must be >= 0 (>= 1 with Ray), got {self.workers}")
        if self.cpus_per_worker is not None and not 0 < self.cpus_per_worker <= 1024:
            problems.append(f"cpus per worker must be > 0, got {self.cpus_per_worker}")
        if not (0 <= self.conf <= 1 and 0 <= self.iou <= 1):
            problems.append(f"conf and iou must be in 0-1, got {self.conf}, {self.iou}")
        if problems:
            raise ConfigError("; ".join(problems).capitalize() + ".")

    def params(self) -> dict[str, Any]:
        """The parameters that change the answers (the manifest holds them: a resumed job must match)."""
        return {"top_k": self.top_k, "conf": self.conf, "iou": self.iou, "max_det": self.max_det}


@dataclass(frozen=True, kw_only=True)
class BatchSummary:
    """What a job did: rows written this run (``images``), shards written and found done, errors."""

    out: str
    inputs: int
    images: int
    errors: int
    shards_written: int
    shards_skipped: int
    seconds: float
    engine: str
    model: str
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_s": round(self.images_per_s, 2)}


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The shards of a job and which of them are still to do, with the manifest written."""

    inputs: Inputs
    task: str
    model: dict[str, str]  # the model / model_sha256 columns
    config: BatchConfig
    todo: tuple[int, ...]
    total: int  # shards in all

    @classmethod
    def make(cls, inputs: Inputs, *, model_path: Path, card: Any, config: BatchConfig) -> Plan:
        """Check OUT, write or check the manifest, and find the shards still to do.

        Raises:
            ConfigError: OUT holds another job's results, or results without ``--resume``.
        """
        out = config.out
        digest = sha256_file(model_path) if model_path.is_file() else "bytes"
        manifest = {"schema": _SCHEMA, "inputs": len(inputs), "inputs_sha256": inputs.digest(),
                    "model_sha256": digest, "model": card.name, "task": card.task, "shard_size": config.shard_size,
                    "params": config.params()}
        existing = out / MANIFEST
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file; pass a folder for the Parquet shards.")
        if existing.is_file():
            if not config.resume:
                raise ConfigError(f"{out} holds a batch job's results; pass --resume to finish it, or another --out.")
            _check_same_job(existing, manifest)
        elif out.is_dir() and any(out.iterdir()):
            raise ConfigError(f"{out} is not empty and holds no batch job; pass an empty or new --out folder.")
        out.mkdir(parents=True, exist_ok=True)
        for leftover in out.glob(".part-*"):  # half-written shards of a killed run
            leftover.unlink(missing_ok=True)
        atomic_write_text(existing, json.dumps({**manifest, "source": inputs.source, "model_file": str(model_path)},
                                               indent=2) + "\n")
        total = -(-len(inputs) // config.shard_size)
        todo = tuple(k for k in range(total) if not _done(out / shard_name(k), cls.shard_rows(k, len(inputs),
                                                                                            config.shard_size)))
        return cls(inputs=inputs, task=card.task, model={"model": card.name, "model_sha256": digest}, config=config,
                   todo=todo, total=total)

    @staticmethod
    def shard_rows(index: int, inputs: int, shard_size: int) -> int:
        return min(shard_size, inputs - index * shard_size)

    def names(self, index: int) -> Sequence[str]:
        size = self.config.shard_size
        return self.inputs.names[index * size:(index + 1) * size]

    def write(self, index: int, rows: list[dict[str, Any]]) -> None:
        """Write one complete shard atomically (rows in the inputs' order)."""
        import pyarrow as pa

        self.write_table(index, pa.Table.from_pylist(rows, schema=schema(self.task)))

    def write_table(self, index: int, table: Any) -> None:
        """Write one complete shard, a ``pyarrow.Table`` of the task's schema, atomically.

        Raises:
            RuntimeError: when the table does not hold exactly the shard's inputs, in order (an
                engine's bug must not pass for a finished shard).
        """
        import pyarrow.parquet as pq

        names = list(self.names(index))
        if table.num_rows != len(names) or table.column("path").to_pylist() != names:
            raise RuntimeError(f"shard {index}: {table.num_rows} rows do not match its {len(names)} inputs")
        with atomic_path(self.config.out / shard_name(index)) as tmp:
            pq.write_table(table, tmp)


def _check_same_job(path: Path, manifest: dict[str, Any]) -> None:
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(f"{path} is unreadable; pass another --out (or remove the folder).") from None
    differ = [k for k, v in manifest.items() if old.get(k) != v]
    if differ:
        raise ConfigError(f"--resume: {path.parent} holds another job (its {', '.join(differ)} differ); pass the same "
                          "model, inputs and settings, or another --out.")


def _done(path: Path, rows: int) -> bool:
    """A finished shard: it is there, and Parquet says it holds its rows."""
    if not path.is_file():
        return False
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows) == rows
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError: redo the shard
        path.unlink(missing_ok=True)
        return False


Progress = Callable[[int], None]


def timed(run: Callable[[], tuple[int, int, list[str]]], plan: Plan, *, engine: str, model: str,
          notes: list[str]) -> BatchSummary:
    """Run an engine (returns rows written, error rows and its notes) and sum it up."""
    started = time.perf_counter()
    images, errors, more = run()
    return BatchSummary(out=str(plan.config.out), inputs=len(plan.inputs), images=images, errors=errors,
                        shards_written=len(plan.todo), shards_skipped=plan.total - len(plan.todo),
                        seconds=round(time.perf_counter() - started, 3), engine=engine, model=model,
                        notes=notes + more)
