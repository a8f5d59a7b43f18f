"""``edgecnn batch``: a model over a folder, glob, list or .npz of images, into resumable Parquet shards."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgecnn.cli._app import main
from edgecnn.cli._options import model_options, runtime_options

if TYPE_CHECKING:
    from edgecnn.presets import ModelOverrides
    from edgecnn.runtime.options import RuntimeOptions

_BATCH_EPILOG = """\b
Examples:
  edgecnn batch runs/seed/export photos/ --out labels/            # deploy.json's file and threads
  edgecnn batch model.onnx 'archive/**/*.jpg' --out scores/ --workers 2
  edgecnn batch model.onnx paths.txt --out scores/ --resume         # after a kill: only the missing shards
  edgecnn batch yolov8n.onnx frames/ --out boxes/ --engine ray --workers 2 --cpus-per-worker 0.5
  python -c "import pyarrow.parquet as pq; print(pq.read_table('labels').to_pandas().head())"
"""


@main.command(epilog=_BATCH_EPILOG)
@click.argument("model", type=click.Path(exists=True, path_type=Path), metavar="MODEL.onnx|EXPORT_DIR")
@click.argument("source", metavar="SOURCE")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder of Parquet shards (part-00000.parquet, ...) and _manifest.json.")
@click.option("--resume", is_flag=True, help="Finish the job in --out: skip its complete shards, redo the rest.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: threads decode, this process answers; ray: a Ray Data pipeline (the [ray] extra).")
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True,
              help="local: decoding threads (0: decode between model calls); ray: model actors (concurrency).")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=None,
              help="ray: num_cpus of each actor (fractions share a CPU; default 1, or less so that the actors leave "
                   "Ray's read tasks half a CPU).")
@click.option("--address", default=None, help="ray: an existing cluster ('auto', ray://HOST:10001); default: a "
              "local Ray started for this job.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Images per model call.")
@click.option("--shard-size", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Inputs per Parquet shard (the unit --resume redoes).")
@click.option("--top-k", "-k", default=5, show_default=True, type=click.IntRange(min=1),
              help="classify: classes per image.")
@click.option("--conf", default=0.25, show_default=True, type=click.FloatRange(0, 1), help="detect: score threshold.")
@click.option("--iou", default=0.45, show_default=True, type=click.FloatRange(0, 1), help="detect: NMS IoU threshold.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@runtime_options()
@model_options()
def batch(model: Path, source: str, out_dir: Path, resume: bool, engine: str, workers: int,
          cpus_per_worker: float | None,
          address: str | None, batch_size: int, shard_size: int, top_k: int, conf: float, iou: float, quiet: bool,
          runtime: RuntimeOptions, overrides: ModelOverrides) -> None:
    """Run MODEL on every image of SOURCE into Parquet: one row per input (path, answers, the model's
    SHA-256, an error column for inputs that cannot be read).

    SOURCE: a folder (recursive), a quoted glob, a text file of paths, or an .npz (x_test).
    """
    import json

    from edgecnn.batch import BatchConfig, run_batch

    config = BatchConfig(out=out_dir, resume=resume, engine=engine, batch_size=batch_size, shard_size=shard_size,
                         workers=workers, cpus_per_worker=cpus_per_worker, address=address, top_k=top_k, conf=conf,
                         iou=iou, progress=not quiet)
    with _progress(enabled=not quiet) as progress:
        summary = run_batch(model, source, config, options=runtime, overrides=overrides, progress=progress)
    for note in summary.notes:
        click.echo(note, err=True)
    click.echo(json.dumps(summary.to_dict()))
    if summary.errors:
        click.echo(f"{summary.errors} input(s) could not be read: their rows carry the reason in the error column.",
                   err=True)


class _progress:
    """A rich progress bar (images/s, ETA) on stderr, or nothing."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]} img/s"), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=False)
        self.bar.start()
        return self.start

    def start(self, total: int, done: int) -> Any:
        import time

        task = self.bar.add_task("batch", total=total, completed=done, rate="-")
        began, counted = time.perf_counter(), [0]

        def step(n: int) -> None:
            counted[0] += n
            rate = counted[0] / max(time.perf_counter() - began, 1e-9)
            self.bar.update(task, advance=n, rate=f"{rate:,.0f}")

        return step

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
