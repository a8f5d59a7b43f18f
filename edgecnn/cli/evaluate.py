"""``edgecnn evaluate``, ``gradcam`` and ``features``: a trained model looked at."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgecnn.cli._app import main
from edgecnn.cli._options import model_options


@main.command(epilog="\b\nExamples:\n  edgecnn evaluate runs/seed\n  edgecnn evaluate runs/seed --data cifar10.npz\n  "
                     "edgecnn evaluate runs/seed/export/model.int8.onnx\n  "
                     "edgecnn evaluate runs/det/export/model.onnx --data scenes/detect\n  "
                     "edgecnn evaluate runs/fast --tta "
                     "flip+shift\n  edgecnn evaluate mine.keras --data photos/ --preprocess tf")
@click.argument("model_path", metavar="RUN_OR_MODEL", type=click.Path(path_type=Path))
@click.option("--data", help="Dataset to evaluate on (default: the run's own test split).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Where evaluation.json and the confusion PNG go.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--tta", type=click.Choice(["none", "flip", "flip+shift"]), default="none", show_default=True,
              help="Test-time augmentation: average the image and its mirror (2 views), or also both shifted by "
                   "a pixel (6 views); costs that many forward passes.")
@model_options()
def evaluate(model_path: Path, data: str | None, out: Path | None, as_json: bool, tta: str, overrides: Any) -> None:
    """Top-1/top-5 accuracy, per-class precision/recall and the confusion matrix (text + PNG); for a
    segmenter pixel accuracy, per-class IoU and mIoU; for a detector mAP@0.5 and mAP@0.5:0.95.

    RUN_OR_MODEL: a run directory, a .keras/.h5 file (yours too: describe it with the model flags)
    or an .onnx file.
    """
    import json

    from edgecnn.train.evaluate import evaluate as run_evaluation

    report = run_evaluation(model_path, data=data, out=out, overrides=overrides, tta=tta)
    click.echo(json.dumps(report.metrics, indent=2) if as_json else report.to_text())
    click.echo(f"Wrote {', '.join(report.files)}", err=True)


@main.command(epilog="\b\nExamples:\n  edgecnn gradcam runs/seed cat.png dog.jpg --out cams/\n  edgecnn gradcam "
                     "runs/seed ship.png --class-name airplane\n  edgecnn gradcam mine.keras cat.png --preprocess "
                     "imagenet --labels cat,dog")
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("gradcam"), show_default=True)
@click.option("--class-name", help="Explain this class instead of the predicted one.")
@click.option("--layer", help="Feature layer to explain (default: the last convolutional block).")
@model_options()
def gradcam(run: Path, images: tuple[Path, ...], out: Path, class_name: str | None, layer: str | None,
            overrides: Any) -> None:
    """Grad-CAM heatmaps of RUN's predictions on IMAGES, overlaid as PNGs.

    RUN: a run directory or a .keras/.h5 file (yours too: describe it with the model flags).
    """
    from edgecnn.train.gradcam import gradcam_files

    for rec in gradcam_files(run, images, out, class_name=class_name, layer=layer, overrides=overrides):
        click.echo(f"{rec['image']}: {rec['class']} ({rec['probability']:.1%}) -> {rec['file']}")


@main.command(epilog="\b\nExamples:\n  edgecnn features runs/seed cat.png --out features/\n  edgecnn features "
                     "runs/seed cat.png --layer conv1 --layer conv2 --layer conv3\n  edgecnn features runs/transfer "
                     "cat.png --layer backbone/Conv1")
@click.argument("run", metavar="RUN_OR_MODEL", type=click.Path(path_type=Path))
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--layer", "layers", multiple=True,
              help="Layer whose feature maps to draw (repeatable; a backbone's layer as backbone/NAME). "
                   "[default: the first convolution and the last convolutional block]")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("features"), show_default=True)
@click.option("--max-maps", default=64, show_default=True, type=click.IntRange(min=1),
              help="Feature maps drawn per layer at most: a wider layer draws its most active ones.")
@model_options()
def features(run: Path, image: Path, layers: tuple[str, ...], out: Path, max_maps: int, overrides: Any) -> None:
    """The first convolution's filters and the feature maps of IMAGE, as PNG grids.

    RUN_OR_MODEL: a run directory or a .keras/.h5 file (yours too: describe it with the model flags).
    """
    from edgecnn.train.features import features_files

    for f in features_files(run, image, out, layers=layers, overrides=overrides, max_maps=max_maps):
        click.echo(f"wrote {f.path}: {f.describe()}")
