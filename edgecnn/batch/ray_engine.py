"""The Ray engine: the same job as a Ray Data pipeline, and the callable class for users' own Datasets.

``Dataset.map_batches(RayPredictor, concurrency=workers, num_cpus=cpus_per_worker, batch_size=...)``
runs :class:`RayPredictor` as a pool of actors; each opens the model once (in ``__init__``) and
answers batches of image paths through the runtime core with the local engine's own chunk code
(:func:`edgecnn.batch.local.answer_chunk`), so both engines write the same rows. The driver groups
the answered rows by shard and writes each shard when it is complete (:meth:`Plan.write`), so
``--resume`` works the same. Users who already hold a Ray Dataset of paths use
:func:`ray_predictor`::

    import ray, edgecnn.batch
    ds = ray.data.from_items([{"path": p} for p in paths])
    out = ds.map_batches(edgecnn.batch.ray_predictor("model.onnx"), concurrency=2, num_cpus=0.5, batch_size=64)
    out.write_parquet("labels/")   # the columns of edgecnn batch's rows, and actor
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.batch.inputs import Decoder
from edgecnn.batch.job import Plan, Progress
from edgecnn.presets import ModelOverrides
from edgecnn.runtime.options import RuntimeOptions

__all__ = ["RayPredictor", "ray_predictor", "run_ray"]

_LOADS: collections.Counter[str] = collections.Counter()  # models opened in this process, by file


class RayPredictor:
    """A ``map_batches`` callable class: the model opened once per actor, batches of ``path`` answered.

    A batch is a dict of columns with ``path`` (image files, or ``FILE.npz#i`` items); the answer is a
    ``pyarrow.Table`` of ``edgecnn batch``'s row columns (:mod:`edgecnn.batch.rows`), the batch's
    other columns carried along, and ``actor`` (``pid:loads``: which process answered and how many
    models it had opened).
    """

    def __init__(self, model: str, *, options: dict[str, Any] | None = None, overrides: ModelOverrides | None = None,
                 params: dict[str, Any] | None = None, columns: dict[str, str] | None = None) -> None:
        from edgecnn._files import sha256_file
        from edgecnn.batch.rows import schema
        from edgecnn.runtime.loading import load_model

        self.model = load_model(model, RuntimeOptions.from_dict(options or {}), overrides=overrides)
        _LOADS[model] += 1
        self.actor = f"{os.getpid()}:{_LOADS[model]}"
        self.decoder = Decoder.of(self.model)
        self.params = params or {}
        self.schema = schema(self.model.card.task)
        path = self.model.model_path
        self.columns = columns or {"model": self.model.card.name,
                                   "model_sha256": sha256_file(path) if path.is_file() else "bytes"}
        self._arrays: dict[str, np.ndarray] = {}

    def __call__(self, batch: dict[str, Any]) -> Any:
        import pyarrow as pa

        from edgecnn.batch.local import answer_chunk

        names = [str(n) for n in batch["path"]]
        rows = answer_chunk(self.model, names, [self._fit(n) for n in names], columns=self.columns,
                            params=self.params)
        table = pa.Table.from_pylist(rows, schema=self.schema)
        for key, values in batch.items():
            if key not in self.schema.names:
                table = table.append_column(key, pa.array(values))
        return table.append_column("actor", pa.array([self.actor] * len(names), pa.string()))

    def _fit(self, name: str) -> Any:
        if "#" in name and name.rsplit("#", 1)[0].endswith(".npz"):
            file, index = name.rsplit("#", 1)
            if file not in self._arrays:
                from edgecnn.batch.inputs import list_inputs

                self._arrays[file] = list_inputs(file).array  # type: ignore[assignment]
            return self.decoder.fit(self._arrays[file][int(index)])
        return self.decoder.fit(Path(name))


def ray_predictor(model: str | Path, *, options: RuntimeOptions | None = None,
                  overrides: ModelOverrides | None = None, top_k: int = 5, conf: float = 0.25, iou: float = 0.45,
                  max_det: int = 300) -> Any:
    """:class:`RayPredictor` bound to ``model`` (a file, or an export directory: its ``deploy.json``),
    for ``Dataset.map_batches`` (pass ``concurrency`` and ``num_cpus`` there): each output row holds
    the columns of ``edgecnn batch``'s Parquet, plus the input batch's own columns and ``actor``."""
    import functools

    return functools.partial(RayPredictor, str(model), options=(options or RuntimeOptions()).to_dict(),
                             overrides=overrides,
                             params={"top_k": top_k, "conf": conf, "iou": iou, "max_det": max_det})


def _cpus(config: Any, total: float) -> float:
    if config.cpus_per_worker is not None:
        return float(config.cpus_per_worker)
    return max(0.1, min(1.0, round((total - 0.5) / config.workers, 2)))


def run_ray(model: str | Path, plan: Plan, step: Progress, *, options: RuntimeOptions | None,
            overrides: ModelOverrides | None) -> tuple[int, int, list[str]]:
    """Answer every shard still to do on Ray; returns (rows written, error rows, notes)."""
    import pyarrow as pa
    import ray

    from edgecnn.batch.rows import schema

    config = plan.config
    started = not ray.is_initialized()
    if started:
        ray.init(address=config.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 configure_logging=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        cpus = _cpus(config, float(ray.cluster_resources().get("CPU", 1)))
        items = [{"path": n, "shard": k, "index": i} for k in plan.todo for i, n in enumerate(plan.names(k))]
        ds = ray.data.from_items(items).map_batches(
            RayPredictor, fn_constructor_args=(str(model),),
            fn_constructor_kwargs={"options": (options or RuntimeOptions()).to_dict(), "overrides": overrides,
                                   "params": config.params(), "columns": plan.model},
            concurrency=config.workers, num_cpus=cpus, batch_size=config.batch_size, batch_format="numpy",
            zero_copy_batch=True)
        pending: dict[int, list[Any]] = collections.defaultdict(list)
        written = errors = 0
        actors: set[str] = set()
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            actors.update(table.column("actor").unique().to_pylist())
            shards = table.column("shard").to_numpy()
            for k in np.unique(shards).tolist():
                pending[k].append(table.filter(pa.array(shards == k)))
                if sum(t.num_rows for t in pending[k]) == len(plan.names(k)):
                    whole = pa.concat_tables(pending.pop(k)).sort_by("index").select(schema(plan.task).names)
                    errors += whole.num_rows - whole.column("error").null_count
                    plan.write_table(k, whole)
                    written += whole.num_rows
            step(table.num_rows)
    finally:
        if started:
            ray.shutdown()
    loads = sorted({a.split(":")[1] for a in actors})
    note = (f"Ray: {len(actors)} actor(s) of {cpus:g} CPU answered (concurrency {config.workers}), each opened the "
            f"model {'once' if loads == ['1'] else 'more than once'}.")
    return written, errors, [note]
