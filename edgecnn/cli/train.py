"""``edgecnn train`` and ``edgecnn models``: the training stage."""

from __future__ import annotations

from pathlib import Path

import click

from edgecnn.cli._app import echo_table, main
from edgecnn.cli._options import input_size_value

_TRAIN_EPILOG = """\b
Examples:
  edgecnn train                                   # seed_cnn on CIFAR-10 (embedded sample offline)
  edgecnn train --model seed_cnn --data cifar10.npz --epochs 10 --out runs/seed
  edgecnn train --config models/resnet20_cifar10.yaml --data cifar10.npz
  edgecnn train --model resnet20 --data photos/ --input-size 64 --schedule cosine --optimizer sgd
  edgecnn train --backbone mobilenet_v2 --weights ~/mnv2_notop.h5 --data photos/ \\
                --epochs 5 --fine-tune-layers 30 --fine-tune-epochs 5
  edgecnn train --resume runs/seed                # continue after a kill
  edgecnn train --task segment --model unet_tiny --data scenes/segment --epochs 30 --out runs/unet
  edgecnn train --task detect --model anchorfree --data scenes/detect --epochs 60 --out runs/det
  edgecnn train --model resnet20 --precision bf16 # mixed precision on an AMX/AVX-512 BF16 CPU
  TF_CONFIG='{"cluster": {"worker": ["h1:2222", "h2:2222"]}, "task": {"type": "worker", "index": 0}}' \\
  edgecnn train --config models/resnet20_cifar10.yaml --distribute multi-worker   # on every host, its own index
"""


@main.command(epilog=_TRAIN_EPILOG)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Recipe file (YAML/JSON); flags override it.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Continue the run in this directory from its last finished epoch.")
@click.option("--model", help="Zoo model name (see `edgecnn models`).  [default: seed_cnn]")
@click.option("--task", type=click.Choice(["classify", "segment", "detect"]),
              help="segment: --data is a folder of images/ + masks/ (unet, unet_tiny, --backbone mobilenet_v2); "
                   "detect: images/ + labels/ in YOLO format (anchorfree, anchorfree_tiny).  [default: the model's]")
@click.option("--data", help="cifar10 (download), sample (embedded), a .npz in keras layout, or an image folder.")
@click.option("--out", help="Run directory.  [default: runs/<model>]")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw", "rmsprop"]))
@click.option("--lr", type=float, help="Learning rate (peak rate for cosine/onecycle).")
@click.option("--momentum", type=float)
@click.option("--nesterov/--no-nesterov", default=None)
@click.option("--weight-decay", type=float,
              help="Decoupled weight decay, Keras's (w -= lr * wd * w each step): a paper's coupled L2 of X under SGD "
                   "momentum m is about X / (1 - m) here.")
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
@click.option("--normalization", type=click.Choice(["scale", "dataset"]),
              help="scale: /255; dataset: per-channel mean/std of the training split.")
@click.option("--input-size", callback=lambda ctx, param, value: input_size_value(value),
              help="N or HxW the images are resized to.")
@click.option("--classes", help="Train on a subset: '0-4', 'cat,dog', ...")
@click.option("--limit", type=int, help="Use at most this many training images.")
@click.option("--augment/--no-augment", default=None,
              help="Random flip + translation (up to 1/8 of the side, sub-pixel).")
@click.option("--rotation", type=float, help="Random rotation range in degrees (augmentation).")
@click.option("--translate", type=float, help="Random translation as a fraction of the side (augmentation).")
@click.option("--backbone", help="Transfer learning: mobilenet_v2, mobilenet_v3_small, resnet50, efficientnet_b0, "
                                 "vgg16, or a run directory.")
@click.option("--weights", help="Backbone weights: imagenet, none or a local file (the notop .h5 keras.applications "
                                "downloads, a .weights.h5 or a .keras).")
@click.option("--backbone-input-size", type=int, help="Size the backbone sees (resized inside the model).")
@click.option("--fine-tune-layers", type=int, help="Unfreeze this many top backbone layers in phase 2.")
@click.option("--fine-tune-epochs", type=int)
@click.option("--fine-tune-lr", type=float, help="[default: lr / 10]")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "auto"]),
              help="Mixed precision: bf16 on CPUs with AMX/AVX-512 BF16 (or Ampere+ GPUs), fp16 on GPUs, auto picks "
                   "by hardware.  [default: fp32]")
@click.option("--distribute", type=click.Choice(["none", "mirrored", "multi-worker"]),
              help="tf.distribute: mirrored = every local GPU; multi-worker = the machines of TF_CONFIG "
                   "(docs/distributed.md). --batch-size is then the global batch and --lr stays tied to it (never "
                   "rescaled by the worker count).  [default: none]")
@click.option("--worker-timeout", type=float,
              help="multi-worker: seconds to wait for every worker of TF_CONFIG.  [default: 300]")
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
            recipe["input_size"] = list(input_size)
        run = run_training(TrainConfig.from_dict(recipe), overwrite=overwrite, verbose=verbose)
    from edgecnn.card import ModelCard

    if not (run / "card.json").is_file():  # a multi-worker run's other workers: the chief writes the run
        click.echo(f"Worker done; the chief worker writes {run}.")
        return
    card = ModelCard.load(run)
    m = card.metrics
    if card.task in ("segment", "detect"):
        score = (f"mIoU {m['miou']:.4f}, pixel accuracy {m['pixel_accuracy']:.2%}" if card.task == "segment"
                 else f"mAP@0.5 {m['map50']:.4f}, mAP@0.5:0.95 {m['map50_95']:.4f}")
        click.echo(f"Saved {run}/model.keras: {score} on {m['evaluated_on']} after {m['epochs']} epochs "
                   f"({m['train_time_s']:.0f} s).")
        return
    split = ("validation accuracy (the image folder has no test/ split)" if card.dataset.get("test_split") == "val"
             else "test accuracy")
    click.echo(f"Saved {run}/model.keras: {split} {m['test_accuracy']:.2%}"
               + (f", top-5 {m['test_top5']:.2%}" if "test_top5" in m else "")
               + f" after {m['epochs']} epochs ({m['train_time_s']:.0f} s).")


@main.command(epilog="\b\nExamples:\n  edgecnn models\n  edgecnn models --family mobilenet --input-size 224")
@click.option("--family", help="Only this family (seed, lenet, alexnet, vgg, resnet, mobilenet, shufflenet, "
                                "airbench; unet for segmentation, anchorfree for detection).")
@click.option("--input-size", type=click.IntRange(min=8),
              help="Count MFLOPs at this square size instead of each model's default.")
@click.option("--classes", "num_classes", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--width", type=click.FloatRange(min=0, min_open=True),
              help="Width multiplier (only models that take one are listed).  [default: each model's own]")
def models(family: str | None, input_size: int | None, num_classes: int, width: float | None) -> None:
    """List the model zoo: parameters and MFLOPs (2 x multiply-adds) at the default input size.

    Counts come from a packaged table; other sizes, class counts and widths build the model (needs [train]).
    """
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
        if width is not None and not spec.takes("width"):
            fixed.append(name)
            continue
        size = (input_size, input_size) if input_size else spec.input_size
        c, _ = model_counts(CountsKey(name, size, num_classes, width))
        rows.append([name, spec.family, f"{size[0]}x{size[1]}", f"{c.params:,}", f"{c.mflops:.1f}", spec.description])
    echo_table("edgecnn model zoo", ["model", "family", "input", "params", "MFLOPs", "description"], rows)
    if fixed:
        click.echo(f"Not listed (fixed width): {', '.join(fixed)}.")
    click.echo("Transfer backbones (--backbone): " + ", ".join(BACKBONES) + ", or a run directory.")
