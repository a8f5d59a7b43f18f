"""``edgecnn tune``: every variant x backend x threads x batch of an export directory, measured here."""

from __future__ import annotations

from pathlib import Path

import click

from edgecnn.cli._app import echo_wide_table, main
from edgecnn.cli._options import device_option, split_list
from edgecnn.tune.config import OBJECTIVES


@main.command(epilog="\b\nExamples:\n  edgecnn tune runs/seed/export\n  edgecnn tune runs/mnv2/export --batch 1,32 "
                    "--objective throughput --max-drop 0.5\n  edgecnn predict runs/seed/export cat.jpg   # follows "
                    "deploy.json")
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--batch", default="1", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--threads", default=None, help="Thread counts, comma-separated.  [default: 1, 2, 4, ... up to the "
                                              "cores]")
@click.option("--backend", default=None, help="Backends to try, comma-separated.  [default: onnxruntime, and openvino "
              "and litert when installed]")
@device_option()
@click.option("--objective", type=click.Choice(OBJECTIVES), default="latency", show_default=True,
              help="latency: p50 at the smallest batch; throughput: p50 per image at the largest.")
@click.option("--max-drop", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Accuracy budget: percentage points below fp32 (of agreement with fp32 without labels).")
@click.option("--seconds", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Measuring time per configuration, thread count and batch size.")
@click.option("--images", default=2000, show_default=True, type=click.IntRange(min=1),
              help="Held-out images for the accuracy check.")
@click.option("--data", help="Images to judge accuracy on (.npz or folder) when the model's own dataset is not here.")
@click.option("--confirm", default=3, show_default=True, type=click.IntRange(min=1),
              help="Re-measure this many of the fastest, interleaved, before picking.")
@click.option("--no-write", is_flag=True, help="Measure and print; leave deploy.json as it is.")
@click.option("--json", "as_json", is_flag=True, help="Print the tune report as JSON instead of the table.")
def tune(export_dir: Path, batch: str, threads: str | None, backend: str | None, device: str, objective: str,
         max_drop: float, seconds: float, images: int, data: str | None, confirm: int, no_write: bool,
         as_json: bool) -> None:
    """Measure every variant x backend x threads x batch of EXPORT_DIR here, join accuracy and size,
    print the Pareto front and write deploy.json (which predict, serve and Classifier.from_dir follow)."""
    import json

    from edgecnn.runtime.benchmark import parse_int_list
    from edgecnn.tune import TuneConfig
    from edgecnn.tune import tune as run_tune

    config = TuneConfig(batch_sizes=parse_int_list(batch, "--batch"),
                        threads=parse_int_list(threads, "--threads") if threads else None,
                        backends=split_list(backend) if backend else None,
                        device=device, objective=objective, max_drop_pp=max_drop, seconds=seconds,
                        images=images,
                        data=data, confirm=confirm)
    report = run_tune(export_dir, config, write=not no_write, progress=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=float))
        return
    m = report.machine
    echo_wide_table(f"edgecnn tune {export_dir} - {m['cpu']} ({m['usable_cpus']} cpus, {' '.join(m['simd'])}); "
                     f"{objective}, budget {max_drop} pp", *report.table())
    click.echo("* the pick   P Pareto front (latency, accuracy drop, size)   x over the accuracy budget")
    if any(row[0].startswith("*") and "P" not in row[0] for row in report.table()[1]):
        click.echo("note: the pick (*) is the fastest within the budget after the top configurations were measured "
                   "again; P marks the front of the first pass, which the second pass reordered.")
    for note in report.notes:
        click.echo(f"note: {note}")
    click.echo(report.recommendation)
    if not no_write:
        click.echo(f"wrote {export_dir / 'deploy.json'} and {export_dir / 'tune_report.json'}")
