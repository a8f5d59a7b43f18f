"""``edgecnn export``: a run or a model file to verified ONNX with quantized variants."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import click

from edgecnn.cli._app import echo_table, main
from edgecnn.cli._options import model_options
from edgecnn.export.quant_config import CALIBRATION_METHODS, CPU_TARGET_CHOICES
from edgecnn.export.variants import (
    DEFAULT_MIN_SQNR_DB,
    EXPORT_MODES,
    EXPORT_TTA,
    GUARD_POLICIES,
    KERAS_SOURCES,
)

_EXPORT_EPILOG = """\b
Examples:
  edgecnn export runs/seed                               # model.onnx + export_report.{json,md}
  edgecnn export runs/seed -q int8 -q fp16 --layout nchw --triton triton_repo
  edgecnn export runs/seed -q int8 --calibration-method percentile --max-accuracy-drop 0.5
  edgecnn export runs/seed -q int8 --accuracy-aware         # keep the worst-quantized nodes in float if needed
  edgecnn export runs/mnv2 -q int8 --qat-epochs 2           # quantization-aware fine-tuning (Keras sources)
  edgecnn export mine.keras -q int8 --calibration-data photos/ --preprocess tf --labels labels.txt
  edgecnn export saved_model_dir/ -q int8 --calibration-data photos/ --preprocess imagenet
  edgecnn export model.tflite --calibration-data photos/          # photos without class folders: agreement
  edgecnn export other.onnx -q int8 --calibration-data images/ --mean 123.7,116.3,103.5 --std 58.4,57.1,57.4
  edgecnn export yolov8n.onnx -q int8 --calibration-data frames/  # Ultralytics metadata: task, size, names
  edgecnn export runs/seed -q int8 --self-contained         # + model.self-contained.onnx: pixels in, answers out
"""


@main.command(epilog=_EXPORT_EPILOG)
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: RUN/export, or <stem>-export/ next to a model file).")
@click.option("--quantize", "-q", multiple=True, type=click.Choice(EXPORT_MODES),
              help="Add a variant (repeatable): int8 (static, QDQ), int8-dynamic, fp16; litert-int8: a .tflite "
                   "for LiteRT (XNNPack) from a Keras source.")
@click.option("--opset", type=click.IntRange(7, 23), default=None,
              help="ONNX opset (default: 17 for converted models; an .onnx source keeps its own unless given).")
@click.option("--calibration-data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Real images (.npz or folder) for calibration and checks (default: the run's dataset). With class "
                   "sub-folders: accuracy; loose images: agreement with fp32.")
@click.option("--eval-data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Images (.npz or folder; class sub-folders add accuracy) that judge every variant, all of them: "
                   "more evidence for the guard than the held-out part of --calibration-data.")
@click.option("--calibration-samples", type=click.IntRange(min=16), default=512, show_default=True)
@click.option("--calibration-method", type=click.Choice(CALIBRATION_METHODS), default="minmax",
              show_default=True)
@click.option("--cpu-target", type=click.Choice(CPU_TARGET_CHOICES), default="auto", show_default=True,
              help="CPU the int8 model runs on: avx2 uses 7-bit weights (no U8S8 saturation without VNNI); vnni and "
                   "arm64 all 8 bits; auto: this machine's (VNNI or AMX -> vnni).")
@click.option("--exclude-node", multiple=True, help="ONNX node name to keep in float (repeatable).")
@click.option("--per-tensor", is_flag=True,
              help="int8: one weight scale per tensor instead of per output channel (for runtimes without "
                   "per-channel support; usually less accurate).")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Fail if a variant loses more accuracy than fp32 (percentage points; of top-1 agreement "
                   "with fp32 when the data has no labels).")
@click.option("--guard", "guard_policy", type=click.Choice(GUARD_POLICIES), default="lenient", show_default=True,
              help="What a variant gets when the 95% interval of its loss straddles --max-accuracy-drop (too few "
                   "images to tell): lenient passes it with a note, strict refuses it.")
@click.option("--min-sqnr", type=float, default=DEFAULT_MIN_SQNR_DB, show_default=True,
              help="Models without a task head (--task raw): the least signal-to-quantization-noise ratio (dB) "
                   "every output of a variant must keep against fp32.")
@click.option("--no-chance-check", is_flag=True,
              help="Do not refuse an fp32 model whose accuracy on labelled data is at chance level (a check that "
                   "catches wrong preprocessing flags).")
@click.option("--accuracy-aware", is_flag=True,
              help="int8: if plain int8 misses --max-accuracy-drop, keep the nodes that quantize worst in float and "
                   "retry until it passes (the report lists them, with the size and latency cost).")
@click.option("--atol", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="Max |source - ONNX| allowed for fp32 (relative to outputs larger than 1).")
@click.option("--test-images", type=click.IntRange(min=2), default=None,
              help="Evaluate on the first N test images only.")
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim graph simplification.")
@click.option("--tta", type=click.Choice(EXPORT_TTA), default="none", show_default=True,
              help="Keras sources: bake flip test-time augmentation into the graph (the image and its mirror, logits "
                   "averaged); each image then costs two forward passes.")
@click.option("--qat-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="int8 by quantization-aware training: fine-tune a fake-quantized copy of the Keras model (a run, "
                   "or a .keras/.h5 with labelled --calibration-data) for N epochs and export that as model.int8.onnx, "
                   "judged by the same guard; 0: post-training calibration.")
@click.option("--qat-lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="Learning rate of --qat-epochs (Adam, cosine decay).")
@click.option("--self-contained", is_flag=True,
              help="Also write each ONNX file as <file>.self-contained.onnx: uint8 RGB NHWC pixels in, the task's "
                   "answers out (probabilities + top-k, NMS-decoded boxes, class map), standard ONNX ops only, for "
                   "apps outside Python; each checked against its file run by edgecnn.")
@click.option("--triton", "triton_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write a Triton Inference Server model repository here.")
@model_options(layout_help="Input layout: of the exported model for Keras/SavedModel/TFLite sources (default nhwc); "
                           "of an .onnx source as it is (default: read from its input shape).")
def export(source: Path, out_dir: Path | None, quantize: tuple[str, ...], opset: int | None,
           calibration_data: Path | None, calibration_samples: int, calibration_method: str, cpu_target: str,
           exclude_node: tuple[str, ...], max_accuracy_drop: float, atol: float, test_images: int | None,
           no_simplify: bool, triton_dir: Path | None, accuracy_aware: bool, per_tensor: bool, tta: str,
           guard_policy: str, min_sqnr: float, no_chance_check: bool, eval_data: Path | None,
           qat_epochs: int, qat_lr: float, self_contained: bool, overrides: Any) -> None:
    """Export SOURCE to verified ONNX, with quantized variants.

    SOURCE: a run directory, a .keras/.h5 file, a TensorFlow SavedModel directory, a .tflite or an
    .onnx file. What the file does not say about itself comes from the model flags.
    """
    from edgecnn.export import ExportConfig, QuantizeConfig, export_model
    from edgecnn.export.report import interval_text, metric_text, status_text

    quant = QuantizeConfig.for_target(cpu_target, calibration_method=calibration_method,
                                      calibration_samples=calibration_samples, exclude_nodes=exclude_node,
                                      per_channel=not per_tensor)
    config = ExportConfig(opset=opset, quantize=quantize, simplify=not no_simplify, atol=atol, test_images=test_images,
                          max_accuracy_drop=max_accuracy_drop, quant=quant, triton_dir=triton_dir,
                          accuracy_aware=accuracy_aware, tta=tta, guard=guard_policy, min_sqnr_db=min_sqnr,
                          check_chance=not no_chance_check, eval_data=eval_data, self_contained=self_contained)
    with _qat_config(config, source, epochs=qat_epochs, lr=qat_lr, data=calibration_data,
                     overrides=overrides) as config:
        report = export_model(source, out_dir=out_dir, config=config, calibration_data=calibration_data,
                              overrides=overrides)
    echo_table(f"{report.card_name} ({report.task}) -> {report.out_dir}",
                ["precision", "file", "KiB", "accuracy", "delta pp", "vs fp32", "guard [95%]", "status"],
                [[v.precision, v.file or "-", f"{v.size_bytes / 1024:.1f}",
                  "-" if v.accuracy is None else f"{100 * v.accuracy:.2f}%",
                  "-" if v.accuracy_delta_pp is None else f"{v.accuracy_delta_pp:+.2f}", metric_text(v),
                  interval_text(v),
                  status_text(v)] for v in report.variants])
    for t in report.self_contained:
        click.echo(f"self-contained {t.precision}: {t.file or '(not written)'}, {t.metric.replace('_', ' ')} "
                   f"{t.value:.4f} vs the runtime on {t.images} images ({t.detail})")
    for v in report.variants:
        if v.verdict and v.verdict["outcome"] == "unsure":
            click.echo(f"guard {v.precision}: {v.guard}")
    for v in report.variants:
        if v.accuracy_aware:
            click.echo(f"accuracy-aware {v.precision}: {v.accuracy_aware.message}")
    for note in report.notes:  # the assumptions, if any, were logged as a warning before the export ran
        click.echo(f"note: {note}")


@contextlib.contextmanager
def _qat_config(config: Any, source: Path, *, epochs: int, lr: float, data: Path | None, overrides: Any):
    """``config`` for ``export --qat-epochs``: the Keras model fine-tuned with fake quantization
    (edgecnn.train.qat) into a temporary folder, handed to the export as its int8 variant."""
    if not epochs:
        yield config
        return
    import dataclasses
    import tempfile

    from edgecnn.errors import ConfigError
    from edgecnn.export.qat import QATModel
    from edgecnn.export.sources import detect_kind

    if "int8" not in config.quantize:
        raise ConfigError("--qat-epochs fine-tunes the model for its int8 variant: add -q int8.")
    if config.accuracy_aware or config.tta != "none":
        raise ConfigError("--qat-epochs cannot be combined with --accuracy-aware or --tta: drop one of them.")
    kind = detect_kind(source)
    if kind not in KERAS_SOURCES:
        raise ConfigError(f"--qat-epochs fine-tunes a Keras model and {source} is a {kind} model: pass the run "
                          "directory or the .keras/.h5 file it came from (with labelled training images as "
                          "--calibration-data when it is not a run), or drop --qat-epochs.")
    from edgecnn.train.qat import QATConfig, fine_tune_source

    bits = 7 if config.quant.reduce_range else 8
    qat = QATConfig(epochs=epochs, lr=lr, per_channel=config.quant.per_channel, weight_bits=bits)
    with tempfile.TemporaryDirectory(prefix="edgecnn-qat-") as tmp:
        path = Path(tmp) / "qat.keras"
        info = fine_tune_source(source, path, overrides=overrides, data=data, config=qat,
                                progress=lambda line: click.echo(line, err=True))
        yield dataclasses.replace(config, qat=QATModel(path, qat.per_channel, bits, info))
