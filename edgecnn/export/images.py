"""Which images an export calibrates on and judges its variants on.

The card's own dataset (its training images calibrate, its test split judges), or
``--calibration-data`` (an .npz or a folder, split by :mod:`edgecnn.export._data`), or every image of
``--eval-data``; for an fp32-only export without images, seeded synthetic inputs that can check
parity with the source and nothing else. Labels from class folders are mapped onto the model's
class order. No TensorFlow is imported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, overload

import numpy as np

from edgecnn.card import ModelCard
from edgecnn.datasets import load_dataset  # no TensorFlow import
from edgecnn.errors import DataError
from edgecnn.export._data import load_eval_data, load_judging_data, to_channels
from edgecnn.runtime.preprocess import Fitting

if TYPE_CHECKING:
    from edgecnn.export.config import ExportConfig

log = logging.getLogger(__name__)

__all__ = ["ExportData", "select_data", "fp32_only_data", "SYNTHETIC_NOTE"]


@dataclass(frozen=True, kw_only=True)
class ExportData:
    """The images of one export: calibration images, the held-out images every variant is judged
    on (labels for a classifier when known), and what they are."""

    calibration: np.ndarray | None
    test: np.ndarray
    test_labels: np.ndarray | None
    description: str
    shared: bool = False  # calibration and evaluation are the same unlabelled images
    calibration_labels: np.ndarray | None = None  # for the chance check, which judges on every labelled image


_SYNTHETIC_IMAGES = 32
SYNTHETIC_NOTE = ("No images given: the fp32 file was checked for parity with its source on {n} synthetic images "
                  "(seeded random colour fields) only; nothing was measured on real images. Pass --calibration-data "
                  "DIR_OR_NPZ to check it on real ones.")


def _synthetic_data(card: ModelCard, n: int = _SYNTHETIC_IMAGES) -> ExportData:
    """Seeded image-like inputs (smooth random colour fields plus noise) for an fp32-only export
    without images: enough to compare the converted graph with its source, never to judge accuracy."""
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = card.input_size
    images = []
    for _ in range(n):
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
        images.append(np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8))
    return ExportData(calibration=None, test=to_channels(np.stack(images), card.channels, gray=card.gray),
                      test_labels=None,
                      description=f"{n} synthetic images (parity only, no images given)")


def fp32_only_data(card: ModelCard, config: ExportConfig) -> tuple[ExportData, ModelCard]:
    """The images an fp32-only export without calibration data is checked on: ``--eval-data`` when
    given (labels and all), else synthetic images for parity alone."""
    if config.eval_data is None:
        return _synthetic_data(card), card
    none = ExportData(calibration=None, test=np.empty((0,)), test_labels=None, description="")
    return _as_model_input(*_with_eval_data(none, card, config))


@overload
def _limit(x: np.ndarray, n: int | None) -> np.ndarray: ...
@overload
def _limit(x: None, n: int | None) -> None: ...
@overload
def _limit(x: np.ndarray | None, n: int | None) -> np.ndarray | None: ...
def _limit(x: np.ndarray | None, n: int | None) -> np.ndarray | None:
    return x if x is None or n is None else x[:n]


def select_data(card: ModelCard, calibration_data: str | Path | None,
                config: ExportConfig, *, flag: str = "--calibration-data") -> tuple[ExportData, ModelCard]:
    """Held-out images (and labels, for a classifier) and calibration images, as the model's channels.

    Raises:
        DataError: without a usable dataset, or with labels that do not fit the model.
    """
    data, card = _read_data(card, calibration_data, config, flag)
    if config.eval_data is not None:
        data, card = _with_eval_data(data, card, config)
    return _as_model_input(data, card)


def _as_model_input(data: ExportData, card: ModelCard) -> tuple[ExportData, ModelCard]:
    """The images in the model's channels; labels only for a classifier (class folders say nothing
    about boxes or masks)."""
    calibration = data.calibration
    if calibration is not None:
        calibration = to_channels(calibration, card.channels, gray=card.gray)
    return replace(data, test=to_channels(data.test, card.channels, gray=card.gray), calibration=calibration,
                   test_labels=data.test_labels if card.task == "classify" else None), card


def _with_eval_data(data: ExportData, card: ModelCard, config: ExportConfig) -> tuple[ExportData, ModelCard]:
    """``--eval-data``: every one of its images judges the variants (labels when it has them),
    instead of the held-out part of the calibration data or the card's test split."""
    if config.eval_data is None:  # the callers ask only when it is given
        return data, card
    ev = load_judging_data(config.eval_data, card.input_size, fitting=Fitting.of(card))
    labels, card = _align_labels(ev.test_labels, ev.class_names, card)
    return ExportData(calibration=data.calibration, test=_limit(ev.test, config.test_images),
                      test_labels=_limit(labels, config.test_images), description=f"{ev.description} (--eval-data)",
                      calibration_labels=data.calibration_labels), card


def _read_data(card: ModelCard, calibration_data: str | Path | None,
               config: ExportConfig, flag: str = "--calibration-data") -> tuple[ExportData, ModelCard]:
    """Test images of the card's dataset, and calibration images: its training images, or
    ``calibration_data`` (any .npz/folder) when given. Without a usable dataset, the held-out part
    of ``calibration_data`` (all of it when unlabelled) serves as the test set."""
    spec = card.dataset.get("path")
    spec = "cifar10" if spec == "keras.datasets.cifar10" else spec
    if card.task in ("segment", "detect") and spec and calibration_data is None:
        calibration_data, spec = spec, None  # a run's image + mask/label folder: its images, train/ and test/
    if not spec and calibration_data is None:
        raise DataError(f"{card.name} names no dataset of its own: pass {flag} DIR_OR_NPZ with real "
                        "images (a folder of images is enough; class sub-folders add an accuracy check).")
    ds, missing = None, None
    try:
        if spec:
            ds = load_dataset(spec, input_size=card.input_size, classes=card.dataset.get("classes"),
                              max_train=config.quant.calibration_samples)
    except DataError as err:
        if calibration_data is None:
            raise DataError(f"{err} Pass {flag} DIR_OR_NPZ with real images for this model.") from err
        missing = str(err)
    if ds is not None and card.task == "classify" and ds.class_names != list(card.class_names) \
            and ds.num_classes != card.num_classes:
        raise DataError(f"Dataset {spec} has {ds.num_classes} classes, the model {card.num_classes}.")
    if calibration_data is None:
        assert ds is not None  # without calibration_data, the card's dataset loaded or DataError was raised
        return ExportData(calibration=ds.x_train, test=_limit(ds.x_test, config.test_images),
                          test_labels=_limit(ds.y_test, config.test_images), description=f"{ds.name} test split"), card
    ext = load_eval_data(calibration_data, card.input_size, seed=config.quant.seed, fitting=Fitting.of(card))
    if ds is not None:
        return ExportData(calibration=ext.calibration, test=_limit(ds.x_test, config.test_images),
                          test_labels=_limit(ds.y_test, config.test_images), description=f"{ds.name} test split"), card
    if missing:
        log.warning("%s Evaluating on images of %s instead.", missing, calibration_data)
    calib_labels, _ = _align_labels(ext.calibration_labels, ext.class_names, card)
    labels, card = _align_labels(ext.test_labels, ext.class_names, card)
    return ExportData(calibration=ext.calibration, test=_limit(ext.test, config.test_images),
                      test_labels=_limit(labels, config.test_images), description=ext.description, shared=ext.shared,
                      calibration_labels=calib_labels), card


def _align_labels(labels: np.ndarray | None, names: list[str] | None,
                  card: ModelCard) -> tuple[np.ndarray | None, ModelCard]:
    """Map folder-class labels onto the model's class order (by name), or adopt the folder names
    when the model has only numeric class names."""
    if labels is None or not names or card.task != "classify":
        return labels, card
    model_names = list(card.class_names)
    if set(names) == set(model_names):
        return np.asarray([model_names.index(names[i]) for i in labels], dtype=np.int64), card
    if len(names) == card.num_classes and all(c.isdigit() for c in model_names):
        return labels, card.replace(class_names=tuple(names))  # sorted folder names, the usual convention
    raise DataError(f"Calibration data classes {names[:5]} do not match the model's {model_names[:5]}; name the "
                    "class folders after the model's labels, or pass --labels in the model's class order.")
