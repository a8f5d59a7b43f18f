"""``edgecnn bench``: latency and throughput of model files across batches, threads and backends."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgecnn._files import atomic_write_text
from edgecnn.cli._app import echo_wide_table, main
from edgecnn.cli._options import cuda_options, device_option, model_options, split_list
from edgecnn.runtime.options import OV_PRECISIONS, PROVIDERS

if TYPE_CHECKING:
    from edgecnn.presets import ModelOverrides
    from edgecnn.runtime.options import CudaOptions

_BENCH_EPILOG = """\b
Examples:
  edgecnn bench                                          # the packaged reference model
  edgecnn bench model.onnx model.int8.onnx --batch 1,32 --threads 1,2 --csv b.csv --plot b.png
  edgecnn bench model.int8.onnx --compare keras --compare tflite --keras runs/seed
  edgecnn bench model.onnx --provider cuda --cuda-graph --batch 256
"""


@main.command(epilog=_BENCH_EPILOG)
@click.argument("models", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--batch", "batch", default="1,32", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--threads", default="1", show_default=True, help="Thread counts, comma-separated.")
@click.option("--provider", type=click.Choice(PROVIDERS), default="cpu", show_default=True, help="Execution provider.")
@click.option("--allow-fallback", is_flag=True, help="Measure on the CPU (and say so) if the provider is unusable.")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(min=0), help="Untimed runs first.")
@click.option("--runs", default=200, show_default=True, type=click.IntRange(min=1), help="Timed runs per point.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds per point instead of a run count.")
@click.option("--compare", multiple=True, type=click.Choice(["keras", "tflite"]),
              help="Also time the Keras model and/or its LiteRT full-int8 twin (needs [train]).")
@click.option("--keras", "keras_path", type=click.Path(exists=True, path_type=Path), default=None,
              help="Run directory (or .keras file) of the model, for --compare.")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="An .npz (keras layout) whose first 128 train images calibrate LiteRT int8 (default: the embedded "
                   "sample).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a PNG of latency by batch size (needs matplotlib).")
@click.option("--io-binding/--no-io-binding", default=None,
              help="Inputs/outputs in bound device buffers, time the run alone.  [default: on for cuda]")
@click.option("--placement/--no-placement", default=True, show_default=True,
              help="Report the nodes on each provider ('nodes on CPU: N of M', one profiled run per model).")
@click.option("--pixels/--no-pixels", default=True, show_default=True,
              help="Also time the app's call from uint8 pixels (runner '<runner>+pixels'), next to the model alone.")
@click.option("--backend", default="onnxruntime", show_default=True,
              help="Runtimes to measure side by side, comma-separated: onnxruntime, openvino (the [openvino] extra).")
@device_option()
@click.option("--precision", type=click.Choice(OV_PRECISIONS), default=None,
              help="OpenVINO execution precision (default f32: the same results as onnxruntime).")
@cuda_options()
@model_options()
def bench(models: tuple[Path, ...], batch: str, threads: str, provider: str, allow_fallback: bool, warmup: int,
          runs: int, duration: float | None, compare: tuple[str, ...], keras_path: Path | None,
          calibration: Path | None, json_path: Path | None, csv_path: Path | None, plot_path: Path | None,
          io_binding: bool | None, placement: bool, pixels: bool, backend: str, device: str, precision: str | None,
          cuda: CudaOptions, overrides: ModelOverrides) -> None:
    """Benchmark ONNX MODELS (default: the packaged reference model) across batches, threads, providers.
    An export directory stands for every model file it holds (model.onnx, model.int8.onnx, ...)."""
    from edgecnn.runtime import default_model_path
    from edgecnn.runtime.benchmark import BenchConfig, parse_int_list, run_benchmark

    config = BenchConfig(batch_sizes=parse_int_list(batch, "--batch"), threads=parse_int_list(threads, "--threads"),
                         provider=provider, warmup=warmup, runs=runs, duration_s=duration,
                         allow_fallback=allow_fallback, io_binding=io_binding, cuda=cuda, placement=placement,
                         backends=split_list(backend), device=device, precision=precision, pixels=pixels)
    # The Keras/LiteRT baselines import TensorFlow in their own processes: handed to the runtime, never imported by it.
    from edgecnn.baselines import run_baselines

    if plot_path is not None:  # before minutes of measuring, not after
        from edgecnn._optional import require

        require("matplotlib", "plot")
    if not models:
        click.echo(f"Benchmarking the packaged reference model {default_model_path().name}.", err=True)

    def progress(r: Any) -> None:
        click.echo(f"  {r.variant} batch {r.batch}, {r.threads} thread(s): p50 {r.stats['p50_ms']:.3f} ms", err=True)

    report = run_benchmark(_model_files(models) or [default_model_path()], config, compare=compare,
                           keras_path=keras_path,
                           calibration_data=calibration, baseline_runner=run_baselines, overrides=overrides,
                           on_result=progress)
    m = report.machine
    gpu = f"{m['gpu'][0]['name']}, " if provider != "cpu" and m.get("gpu") else ""
    echo_wide_table(f"edgecnn bench - {gpu}{m['cpu']} ({m['usable_cpus']} cpus, {' '.join(m['simd'])}), onnxruntime "
                     f"{m['onnxruntime']}", *report.table_rows())
    for line in report.placement_lines():
        click.echo(line)
    for note in report.notes + sorted({n for r in report.results for n in r.notes}):
        click.echo(f"note: {note}")
    for path, text in ((json_path, report.to_json), (csv_path, report.to_csv)):
        if path is not None:
            atomic_write_text(path, text())
            click.echo(f"wrote {path}")
    if plot_path is not None:
        click.echo(f"wrote {report.plot(plot_path)}")


def _model_files(paths: tuple[Path, ...]) -> list[Path]:
    """Model files, an export directory replaced by the verified variants it holds (export moves
    nothing else into it)."""
    out: list[Path] = []
    for path in paths:
        if not path.is_dir():
            out.append(path)
            continue
        found = sorted(p for p in path.iterdir() if p.is_file() and p.name.startswith("model")
                       and p.suffix in (".onnx", ".tflite"))
        if not found:
            raise click.BadParameter(f"{path} holds no model files (model*.onnx); pass an export directory or "
                                     ".onnx files.", param_hint="MODELS")
        out += found
    return out
