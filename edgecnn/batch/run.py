"""``edgecnn batch``'s library entry point: open the model, plan the shards, run an engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from edgecnn.batch.inputs import list_inputs
from edgecnn.batch.job import BatchConfig, BatchSummary, Plan, Progress, timed
from edgecnn.presets import ModelOverrides
from edgecnn.runtime.options import RuntimeOptions

__all__ = ["run_batch"]


def run_batch(model: str | Path, source: str | Path, config: BatchConfig, *, options: RuntimeOptions | None = None,
              overrides: ModelOverrides | None = None,
              progress: Callable[[int, int], Progress] | None = None) -> BatchSummary:
    """Answer every input of ``source`` with ``model`` (a file, or an export directory as ``edgecnn
    tune`` left it: its ``deploy.json`` gives the file and threads) into ``config.out``.

    ``progress(total, done)`` is called once with the number of inputs and of those already done
    (a resumed job) and returns the callback the engine calls with each chunk's size.

    Raises:
        DataError: for a source that names no image.
        ArtifactError, ProviderError: for a model that cannot be opened.
        ConfigError: OUT holds another job, or results without ``config.resume``; bad settings.
        MissingDependencyError: pyarrow (or Ray for ``engine="ray"``) is not installed.
    """
    from edgecnn._optional import require
    from edgecnn.runtime.loading import load_model

    require("pyarrow", "batch")
    if config.engine == "ray":
        require("ray", "ray")
    inputs = list_inputs(source)
    options = _runtime(model, options, config)
    opened = load_model(model, options, overrides=overrides)
    plan = Plan.make(inputs, model_path=opened.model_path, card=opened.card, config=config)
    done = sum(Plan.shard_rows(k, len(inputs), config.shard_size) for k in range(plan.total) if k not in plan.todo)
    step = progress(len(inputs), done) if progress else (lambda n: None)
    notes = [opened.deploy_note] if opened.deploy_note else []
    if config.engine == "ray":
        from edgecnn.batch.ray_engine import run_ray

        del opened  # the actors open their own copies
        return timed(lambda: run_ray(model, plan, step, options=options, overrides=overrides), plan, engine="ray",
                     model=str(model), notes=notes)
    from edgecnn.batch.local import run_local

    return timed(lambda: run_local(opened, plan, step), plan, engine="local", model=str(opened.model_path),
                 notes=notes)


def _runtime(model: str | Path, options: RuntimeOptions | None, config: BatchConfig) -> RuntimeOptions:
    """The runtime options of a batch job: onnxruntime's idle threads do not spin (the decoding runs
    beside the model: the CIFAR-10 CNN on 2 cores went from 3,070 to 3,710 images/s, MobileNetV2
    unchanged), and a Ray actor's threads are its ``num_cpus`` (rounded, at least 1), unless the user
    or ``deploy.json`` set them."""
    from edgecnn.runtime.deploy import resolve_dir

    options = options or RuntimeOptions()
    if options.spin is None and options.backend in (None, "onnxruntime"):
        options = replace(options, spin=False)
    if config.engine != "ray" or options.threads is not None:
        return options
    if Path(model).is_dir() and resolve_dir(model, options)[1].threads is not None:
        return options  # deploy.json's, measured by edgecnn tune
    return replace(options, threads=max(1, round(config.cpus_per_worker or 1)))
