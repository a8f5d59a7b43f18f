"""``edgecnn predict``: a model on image files, by its task."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgecnn._files import atomic_write_bytes
from edgecnn.cli._app import echo_table, main
from edgecnn.cli._options import model_options, runtime_options

if TYPE_CHECKING:
    from edgecnn.presets import ModelOverrides
    from edgecnn.runtime.options import RuntimeOptions

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
@click.option("--top-k", "-k", default=5, show_default=True, type=click.IntRange(min=1),
              help="classify: classes per image.")
@click.option("--conf", default=0.25, show_default=True, type=click.FloatRange(0, 1), help="detect: score threshold.")
@click.option("--iou", default=0.45, show_default=True, type=click.FloatRange(0, 1), help="detect: NMS IoU threshold.")
@click.option("--save", "save_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write each image annotated (label, boxes or mask overlay) into this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@runtime_options()
@model_options()
def predict(paths: tuple[Path, ...], top_k: int, conf: float, iou: float, save_dir: Path | None, as_json: bool,
            runtime: RuntimeOptions, overrides: ModelOverrides) -> None:
    """Run the ONNX MODEL (default: the packaged reference model) on IMAGES: top-k classes, boxes,
    mask statistics or raw output summaries, by the model's task. An export directory runs the
    file and settings its deploy.json names (`edgecnn tune`), else its model.onnx."""
    import json

    import numpy as np

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
    model = load_model(model_path, runtime, overrides=overrides)
    if model.deploy_note:
        click.echo(model.deploy_note, err=True)
    if model.assumptions():
        click.echo(f"note: {model.assumptions()}", err=True)
    by_task: dict[str, dict[str, Any]] = {"classify": {"top_k": top_k}, "detect": {"conf": conf, "iou": iou}}
    params = by_task.get(model.card.task, {})
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
        echo_table(title, *_result_rows(model.card.task, tuple(i for i, _ in good),
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


def _png_bytes(image: Any) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _result_rows(task: str, images: tuple[Path, ...],
                 results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
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
                       *(f"{o[k]:.4g}" if k in o else "-" for k in ("min", "max", "mean"))] for o in res["outputs"]],
                [])
    columns = {"classify": ["image", "rank", "label", "probability"],
               "detect": ["image", "label", "score", "box x1, y1, x2, y2"],
               "segment": ["image", "class", "pixels", "size"]}.get(task, ["image", "output", "shape", "min", "max",
                                                                           "mean"])
    return columns, rows
