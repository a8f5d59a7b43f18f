"""The ``edgecnn`` command line: thin click commands over the stage libraries.

Stage modules are imported inside each command body, so ``edgecnn --help``, ``predict``,
``bench`` and ``serve`` never load TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgecnn import __version__
from edgecnn._optional import missing_module_message
from edgecnn.errors import EdgecnnError


class _Group(click.Group):
    """Turns every EdgecnnError into a one-line message and exit code 1 (``--debug`` re-raises)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgecnnError as err:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(str(err)) from None
        except ModuleNotFoundError as err:  # a command of an extra that is not installed
            message = missing_module_message(err.name or "")
            if message is None or (ctx.obj and ctx.obj.get("debug")):
                raise
            raise click.ClickException(message) from None
        except OSError as err:  # a read-only folder, a full disk, a vanished file: the user's to fix
            if ctx.obj and ctx.obj.get("debug"):
                raise
            where = f" ({err.filename})" if getattr(err, "filename", None) else ""
            raise click.ClickException(f"{err.strerror or err}{where}; check the path, its permissions and the "
                                       "free disk space.") from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgecnn")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log more detail.")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """edgecnn: CNN image models (classify, detect, segment) from Keras training or any ONNX to the edge.

    \b
    Pipeline:
      edgecnn train --model seed_cnn --data cifar10.npz --epochs 10 --out runs/seed
      edgecnn evaluate runs/seed
      edgecnn export runs/seed --quantize int8
      edgecnn bench runs/seed/export/model.onnx
      edgecnn serve runs/seed/export/model.onnx
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s: %(message)s")


def _echo_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """Print a rich table (plain text when not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=max(100, Console().width)).print(table)


# ------------------------------------------------------------- model flags (every command)
# What a model file does not say about itself, with the same names on every command that takes a
# model. Parsing, presets and validation live in edgecnn.presets (stdlib only, cheap to import).

_MODEL_FLAGS = ("input_size", "channels", "layout", "preprocess", "mean", "std", "labels", "task", "channels_order",
                "resize", "resample", "pad_value", "shorter_side", "gray", "batch_axis", "output_layout")


def model_options(*, layout_help: str = "Input layout of the model: nchw or nhwc (default: read from its input shape).",
                  ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add --input-size, --channels, --layout, --preprocess, --mean, --std, --labels, --channels-order,
    --resize, --resample, --pad-value, --shorter-side, --gray, --output-layout, --batch-axis and --task to a
    command; read them back
    with :func:`model_overrides`."""
    from edgecnn.card import GRAY_RULES, OUTPUT_KINDS, RESAMPLE_FILTERS, RESIZE_MODES, TASKS
    from edgecnn.presets import PREPROCESS_PRESETS

    presets = "; ".join(f"{k}: {v.description}" for k, v in PREPROCESS_PRESETS.items())
    options = [
        click.option("--input-size", default=None, metavar="HxW", help="Input size for a model with a dynamic height/width."),
        click.option("--channels", type=click.Choice(["1", "3"]), default=None, help="Input channels: 1 (gray) or 3 (RGB)."),
        click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default=None, help=layout_help),
        click.option("--preprocess", type=click.Choice(list(PREPROCESS_PRESETS)), default=None,
                     help=f"Normalization preset ({presets})."),
        click.option("--mean", default=None, metavar="R,G,B", help="Per-channel mean on the 0-255 scale (with --std)."),
        click.option("--std", default=None, metavar="R,G,B", help="Per-channel std on the 0-255 scale, e.g. 58.395,57.12,57.375."),
        click.option("--labels", default=None, metavar="FILE|a,b,c",
                     help="Class names: a text file, one per line, a,b,c, or one name."),
        click.option("--channels-order", type=click.Choice(["rgb", "bgr"], case_sensitive=False), default=None,
                     help="Channel order the model takes (default: its card, else rgb); images are read as RGB "
                          "and reordered for it."),
        click.option("--resize", type=click.Choice(list(RESIZE_MODES)), default=None,
                     help="How an image is fitted to the input size: stretch (default), letterbox (aspect kept, "
                          "centred; detectors), keep-aspect (aspect kept, padded right/bottom; YOLOX), fit-height "
                          "(height filled, padded right; OCR text lines), center-crop (shorter side, then the "
                          "centre; torchvision/timm classifiers; paddle-crop: the same with PaddleClas's rounding), stretch-crop (stretched to the side, then the centre; "
                          "Caffe-era classifiers)."),
        click.option("--resample", type=click.Choice(list(RESAMPLE_FILTERS)), default=None,
                     help="Pillow's resize filter (default: the card's, else bilinear)."),
        click.option("--pad-value", type=int, default=None, metavar="0-255",
                     help="Border value for letterbox, keep-aspect and fit-height (default 114)."),
        click.option("--shorter-side", type=int, default=None, metavar="N",
                     help="center-crop, paddle-crop, stretch-crop: the side before the crop (default: input side / 0.875, 256 for 224)."),
        click.option("--output-layout", type=click.Choice(sorted({k for v in OUTPUT_KINDS.values() for k in v})),
                     default=None, help="What the outputs hold: classify/segment probabilities|logits (a "
                                        "sigmoid or softmax at the end: probabilities), detect yolov8|yolov5|yolox, "
                                        "or with NMS in the graph end2end ([N, K, 6] rows) or boxes-xyxy|boxes-yxyx "
                                        "(boxes, scores, classes outputs; TensorFlow's are y-first) (default: read "
                                        "from the graph)."),
        click.option("--batch-axis", type=int, default=None, metavar="N",
                     help="The outputs' image axis when it is not 0: 1 for a time-major [T, N, C] sequence output "
                          "(CTC recognizers; default: read from the graph, or from the first run)."),
        click.option("--gray", type=click.Choice(list(GRAY_RULES)), default=None,
                     help="1-channel models: luma (ITU-R 601-2, Pillow's L and OpenCV's BGR2GRAY; default) or "
                          "average ((R+G+B)/3)."),
        click.option("--task", type=click.Choice(list(TASKS)), default=None, help="What the model does (default: its card, "
                     "Ultralytics metadata or its output shapes)."),
    ]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def backend_options(*, several: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add --backend, --device and --precision (OpenVINO's) to a command."""
    options = [
        click.option("--backend", default="onnxruntime", show_default=True,
                     type=str if several else click.Choice(["onnxruntime", "openvino"]),
                     help="Runtime: onnxruntime or openvino (the [openvino] extra)"
                          + ("; comma-separated to measure both side by side." if several else ".")),
        click.option("--device", default="CPU", show_default=True, help="OpenVINO device: CPU, GPU or NPU."),
        click.option("--precision", type=click.Choice(["f32", "bf16"]), default=None,
                     help="OpenVINO execution precision (default f32: the same results as onnxruntime)."),
    ]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def model_overrides(flags: dict[str, Any]) -> Any:
    """Pop the model flags out of a command's keyword arguments -> ``edgecnn.presets.ModelOverrides``.

    Raises:
        ConfigError: for a malformed or contradictory value (one line, naming the flag).
    """
    from edgecnn.presets import parse_overrides

    return parse_overrides(**{k: flags.pop(k, None) for k in _MODEL_FLAGS})


# ---------------------------------------------------------------------------------- train stage
# (commands of the training stage are defined below this line)

_TRAIN_EPILOG = """\b
Examples:
  edgecnn train                                   # seed_cnn on CIFAR-10 (embedded sample offline)
  edgecnn train --model seed_cnn --data cifar10.npz --epochs 10 --out runs/seed
  edgecnn train --config models/resnet20_cifar10.yaml --data cifar10.npz
  edgecnn train --model resnet20 --data photos/ --input-size 64 --schedule cosine --optimizer sgd
  edgecnn train --backbone mobilenet_v2 --weights ~/mnv2_notop.h5 --data photos/ \\
                --epochs 5 --fine-tune-layers 30 --fine-tune-epochs 5
  edgecnn train --resume runs/seed                # continue after a kill
  edgecnn train --model resnet20 --precision bf16 # mixed precision on an AMX/AVX-512 BF16 CPU
  TF_CONFIG='{"cluster": {"worker": ["h1:2222", "h2:2222"]}, "task": {"type": "worker", "index": 0}}' \\
  edgecnn train --config models/resnet20_cifar10.yaml --distribute multi-worker   # on every host, its own index
"""


def _size(value: str | None) -> list[int] | None:
    if value is None:
        return None
    parts = value.lower().replace("x", ",").split(",")
    try:
        nums = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise click.BadParameter(f"expected N or HxW, got {value!r}") from None
    if len(nums) not in (1, 2):
        raise click.BadParameter(f"expected N or HxW, got {value!r}")
    return nums * 2 if len(nums) == 1 else nums


@main.command(epilog=_TRAIN_EPILOG)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="Recipe file (YAML/JSON); flags override it.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path), help="Continue the run in this directory from its last finished epoch.")
@click.option("--model", help="Zoo model name (see `edgecnn models`).  [default: seed_cnn]")
@click.option("--data", help="cifar10 (download), sample (embedded), a .npz in keras layout, or an image folder.")
@click.option("--out", help="Run directory.  [default: runs/<model>]")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw", "rmsprop"]))
@click.option("--lr", type=float, help="Learning rate (peak rate for cosine/onecycle).")
@click.option("--momentum", type=float)
@click.option("--nesterov/--no-nesterov", default=None)
@click.option("--weight-decay", type=float, help="Decoupled weight decay, Keras's (w -= lr * wd * w each step): a paper's coupled L2 of X under SGD momentum m is about X / (1 - m) here.")
@click.option("--schedule", type=click.Choice(["constant", "step", "cosine", "onecycle", "triangle"]))
@click.option("--warmup-epochs", type=float)
@click.option("--step-every", type=int, help="Step schedule: epochs between decays.")
@click.option("--step-gamma", type=float, help="Step schedule: decay factor.")
@click.option("--label-smoothing", type=float)
@click.option("--dropout", type=float)
@click.option("--width", type=float, help="Width multiplier of the architecture.")
@click.option("--early-stopping", type=int, help="Patience in epochs on val accuracy (0: off).")
@click.option("--val-split", type=float, help="Fraction of training images held out for validation.")
@click.option("--seed", type=int)
@click.option("--normalization", type=click.Choice(["scale", "dataset"]), help="scale: /255; dataset: per-channel mean/std of the training split.")
@click.option("--input-size", help="N or HxW the images are resized to.")
@click.option("--classes", help="Train on a subset: '0-4', 'cat,dog', ...")
@click.option("--limit", type=int, help="Use at most this many training images.")
@click.option("--augment/--no-augment", default=None, help="Random flip + translation (up to 1/8 of the side, sub-pixel).")
@click.option("--rotation", type=float, help="Random rotation range in degrees (augmentation).")
@click.option("--translate", type=float, help="Random translation as a fraction of the side (augmentation).")
@click.option("--backbone", help="Transfer learning: mobilenet_v2, mobilenet_v3_small, resnet50, efficientnet_b0, vgg16, or a run directory.")
@click.option("--weights", help="Backbone weights: imagenet, none or a local file (the notop .h5 keras.applications downloads, a .weights.h5 or a .keras).")
@click.option("--backbone-input-size", type=int, help="Size the backbone sees (resized inside the model).")
@click.option("--fine-tune-layers", type=int, help="Unfreeze this many top backbone layers in phase 2.")
@click.option("--fine-tune-epochs", type=int)
@click.option("--fine-tune-lr", type=float, help="[default: lr / 10]")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "auto"]), help="Mixed precision: bf16 on CPUs with AMX/AVX-512 BF16 (or Ampere+ GPUs), fp16 on GPUs, auto picks by hardware.  [default: fp32]")
@click.option("--distribute", type=click.Choice(["none", "mirrored", "multi-worker"]), help="tf.distribute: mirrored = every local GPU; multi-worker = the machines of TF_CONFIG (docs/distributed.md). --batch-size is then the global batch and --lr stays tied to it (never rescaled by the worker count).  [default: none]")
@click.option("--worker-timeout", type=float, help="multi-worker: seconds to wait for every worker of TF_CONFIG.  [default: 300]")
@click.option("--quiet", is_flag=True, help="One line per epoch instead of a progress bar.")
def train(config_path, resume_dir, overwrite, quiet, augment, rotation, translate, input_size, **flags) -> None:
    """Train a CNN into a run directory (model.keras, card.json, history, curves, metrics)."""
    from edgecnn.train.config import load_recipe
    from edgecnn.train.loop import resume
    from edgecnn.train.loop import train as run_training

    verbose = 2 if quiet else None
    if resume_dir is not None:
        run = resume(resume_dir, verbose=verbose)
    else:
        from edgecnn.train.config import TrainConfig

        recipe = load_recipe(config_path) if config_path else {}
        recipe.update({k: v for k, v in flags.items() if v is not None})
        aug = dict(recipe.get("augment") or {})
        if augment is False:
            aug.update(flip=False, translate=0.0, translate_px=0, rotation_deg=0.0)
        for key, value in (("rotation_deg", rotation), ("translate", translate)):
            if value is not None:
                aug[key] = value
        if aug:
            recipe["augment"] = aug
        if input_size is not None:
            recipe["input_size"] = _size(input_size)
        run = run_training(TrainConfig.from_dict(recipe), overwrite=overwrite, verbose=verbose)
    from edgecnn.card import ModelCard

    if not (run / "card.json").is_file():  # a multi-worker run's other workers: the chief writes the run
        click.echo(f"Worker done; the chief worker writes {run}.")
        return
    card = ModelCard.load(run)
    m = card.metrics
    split = ("validation accuracy (the image folder has no test/ split)" if card.dataset.get("test_split") == "val"
             else "test accuracy")
    click.echo(f"Saved {run}/model.keras: {split} {m['test_accuracy']:.2%}"
               + (f", top-5 {m['test_top5']:.2%}" if "test_top5" in m else "")
               + f" after {m['epochs']} epochs ({m['train_time_s']:.0f} s).")


@main.command(epilog="\b\nExamples:\n  edgecnn models\n  edgecnn models --family mobilenet --input-size 224")
@click.option("--family", help="Only this family (seed, lenet, alexnet, vgg, resnet, mobilenet, shufflenet, airbench).")
@click.option("--input-size", type=click.IntRange(min=8), help="Count MFLOPs at this square size instead of each model's default.")
@click.option("--classes", "num_classes", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--width", type=click.FloatRange(min=0, min_open=True),
              help="Width multiplier (only models that take one are listed).  [default: each model's own]")
def models(family: str | None, input_size: int | None, num_classes: int, width: float | None) -> None:
    """List the model zoo: parameters and MFLOPs (2 x multiply-adds) at the default input size.

    Counts come from a packaged table; other sizes, class counts and widths build the model (needs [train]).
    """
    import inspect

    from edgecnn.errors import ConfigError
    from edgecnn.train.counts import CountsKey, model_counts
    from edgecnn.train.registry import get_model_spec, list_models
    from edgecnn.train.transfer import BACKBONES

    names = list_models(family)
    if not names:
        families = sorted({get_model_spec(n).family for n in list_models()})
        raise ConfigError(f"No model of family {family!r}; choose one of {', '.join(families)}.")
    rows, fixed = [], []
    for name in names:
        spec = get_model_spec(name)
        params = inspect.signature(spec.builder).parameters.values()
        if width is not None and not any(p.name == "width" or p.kind is p.VAR_KEYWORD for p in params):
            fixed.append(name)
            continue
        size = (input_size, input_size) if input_size else spec.input_size
        c, _ = model_counts(CountsKey(name, size, num_classes, width))
        rows.append([name, spec.family, f"{size[0]}x{size[1]}", f"{c.params:,}", f"{c.mflops:.1f}", spec.description])
    _echo_table("edgecnn model zoo", ["model", "family", "input", "params", "MFLOPs", "description"], rows)
    if fixed:
        click.echo(f"Not listed (fixed width): {', '.join(fixed)}.")
    click.echo("Transfer backbones (--backbone): " + ", ".join(BACKBONES) + ", or a run directory.")


@main.command(epilog="\b\nExamples:\n  edgecnn evaluate runs/seed\n  edgecnn evaluate runs/seed --data cifar10.npz\n  edgecnn evaluate runs/seed/export/model.int8.onnx\n  edgecnn evaluate runs/fast --tta flip+shift\n  edgecnn evaluate mine.keras --data photos/ --preprocess tf")
@click.argument("model_path", metavar="RUN_OR_MODEL", type=click.Path(path_type=Path))
@click.option("--data", help="Dataset to evaluate on (default: the run's own test split).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Where evaluation.json and the confusion PNG go.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--tta", type=click.Choice(["none", "flip", "flip+shift"]), default="none", show_default=True,
              help="Test-time augmentation: average the image and its mirror (2 views), or also both shifted by "
                   "a pixel (6 views); costs that many forward passes.")
@model_options()
def evaluate(model_path: Path, data: str | None, out: Path | None, as_json: bool, tta: str, **flags: Any) -> None:
    """Top-1/top-5 accuracy, per-class precision/recall and the confusion matrix (text + PNG).

    RUN_OR_MODEL: a run directory, a .keras/.h5 file (yours too: describe it with the model flags)
    or an .onnx file.
    """
    import json

    from edgecnn.train.evaluate import evaluate as run_evaluation

    report = run_evaluation(model_path, data=data, out=out, overrides=model_overrides(flags), tta=tta)
    click.echo(json.dumps(report.metrics, indent=2) if as_json else report.to_text())
    click.echo(f"Wrote {', '.join(report.files)}", err=True)


@main.command(epilog="\b\nExamples:\n  edgecnn gradcam runs/seed cat.png dog.jpg --out cams/\n  edgecnn gradcam runs/seed ship.png --class-name airplane\n  edgecnn gradcam mine.keras cat.png --preprocess imagenet --labels cat,dog")
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("gradcam"), show_default=True)
@click.option("--class-name", help="Explain this class instead of the predicted one.")
@click.option("--layer", help="Feature layer to explain (default: the last convolutional block).")
@model_options()
def gradcam(run: Path, images: tuple[Path, ...], out: Path, class_name: str | None, layer: str | None,
            **flags: Any) -> None:
    """Grad-CAM heatmaps of RUN's predictions on IMAGES, overlaid as PNGs.

    RUN: a run directory or a .keras/.h5 file (yours too: describe it with the model flags).
    """
    from edgecnn.train.gradcam import gradcam_files

    for rec in gradcam_files(run, images, out, class_name=class_name, layer=layer, overrides=model_overrides(flags)):
        click.echo(f"{rec['image']}: {rec['class']} ({rec['probability']:.1%}) -> {rec['file']}")


@main.command(epilog="\b\nExamples:\n  edgecnn features runs/seed cat.png --out features/\n  edgecnn features runs/seed cat.png --layer conv1 --layer conv2 --layer conv3\n  edgecnn features runs/transfer cat.png --layer backbone/Conv1")
@click.argument("run", metavar="RUN_OR_MODEL", type=click.Path(path_type=Path))
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--layer", "layers", multiple=True,
              help="Layer whose feature maps to draw (repeatable; a backbone's layer as backbone/NAME). "
                   "[default: the first convolution and the last convolutional block]")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("features"), show_default=True)
@click.option("--max-maps", default=64, show_default=True, type=click.IntRange(min=1),
              help="Feature maps drawn per layer at most: a wider layer draws its most active ones.")
@model_options()
def features(run: Path, image: Path, layers: tuple[str, ...], out: Path, max_maps: int, **flags: Any) -> None:
    """The first convolution's filters and the feature maps of IMAGE, as PNG grids.

    RUN_OR_MODEL: a run directory or a .keras/.h5 file (yours too: describe it with the model flags).
    """
    from edgecnn.train.features import features_files

    for f in features_files(run, image, out, layers=layers, overrides=model_overrides(flags), max_maps=max_maps):
        click.echo(f"wrote {f.path}: {f.describe()}")


# --------------------------------------------------------------------------------- export stage
# (commands of the export stage are defined below this line)

_QUANT_MODES = ("int8", "int8-dynamic", "fp16", "litert-int8")  # == edgecnn.export.EXPORT_MODES (cheap --help)


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
"""


@main.command(epilog=_EXPORT_EPILOG)
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: RUN/export, or <stem>-export/ next to a model file).")
@click.option("--quantize", "-q", multiple=True, type=click.Choice(_QUANT_MODES),
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
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True)
@click.option("--cpu-target", type=click.Choice(["auto", "avx2", "vnni", "arm64"]), default="auto", show_default=True,
              help="CPU the int8 model runs on: avx2 uses 7-bit weights (no U8S8 saturation without VNNI); vnni and "
                   "arm64 all 8 bits; auto: this machine's (VNNI or AMX -> vnni).")
@click.option("--exclude-node", multiple=True, help="ONNX node name to keep in float (repeatable).")
@click.option("--per-tensor", is_flag=True,
              help="int8: one weight scale per tensor instead of per output channel (for runtimes without "
                   "per-channel support; usually less accurate).")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Fail if a variant loses more accuracy than fp32 (percentage points; of top-1 agreement "
                   "with fp32 when the data has no labels).")
@click.option("--guard", "guard_policy", type=click.Choice(["lenient", "strict"]), default="lenient", show_default=True,
              help="What a variant gets when the 95% interval of its loss straddles --max-accuracy-drop (too few "
                   "images to tell): lenient passes it with a note, strict refuses it.")
@click.option("--min-sqnr", type=float, default=20.0, show_default=True,
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
@click.option("--test-images", type=click.IntRange(min=2), default=None, help="Evaluate on the first N test images only.")
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim graph simplification.")
@click.option("--tta", type=click.Choice(["none", "flip"]), default="none", show_default=True,
              help="Keras sources: bake flip test-time augmentation into the graph (the image and its mirror, logits "
                   "averaged); each image then costs two forward passes.")
@click.option("--qat-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="int8 by quantization-aware training: fine-tune a fake-quantized copy of the Keras model (a run, "
                   "or a .keras/.h5 with labelled --calibration-data) for N epochs and export that as model.int8.onnx, "
                   "judged by the same guard; 0: post-training calibration.")
@click.option("--qat-lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="Learning rate of --qat-epochs (Adam, cosine decay).")
@click.option("--triton", "triton_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write a Triton Inference Server model repository here.")
@model_options(layout_help="Input layout: of the exported model for Keras/SavedModel/TFLite sources (default nhwc); "
                           "of an .onnx source as it is (default: read from its input shape).")
def export(source: Path, out_dir: Path | None, quantize: tuple[str, ...], opset: int | None,
           calibration_data: Path | None, calibration_samples: int, calibration_method: str, cpu_target: str,
           exclude_node: tuple[str, ...], max_accuracy_drop: float, atol: float, test_images: int | None,
           no_simplify: bool, triton_dir: Path | None, accuracy_aware: bool, per_tensor: bool, tta: str,
           guard_policy: str, min_sqnr: float, no_chance_check: bool, eval_data: Path | None,
           qat_epochs: int = 0, qat_lr: float = 1e-4, **flags: Any) -> None:
    """Export SOURCE to verified ONNX, with quantized variants.

    SOURCE: a run directory, a .keras/.h5 file, a TensorFlow SavedModel directory, a .tflite or an
    .onnx file. What the file does not say about itself comes from the model flags.
    """
    from edgecnn.export import ExportConfig, QuantizeConfig, export_model
    from edgecnn.export.report import interval_text, metric_text, status_text

    quant = QuantizeConfig.for_target(cpu_target, calibration_method=calibration_method,
                                      calibration_samples=calibration_samples, exclude_nodes=exclude_node,
                                      per_channel=not per_tensor)
    overrides = model_overrides(flags)
    config = ExportConfig(opset=opset, quantize=quantize, simplify=not no_simplify, atol=atol, test_images=test_images,
                          max_accuracy_drop=max_accuracy_drop, quant=quant, triton_dir=triton_dir,
                          accuracy_aware=accuracy_aware, tta=tta, guard=guard_policy, min_sqnr_db=min_sqnr,
                          check_chance=not no_chance_check, eval_data=eval_data)
    with _qat_config(config, source, epochs=qat_epochs, lr=qat_lr, data=calibration_data, overrides=overrides) as config:
        report = export_model(source, out_dir=out_dir, config=config, calibration_data=calibration_data,
                              overrides=overrides)
    _echo_table(f"{report.card_name} ({report.task}) -> {report.out_dir}",
                ["precision", "file", "KiB", "accuracy", "delta pp", "vs fp32", "guard [95%]", "status"],
                [[v.precision, v.file or "-", f"{v.size_bytes / 1024:.1f}", "-" if v.accuracy is None else f"{100 * v.accuracy:.2f}%",
                  "-" if v.accuracy_delta_pp is None else f"{v.accuracy_delta_pp:+.2f}", metric_text(v), interval_text(v),
                  status_text(v)] for v in report.variants])
    for v in report.variants:
        if v.verdict and v.verdict["outcome"] == "unsure":
            click.echo(f"guard {v.precision}: {v.guard}")
    for v in report.variants:
        if v.accuracy_aware:
            click.echo(f"accuracy-aware {v.precision}: {v.accuracy_aware['message']}")
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
    if kind not in ("run", "keras"):
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


# -------------------------------------------------------------------------------- runtime stage
# (commands of the runtime stage are defined below this line)

_RT_PROVIDERS = click.Choice(["cpu", "cuda", "tensorrt", "auto"])


_NARROW_DROP = ("mean ms", "std", "min", "p90", "max", "session s", "peak mb")  # kept in --json/--csv


def _echo_wide_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A rich table wide enough for every bench column when not a terminal (pipes and files keep
    every column); on a terminal too narrow for it, the columns of :data:`_NARROW_DROP` go, and
    one line says where to find them."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    need = sum(max(len(c), *(len(r[i]) for r in rows)) + 3 for i, c in enumerate(columns)) + 1 if rows else 0
    keep = list(range(len(columns)))
    if console.is_terminal and need > console.width:
        keep = [i for i, c in enumerate(columns) if c.lower() not in _NARROW_DROP]
    table = Table(title=title)
    for i in keep:
        table.add_column(columns[i], justify="left" if i < 3 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    Console(width=max(200, console.width) if not console.is_terminal else None).print(table)
    if len(keep) < len(columns):
        click.echo(f"({len(columns) - len(keep)} columns left out for this {console.width}-column terminal: "
                   "--json or --csv have them all)")


_PREDICT_EPILOG = """\b
Examples:
  edgecnn predict cat.png                                  # the packaged reference model
  edgecnn predict runs/seed/export/model.int8.onnx cat.jpg dog.png --top-k 3
  edgecnn predict yolov8n.onnx street.jpg --conf 0.4 --save annotated/
  edgecnn predict unet.onnx scan.png --task segment --input-size 256x256 --json
  edgecnn predict mobilenet.onnx cat.jpg --preprocess imagenet --labels imagenet.txt
"""


@main.command(epilog=_PREDICT_EPILOG)
@click.argument("paths", nargs=-1, required=True, metavar="[MODEL.onnx|EXPORT_DIR] IMAGES...",
                type=click.Path(exists=True, path_type=Path))
@click.option("--top-k", "-k", default=5, show_default=True, type=click.IntRange(min=1), help="classify: classes per image.")
@click.option("--conf", default=0.25, show_default=True, type=click.FloatRange(0, 1), help="detect: score threshold.")
@click.option("--iou", default=0.45, show_default=True, type=click.FloatRange(0, 1), help="detect: NMS IoU threshold.")
@click.option("--save", "save_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write each image annotated (label, boxes or mask overlay) into this folder.")
@click.option("--provider", type=_RT_PROVIDERS, default="cpu", show_default=True, help="Execution provider.")
@click.option("--allow-fallback", is_flag=True, help="Run on the CPU (with a warning) if the provider is unusable.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@backend_options()
@model_options()
def predict(paths: tuple[Path, ...], top_k: int, conf: float, iou: float, save_dir: Path | None, provider: str,
            allow_fallback: bool, threads: int | None, as_json: bool, backend: str, device: str,
            precision: str | None, **flags: Any) -> None:
    """Run the ONNX MODEL (default: the packaged reference model) on IMAGES: top-k classes, boxes,
    mask statistics or raw output summaries, by the model's task. An export directory runs the
    file and settings its deploy.json names (`edgecnn tune`), else its model.onnx."""
    import json

    import numpy as np

    from edgecnn.card import atomic_write_bytes
    from edgecnn.runtime import default_model_path, load_model

    first = paths[0]
    is_model = first.suffix.lower() in (".onnx", ".tflite") or first.is_dir()
    model_path, images = (first, paths[1:]) if is_model else (None, paths)
    folders = [str(p) for p in images if p.is_dir()]
    if folders:
        raise click.BadParameter(f"{folders[0]} is a folder; pass image files (a shell glob such as "
                                 f"{folders[0]}/*.jpg), or the export directory first.", param_hint="IMAGES")
    if not images:
        raise click.UsageError("No IMAGES given: pass the images after the model.")
    if model_path is None:
        model_path = default_model_path()
        click.echo(f"Using the packaged reference model {model_path.name} (pass a MODEL.onnx first for another).",
                   err=True)
    session = _given(click.get_current_context(), backend=backend, device=device, precision=precision)
    model = load_model(model_path, provider, threads, allow_fallback, overrides=model_overrides(flags), **session)
    if model.deploy_note:
        click.echo(model.deploy_note, err=True)
    if model.assumptions():
        click.echo(f"note: {model.assumptions()}", err=True)
    params = {"classify": {"top_k": top_k}, "detect": {"conf": conf, "iou": iou}}.get(model.card.task, {})
    fitted = [_fit_or_error(model, img) for img in images]  # an undecodable image is reported, the others answer
    ok = [f for f in fitted if not isinstance(f, str)]
    results = iter(model.postprocess(model.run_pixels(np.stack([px for px, _ in ok])), [fit for _, fit in ok],
                                     **params) if ok else [])
    answers = [f if isinstance(f, str) else next(results) for f in fitted]  # an error message, or the result
    good = [(img, res) for img, res in zip(images, answers) if not isinstance(res, str)]
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
        for img, res in good:
            dest = atomic_write_bytes(save_dir / f"{img.stem}.png", _png_bytes(model.annotate(img, res)))
            click.echo(f"wrote {dest}", err=True)
    if as_json:
        out = {"model": str(model_path), "task": model.card.task, "providers": model.providers,
               "predictions": [{"image": str(i), **({"error": r} if isinstance(r, str) else model.result_dict(r))}
                               for i, r in zip(images, answers)]}
        click.echo(json.dumps(out, indent=2))
    elif good:
        title = f"{model.card.name} ({model.card.task}, {model.card.precision}) on {model.providers[0]}"
        _echo_table(title, *_result_rows(model.card.task, tuple(i for i, _ in good),
                                         [model.result_dict(r) for _, r in good]))
    errors = [r for r in answers if isinstance(r, str)]
    for why in errors:
        click.echo(f"Error: {why}", err=True)
    if errors:
        raise SystemExit(1)


def _fit_or_error(model: Any, image: Path) -> Any:
    """The image decoded and fitted to the model (pixels, fit), or the one line saying why it cannot be."""
    from edgecnn.errors import InputError

    try:
        return model.fit(image)
    except InputError as err:
        return str(err)


def _given(ctx: click.Context, **values: Any) -> dict[str, Any]:
    """The options the user set (on the command line or by environment), not click's defaults:
    an export directory's deploy.json supplies the rest."""
    from click.core import ParameterSource

    return {k: v for k, v in values.items()
            if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)}


def _png_bytes(image: Any) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _result_rows(task: str, images: tuple[Path, ...], results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The predict table of each task: columns, then rows (the image named on its first row only)."""
    rows: list[list[str]] = []

    def add(img: Path, cells: list[list[str]], empty: list[str]) -> None:
        for j, cell in enumerate(cells or [empty]):
            rows.append([str(img) if j == 0 else "", *cell])

    for img, res in zip(images, results):
        if task == "classify":
            add(img, [[str(j + 1), p["label"], f"{p['probability']:.4f}"] for j, p in enumerate(res["top_k"])], [])
        elif task == "detect":
            add(img, [[d["label"], f"{d['score']:.3f}", ", ".join(f"{v:.1f}" for v in d["box"])]
                      for d in res["detections"]], ["(none)", "", ""])
        elif task == "segment":
            seg = res["segmentation"]
            add(img, [[c["label"], f"{100 * c['fraction']:.2f}%", f"{seg['width']}x{seg['height']}"]
                      for c in seg["classes"]], ["(none)", "", ""])
        else:
            add(img, [[o["name"], "x".join(map(str, o["shape"])) or "scalar",
                       *(f"{o[k]:.4g}" if k in o else "-" for k in ("min", "max", "mean"))] for o in res["outputs"]], [])
    columns = {"classify": ["image", "rank", "label", "probability"], "detect": ["image", "label", "score", "box x1, y1, x2, y2"],
               "segment": ["image", "class", "pixels", "size"]}.get(task, ["image", "output", "shape", "min", "max", "mean"])
    return columns, rows


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
@click.option("--provider", type=_RT_PROVIDERS, default="cpu", show_default=True, help="Execution provider.")
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
              help="An .npz (keras layout) whose first 128 train images calibrate LiteRT int8 (default: the embedded sample).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a PNG of latency by batch size (needs matplotlib).")
@click.option("--io-binding/--no-io-binding", default=None,
              help="Inputs/outputs in bound device buffers, time the run alone.  [default: on for cuda]")
@click.option("--cuda-graph", is_flag=True, help="CUDA provider: capture and replay CUDA graphs (a session per batch).")
@click.option("--cudnn-conv-algo-search", type=click.Choice(["EXHAUSTIVE", "HEURISTIC", "DEFAULT"], case_sensitive=False),
              default="EXHAUSTIVE", show_default=True, help="CUDA provider: how cuDNN picks convolution algorithms.")
@click.option("--prefer-nhwc/--no-prefer-nhwc", default=None, help="CUDA provider: channels-last convolutions.")
@click.option("--device-id", default=0, show_default=True, type=click.IntRange(min=0), help="CUDA device.")
@click.option("--placement/--no-placement", default=True, show_default=True,
              help="Report the nodes on each provider ('nodes on CPU: N of M', one profiled run per model).")
@click.option("--pixels/--no-pixels", default=True, show_default=True,
              help="Also time the app's call from uint8 pixels (runner '<runner>+pixels'), next to the model alone.")
@backend_options(several=True)
@model_options()
def bench(models: tuple[Path, ...], batch: str, threads: str, provider: str, allow_fallback: bool, warmup: int,
          runs: int, duration: float | None, compare: tuple[str, ...], keras_path: Path | None,
          calibration: Path | None, json_path: Path | None, csv_path: Path | None, plot_path: Path | None,
          io_binding: bool | None, cuda_graph: bool, cudnn_conv_algo_search: str, prefer_nhwc: bool | None,
          device_id: int, placement: bool, pixels: bool, backend: str, device: str, precision: str | None,
          **flags: Any) -> None:
    """Benchmark ONNX MODELS (default: the packaged reference model) across batches, threads, providers.
    An export directory stands for every model file it holds (model.onnx, model.int8.onnx, ...)."""
    from edgecnn.card import atomic_write_text
    from edgecnn.runtime import default_model_path
    from edgecnn.runtime.benchmark import BenchConfig, parse_int_list, run_benchmark

    config = BenchConfig(batch_sizes=parse_int_list(batch, "--batch"), threads=parse_int_list(threads, "--threads"),
                         provider=provider, warmup=warmup, runs=runs, duration_s=duration, allow_fallback=allow_fallback,
                         io_binding=io_binding, cuda_graph=cuda_graph, cudnn_conv_algo_search=cudnn_conv_algo_search.upper(),
                         prefer_nhwc=prefer_nhwc, device_id=device_id, placement=placement,
                         backends=tuple(b.strip() for b in backend.split(",") if b.strip()), device=device,
                         precision=precision, pixels=pixels)
    # The Keras/LiteRT baselines import TensorFlow in their own processes: handed to the runtime, never imported by it.
    from edgecnn.baselines import run_baselines

    overrides = model_overrides(flags)
    if plot_path is not None:  # before minutes of measuring, not after
        from edgecnn._optional import require

        require("matplotlib", "plot")
    if not models:
        click.echo(f"Benchmarking the packaged reference model {default_model_path().name}.", err=True)

    def progress(r: Any) -> None:
        click.echo(f"  {r.variant} batch {r.batch}, {r.threads} thread(s): p50 {r.stats['p50_ms']:.3f} ms", err=True)

    report = run_benchmark(_model_files(models) or [default_model_path()], config, compare=compare, keras_path=keras_path,
                           calibration_data=calibration, baseline_runner=run_baselines, overrides=overrides,
                           on_result=progress)
    m = report.machine
    gpu = f"{m['gpu'][0]['name']}, " if provider != "cpu" and m.get("gpu") else ""
    _echo_wide_table(f"edgecnn bench - {gpu}{m['cpu']} ({m['usable_cpus']} cpus, {' '.join(m['simd'])}), onnxruntime "
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


@main.command(epilog="\b\nExamples:\n  edgecnn tune runs/seed/export\n  edgecnn tune runs/mnv2/export --batch 1,32 "
                    "--objective throughput --max-drop 0.5\n  edgecnn predict runs/seed/export cat.jpg   # follows deploy.json")
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--batch", default="1", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--threads", default=None, help="Thread counts, comma-separated.  [default: 1, 2, 4, ... up to the cores]")
@click.option("--backend", default=None, help="Backends to try, comma-separated.  [default: onnxruntime, and openvino "
              "when installed]")
@click.option("--device", default="CPU", show_default=True, help="OpenVINO device: CPU, GPU or NPU.")
@click.option("--objective", type=click.Choice(["latency", "throughput"]), default="latency", show_default=True,
              help="latency: p50 at the smallest batch; throughput: images/s at the largest.")
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

    from edgecnn.export.tune import TuneConfig
    from edgecnn.export.tune import tune as run_tune
    from edgecnn.runtime.benchmark import parse_int_list

    config = TuneConfig(batch_sizes=parse_int_list(batch, "--batch"),
                        threads=parse_int_list(threads, "--threads") if threads else None,
                        backends=tuple(b.strip() for b in backend.split(",") if b.strip()) if backend else None,
                        device=device, objective=objective, max_drop_pp=max_drop, seconds=seconds, images=images,
                        data=data, confirm=confirm)
    report = run_tune(export_dir, config, write=not no_write, progress=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=float))
        return
    m = report.machine
    _echo_wide_table(f"edgecnn tune {export_dir} - {m['cpu']} ({m['usable_cpus']} cpus, {' '.join(m['simd'])}); "
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


# ---------------------------------------------------------------------------------- serve stage
# (commands of the serve stage are defined below this line)

_SERVE_EPILOG = """\b
Examples:
  edgecnn serve                                   # the packaged reference model on 127.0.0.1:8000
  edgecnn serve runs/seed/export/model.onnx --max-batch 32 --max-delay-ms 5
  EDGECNN_TOKEN=s3cret-token edgecnn serve models/ --host 0.0.0.0 --port 8080
  curl -H 'Content-Type: image/png' --data-binary @cat.png localhost:8000/v1/models/model:predict
"""


@main.command(epilog=_SERVE_EPILOG)
@click.argument("model_or_dir", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0: every one).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--token", envvar="EDGECNN_TOKEN", default=None, show_envvar=True,
              help="Bearer token required on every endpoint but /healthz and /readyz (visible in `ps`: prefer "
                   "the environment variable or --token-file).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Read the bearer token from this file (its first line).")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(min=1),
              help="Most images per batched session call (1: no batching).")
@click.option("--max-delay-ms", default=5.0, show_default=True, type=click.FloatRange(0, 10_000),
              help="Longest a request waits for others to join its batch.")
@click.option("--queue-size", default=256, show_default=True, type=click.IntRange(min=1),
              help="Requests admitted per model at once; more get 503 with Retry-After.")
@click.option("--timeout", "timeout_s", default=10.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds before an unanswered request gets 503.")
@click.option("--body-timeout", "body_timeout_s", default=10.0, show_default=True,
              type=click.FloatRange(0, min_open=True), help="Seconds a request body may take to arrive; then 408.")
@click.option("--header-timeout", "header_timeout_s", default=10.0, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="Seconds a request's headers may take to arrive (slowloris); then 408 and the connection closes.")
@click.option("--max-body-mb", default=8.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Largest request body (MiB); larger gets 413.")
@click.option("--max-inflight-mb", default=256.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Request bodies held at once per worker (MiB); past it a request gets 503 with Retry-After before "
                   "its body is read, so memory is bounded by bytes, not only by --queue-size.")
@click.option("--max-connections", type=click.IntRange(min=1), default=None,
              help="Open connections per worker (default: the open-files limit, raised to its hard limit, less a "
                   "reserve); past it the longest-idle keep-alive is closed, with none idle the new one gets 503.")
@click.option("--max-pixels", default=25_000_000, show_default=True, type=click.IntRange(min=1),
              help="Largest image (width x height) decoded; larger gets 400.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True,
              help="Execution provider.")
@click.option("--allow-fallback", is_flag=True, help="Run on the CPU (with a warning) if the provider is unusable.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads per worker (default: all cores but one, which stays with HTTP and decoding, "
                   "shared by the workers).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes sharing the port (each loads the models; /metrics is per process); a dead "
                   "worker is replaced, more than five deaths a minute stop the server.")
@backend_options()
@model_options()
def serve(model_or_dir: Path | None, host: str, port: int, token: str | None, token_file: Path | None, max_batch: int,
          max_delay_ms: float, queue_size: int, timeout_s: float, body_timeout_s: float, header_timeout_s: float,
          max_body_mb: float, max_inflight_mb: float, max_connections: int | None,
          max_pixels: int, provider: str, allow_fallback: bool, threads: int | None, workers: int, backend: str,
          device: str, precision: str | None, **flags: Any) -> None:
    """Serve MODEL_OR_DIR (an .onnx file, or every .onnx of a directory by name) over HTTP; an
    export directory with a deploy.json (`edgecnn tune`) serves the file and settings it names.

    Without MODEL_OR_DIR, serves the packaged reference model. Endpoints: POST /v1/models/NAME:predict,
    GET /v1/models, /healthz, /readyz, /metrics; the OpenAPI spec is at /openapi.json.
    """
    from edgecnn.serve import ServeConfig
    from edgecnn.serve import serve as run_server

    if token_file is not None:
        lines = token_file.read_text(encoding="utf-8", errors="replace").splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise click.BadParameter(f"{token_file} is empty; put the token on its first line.", param_hint="--token-file")
    given = _given(click.get_current_context(), backend=backend, device=device)
    config = ServeConfig(host=host, port=port, token=token or None, max_batch=max_batch, max_delay_ms=max_delay_ms,
                         queue_size=queue_size, timeout_s=timeout_s, body_timeout_s=body_timeout_s,
                         header_timeout_s=header_timeout_s, workers=workers, backend=given.get("backend"),
                         device=given.get("device"), precision=precision,
                         max_body_bytes=int(max_body_mb * 1024 * 1024), max_connections=max_connections,
                         max_inflight_bytes=int(max_inflight_mb * 1024 * 1024),
                         max_pixels=max_pixels, provider=provider, threads=threads, allow_fallback=allow_fallback,
                         overrides=model_overrides(flags))
    run_server(model_or_dir, config)


if __name__ == "__main__":  # pragma: no cover
    main()
