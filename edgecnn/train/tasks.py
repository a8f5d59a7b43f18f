"""Training beyond classification: a segmenter from image + mask folders, a detector from
YOLO-label folders (:mod:`edgecnn.task_data`), into the same run directory a classifier gets
(``model.keras``, ``card.json`` with ``task: segment|detect``, checkpoints every epoch, resume after
a kill, history, curves and held-out metrics), so ``export``, ``predict`` and ``serve`` take it as
they are.

The recipe is :class:`~edgecnn.train.config.TrainConfig` (optimizer, schedule, epochs, batch size,
augmentation flags); what differs from a classifier: paired geometric augmentation
(:mod:`.paired`), the loss (pixel cross-entropy; :class:`.detection.DetectionLoss`), and the
scores (:mod:`.task_eval`).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

from edgecnn.card import ModelCard
from edgecnn.errors import ConfigError, DataError
from edgecnn.task_data import (
    IGNORE,
    DetectionSplit,
    SegmentationSplit,
    TaskData,
    load_segmentation_folder,
    load_yolo_folder,
)
from edgecnn.train.config import TrainConfig
from edgecnn.train.paired import PairedAugment, TaskBatches
from edgecnn.train.registry import get_model_spec
from edgecnn.train.run import Preprocessing, RunFiles, TrainState, load_run_model, save_model_atomic, write_json

log = logging.getLogger(__name__)

__all__ = ["TASKS", "model_task", "load_task_data", "build_task_model", "run_task", "resume_task",
           "build_transfer_segmenter"]

TASKS = ("segment", "detect")
SEGMENT_BACKBONES = ("mobilenet_v2",)
# MobileNetV2's feature maps the decoder joins, stride 2 to 32 (as in TensorFlow's segmentation tutorial)
_MNV2_SKIPS = ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu",
               "block_16_project")


def model_task(cfg: TrainConfig) -> str:
    """The task ``cfg`` trains: ``--task`` when given (checked against the model's), else the
    zoo model's own (``classify`` for a ``--backbone``).

    Raises:
        ConfigError: for a model of another task than ``--task`` asks for.
    """
    if cfg.backbone:
        return cfg.task or "classify"
    own = get_model_spec(cfg.model).task
    if cfg.task and cfg.task != own:
        choice = {"segment": "unet, unet_tiny or --backbone mobilenet_v2", "detect": "anchorfree or anchorfree_tiny",
                  "classify": "a classifier of `edgecnn models`"}[cfg.task]
        raise ConfigError(f"{cfg.model} is a {own} model, not {cfg.task}; for --task {cfg.task} pass --model {choice}.")
    return own


def load_task_data(cfg: TrainConfig, task: str, size: tuple[int, int]) -> TaskData:
    """The folder of ``cfg.data`` at ``size``, with a validation split taken from train (seeded,
    ``val_split``) when it has none, and the validation split as test when it has no test/.

    Raises:
        DataError: for no folder, or anything :mod:`edgecnn.task_data` finds wrong.
    """
    layout = "images/ + masks/" if task == "segment" else "images/ + labels/ (YOLO format) and classes.txt"
    if not cfg.data or not Path(cfg.data).expanduser().is_dir():
        raise DataError(f"--task {task} trains on a folder of {layout}; pass --data DIR (got {cfg.data!r}).")
    loader = load_segmentation_folder if task == "segment" else load_yolo_folder
    data = loader(Path(cfg.data).expanduser(), size=size)
    if data.val is None:
        n = len(data.train.files)
        n_val = int(round(n * cfg.val_split))
        if n_val < 1 or n - n_val < 1:
            raise DataError(f"{cfg.data} has no val/ split and {n} training images: too few to hold {cfg.val_split:.0%}"
                            " out; add a val/ folder or more images.")
        order = np.random.default_rng(cfg.seed).permutation(n)
        data = TaskData(task=data.task, class_names=data.class_names, source=data.source,
                        train=_take(data.train, order[n_val:]), val=_take(data.val or data.train, order[:n_val]),
                        test=data.test)
    if cfg.limit:
        data = TaskData(task=data.task, class_names=data.class_names, source=data.source, val=data.val,
                        test=data.test, train=_take(data.train, np.arange(min(cfg.limit, len(data.train.files)))))
    return data


def _take(split: Any, idx: np.ndarray) -> Any:
    files = tuple(split.files[i] for i in idx)
    if isinstance(split, SegmentationSplit):
        return SegmentationSplit(images=split.images[idx], masks=split.masks[idx], files=files)
    return DetectionSplit(images=split.images[idx], boxes=tuple(split.boxes[i] for i in idx), files=files)


def build_transfer_segmenter(backbone: str, num_classes: int, *, input_size: tuple[int, int],
                             weights: str = "imagenet") -> tuple[keras.Model, Preprocessing]:
    """A MobileNetV2 encoder (keras.applications; frozen with pretrained weights, trained along with
    ``weights="none"``) with a U-Net decoder on its stride 2-32 feature maps, ending in per-pixel
    class logits at the input size.

    Raises:
        ConfigError: for another backbone; ArtifactError: when its weights cannot be loaded.
    """
    from edgecnn.train.architectures._common import BN_MOMENTUM, conv_bn_act
    from edgecnn.train.transfer import BACKBONE_LAYER, application_backbone

    if backbone not in SEGMENT_BACKBONES:
        raise ConfigError(f"--task segment takes --backbone {', '.join(SEGMENT_BACKBONES)}, got {backbone!r}.")
    h, w = input_size
    if h % 32 or w % 32:
        raise ConfigError(f"A MobileNetV2 segmenter needs input sides that are multiples of 32, got {h}x{w}.")
    base, pre = application_backbone(backbone, input_size, weights)
    encoder = keras.Model(base.input, [base.get_layer(n).output for n in _MNV2_SKIPS], name=BACKBONE_LAYER)
    encoder.trainable = weights == "none"  # pretrained features stay frozen; random ones have to learn
    if weights == "none":
        # keras.applications' batch norm averages with momentum 0.999: after the few hundred steps of a
        # CPU run its moving statistics still describe the random start, and inference-mode masks were
        # all background (val mIoU 0.22 flat over two epochs); the zoo's 0.9 follows the weights
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = BN_MOMENTUM
    inputs = keras.Input((h, w, 3), name="images")
    *skips, x = encoder(inputs, training=False)
    for i, (skip, filters) in enumerate(zip(reversed(skips), (128, 64, 48, 32))):
        x = keras.layers.Conv2DTranspose(filters, 3, strides=2, padding="same", name=f"up{i}_upsample")(x)
        x = keras.layers.Concatenate(name=f"up{i}_concat")([x, skip])
        x = conv_bn_act(x, filters, 3, name=f"up{i}")
    x = keras.layers.Conv2DTranspose(32, 3, strides=2, padding="same", name="up_out_upsample")(x)
    x = conv_bn_act(x, 32, 3, name="up_out")
    logits = keras.layers.Conv2D(num_classes, 1, name="logits", dtype="float32")(x)
    return keras.Model(inputs, logits, name=f"segmenter_{backbone}"), pre


def build_task_model(cfg: TrainConfig, task: str, num_classes: int,
                     size: tuple[int, int]) -> tuple[keras.Model, Preprocessing]:
    """The model to train and how its input is normalized (0-1 for the zoo's; the backbone's own).

    Raises:
        ConfigError: for options the model does not take or a size it cannot have.
    """
    if cfg.backbone:
        if task != "segment":
            raise ConfigError(f"--backbone with --task {task}: transfer models are classifiers and segmenters "
                              "(--task segment --backbone mobilenet_v2); detectors train from scratch "
                              "(--model anchorfree).")
        return build_transfer_segmenter(cfg.backbone, num_classes, input_size=size, weights=cfg.weights)
    from edgecnn.train.loop import build_zoo_model

    scale = Preprocessing(mean=(0.0,) * 3, std=(255.0,) * 3, channel_order="RGB", normalization="scale")
    return build_zoo_model(cfg, num_classes, size), scale


def _batches(cfg: TrainConfig, task: str, split: Any, pre: Preprocessing, *, training: bool,
             first_epoch: int = 0) -> TaskBatches:
    h, w = split.images.shape[1:3]
    if task == "segment":
        labels: Any = list(split.masks)

        def targets(ys: list[np.ndarray]) -> np.ndarray:
            return np.stack(ys).astype(np.int32)
    else:
        from edgecnn._keras_layers import anchor_points
        from edgecnn.train.architectures.anchorfree import STRIDES
        from edgecnn.train.detection import assign

        scale = np.asarray([1, w, h, w, h], np.float32)
        labels = [np.asarray(b, np.float32).reshape(-1, 5) * scale for b in split.boxes]
        points = anchor_points((h, w), STRIDES)

        def targets(ys: list[np.ndarray]) -> np.ndarray:
            return np.stack([assign(points, b) for b in ys])
    aug = cfg.augment
    augment = PairedAugment(flip=bool(aug.flip), translate=aug.translate) if aug.enabled else None
    return TaskBatches(split.images, labels, batch_size=cfg.batch_size, mean=pre.mean, std=pre.std, targets=targets,
                       training=training, augment=augment, seed=cfg.seed, first_epoch=first_epoch)


def _compile(model: keras.Model, cfg: TrainConfig, task: str, num_classes: int, steps: int) -> None:
    from edgecnn.train.loop import learning_rate_schedule, make_optimizer

    optimizer = make_optimizer(cfg, learning_rate_schedule(cfg, cfg.lr, cfg.epochs, steps))
    if task == "segment":
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE),
                      metrics=[keras.metrics.MeanIoU(num_classes, sparse_y_pred=False, ignore_class=IGNORE,
                                                     name="miou")])
    else:
        from edgecnn.train.detection import DetectionLoss

        model.compile(optimizer=optimizer, loss=DetectionLoss())


def run_task(cfg: TrainConfig, task: str, files: RunFiles, *, verbose: int | None, state: TrainState | None = None,
             model: keras.Model | None = None) -> Path:
    """Train (or, given ``state`` and ``model`` of a killed run, go on training) and write the run."""
    from edgecnn.train.loop import EpochCheckpoint

    spec_size = get_model_spec(cfg.model).input_size if not cfg.backbone else (224, 224)
    size: tuple[int, int] = cfg.input_size or spec_size
    data = load_task_data(cfg, task, size)  # before anything is built: bad data fails fast
    num_classes = len(data.class_names)
    if model is None or state is None:
        model, pre = build_task_model(cfg, task, num_classes, size)
        state = TrainState(preprocessing=pre, dataset=_describe(data, cfg), class_names=data.class_names)
        _compile(model, cfg, task, num_classes, steps=max(1, len(data.train.files) // cfg.batch_size))
    train = _batches(cfg, task, data.train, state.preprocessing, training=True, first_epoch=state.epoch)
    val = _batches(cfg, task, data.val, state.preprocessing, training=False)
    t0 = time.time() - state.train_time_s
    checkpoint = EpochCheckpoint(files, state, t0=t0)
    if state.epoch < cfg.epochs:
        model.fit(train, validation_data=val, initial_epoch=state.epoch, epochs=cfg.epochs, callbacks=[checkpoint],
                  verbose=verbose if verbose is not None else (1 if sys.stdout.isatty() else 2))
        state = checkpoint.state
    return _finish(cfg, task, data, files, model, state)


def _describe(data: TaskData, cfg: TrainConfig) -> dict[str, Any]:
    return {"path": str(Path(data.source).resolve()), "name": Path(data.source).name,
            "format": "masks" if data.task == "segment" else "yolo", "num_train": len(data.train.files),
            "num_val": len(data.val.files), "num_test": len((data.test or data.val).files),
            "test_split": "test" if data.test is not None else "val"}


def _finish(cfg: TrainConfig, task: str, data: TaskData, files: RunFiles, model: keras.Model,
            state: TrainState) -> Path:
    from edgecnn.train.loop import versions
    from edgecnn.train.plots import plot_history
    from edgecnn.train.task_eval import (
        detection_metrics,
        keras_class_maps,
        keras_detections,
        segmentation_metrics,
        truth_detections,
    )

    pre = state.preprocessing
    h, w = data.train.images.shape[1:3]
    extra: dict[str, Any] = {"output_kind": "logits"} if task == "segment" else {"output_kind": "yolov8",
                                                                                 "stride": 32}
    card = ModelCard(
        name=files.root.name, task=task, output_name=extra["output_kind"],
        architecture=f"transfer-segmenter:{cfg.backbone}" if cfg.backbone else cfg.model,
        class_names=tuple(data.class_names), input_size=(h, w), mean=pre.mean, std=pre.std,
        channel_order=pre.channel_order, normalization=pre.normalization, dataset=state.dataset,
        training=cfg.to_dict(), versions=versions(), **extra)
    test = data.test or data.val
    if task == "segment":
        metrics = segmentation_metrics(keras_class_maps(model, test.images, card), test.masks, data.class_names)
    else:
        truth = truth_detections(test.boxes, [(w, h)] * len(test.boxes), data.class_names)
        metrics = detection_metrics([list(d) for d in keras_detections(model, test.images, card)], truth,
                                    data.class_names)
    metrics["evaluated_on"] = f"the {len(test.files)} {state.dataset['test_split']} images"
    metrics.update({"epochs": state.epoch, "train_time_s": state.train_time_s, "params": int(model.count_params())})
    card = card.replace(metrics={k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})
    save_model_atomic(model, files.model)
    card.save(files.card)
    write_json(files.metrics, metrics)
    write_json(files.history_json, state.history)
    plot_history(state.history, files.curves, title=card.name)
    state.replace(done=True).save(files.state)
    log.info("%s: %s", files.root, ", ".join(f"{k} {v}" for k, v in card.metrics.items()))
    return files.root


def resume_task(cfg: TrainConfig, task: str, files: RunFiles, state: TrainState, *, verbose: int | None) -> Path:
    """Go on with a killed segment/detect run from its last checkpoint (optimizer state included)."""
    import edgecnn.train.detection  # noqa: F401  (registers the detector's loss, which the checkpoint names)

    model = load_run_model(files.root, checkpoint=True)
    return run_task(cfg, task, files, verbose=verbose, state=state, model=model)
