"""Images for calibrating and checking an ONNX model that edgecnn did not train.

Deliberately independent of :mod:`edgecnn.train` (no TensorFlow): an ``.npz`` archive or an image
folder, decoded to uint8 RGB at the model's input size as the runtime fits an image for that model
(the card's :class:`~edgecnn.runtime.preprocess.Fitting`: stretch, letterbox, keep-aspect,
fit-height or center-crop, with its filter), and to gray by the card's rule for a 1-channel model.

Labelled data is split: a seeded 20% is held out from calibration to measure accuracy.
Unlabelled data (loose images, ``images`` without ``labels``) is split in halves once there are at
least ``_SPLIT_UNLABELLED`` images (each half then has 32 or more): a variant is never judged on the
images its ranges were calibrated on when the user gave enough to avoid it. Fewer images serve
both, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecnn.datasets import IMAGE_EXTENSIONS, list_images, read_image, resize_all, to_uint8
from edgecnn.errors import DataError, InputError
from edgecnn.runtime.preprocess import Fitting, fit_image

__all__ = ["EvalData", "load_eval_data", "load_judging_data", "to_channels"]

_HOLDOUT_FRACTION = 0.2
_SPLIT_UNLABELLED = 64


@dataclass(frozen=True)
class EvalData:
    """Calibration images (training side) and held-out images, labels when known."""

    calibration: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray | None
    class_names: list[str] | None
    description: str
    shared: bool = False  # calibration and evaluation are the same (unlabelled) images
    calibration_labels: np.ndarray | None = None  # labels of the calibration images, when known


def to_channels(images: np.ndarray, channels: int, *, gray: str = "luma") -> np.ndarray:
    """uint8 NHWC RGB images as ``channels`` (1: gray by the runtime's decoder and the card's ``gray`` rule)."""
    if channels == images.shape[-1]:
        return images
    if channels == 1 and images.shape[-1] == 3:
        from edgecnn.runtime.preprocess import load_image  # the runtime's own gray conversion

        keep = Fitting(gray=gray)
        return np.stack([load_image(i, i.shape[:2], channels=1, fitting=keep) for i in images])
    if channels == 3 and images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    raise DataError(f"Cannot turn {images.shape[-1]}-channel images into {channels} channels.")


def load_eval_data(path: str | Path, size: tuple[int, int], *, seed: int = 0, holdout: bool = True,
                   fitting: Fitting | None = None) -> EvalData:
    """Read an ``.npz`` (``x_train`` [+ ``x_test``, ``y_test``], or ``images`` [+ ``labels``]) or an
    image folder (``train/`` + ``test/`` class trees, a class tree, or loose images).

    Without a separate test split, a seeded 20% of the images is held out from calibration (half,
    for 64 or more unlabelled images); ``holdout=False`` keeps every image in ``test`` instead.
    Images are fitted to ``size`` as ``fitting`` says (default: stretched, bilinear).

    Raises:
        DataError: for a missing path, unreadable files, or images that are not RGB.
    """
    path = Path(path).expanduser()
    seed_or_none = seed if holdout else None
    fit = _Fit(size, fitting or Fitting())
    if path.is_file():
        return _from_npz(path, fit, seed_or_none)
    if path.is_dir():
        return _from_folder(path, fit, seed_or_none)
    what = "Calibration" if holdout else "Evaluation"
    raise DataError(f"{what} data {path} does not exist; pass an .npz file or an image folder.")


def load_judging_data(path: str | Path, size: tuple[int, int], *, fitting: Fitting | None = None) -> EvalData:
    """Every image of ``--eval-data``, to judge variants on (``test``; none is held back for
    calibration): an ``.npz``'s ``x_test`` [+ ``y_test``] or all its ``images``/``x`` [+ labels] or
    ``x_train``; a folder's ``test/`` class tree, a class tree, or loose images.

    Raises:
        DataError: as :func:`load_eval_data`.
    """
    return load_eval_data(path, size, holdout=False, fitting=fitting)


@dataclass(frozen=True)
class _Fit:
    """The model's input size and how an image is fitted to it."""

    size: tuple[int, int]
    fitting: Fitting

    def file(self, path: Path) -> np.ndarray:
        if self.fitting == Fitting():
            return read_image(path, self.size)
        try:
            return fit_image(path, self.size, fitting=self.fitting)[0]
        except InputError as err:
            raise DataError(f"{err} Remove or replace {path}.") from err

    def arrays(self, x: np.ndarray) -> np.ndarray:
        if self.fitting == Fitting():
            return resize_all(x, self.size)
        return np.stack([fit_image(i, self.size, fitting=self.fitting)[0] for i in x])


def _split(x: np.ndarray, y: np.ndarray, seed: int | None, names: list[str] | None, what: str) -> EvalData:
    if seed is None:  # no holdout: every image judges
        return EvalData(x, x, y, names, what.replace("20% held out", f"all {len(x)} images"), calibration_labels=y)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(len(x) * _HOLDOUT_FRACTION))
    test, calib = order[:n_test], order[n_test:]
    return EvalData(x[calib], x[test], y[test], names, what, calibration_labels=y[calib])


def _from_npz(path: Path, size: _Fit, seed: int | None) -> EvalData:
    try:
        with np.load(path, allow_pickle=False) as d:
            arrays = {k: d[k] for k in d.files}
    except Exception as err:  # zipfile/pickle/OS errors
        raise DataError(f"Cannot read {path} as an .npz archive ({type(err).__name__}: {err}).") from err
    if "x_train" in arrays:
        calib = _as_images(arrays["x_train"], path, "x_train", size)
        if "x_test" in arrays:
            test = _as_images(arrays["x_test"], path, "x_test", size)
            labels = arrays.get("y_test")
            train_labels = arrays.get("y_train")
            return EvalData(calib, test, None if labels is None else labels.reshape(-1).astype(np.int64), None,
                            f"{path.name} (x_train / x_test)",
                            calibration_labels=None if train_labels is None or labels is None
                            else train_labels.reshape(-1).astype(np.int64))
        return _unlabelled(calib, f"{path.name} (x_train)", seed)
    key = next((k for k in ("images", "x") if k in arrays), None)
    if key is None:
        raise DataError(f"{path} has {sorted(arrays)}; expected x_train [+ x_test, y_test] or images [+ labels].")
    x = _as_images(arrays[key], path, key, size)
    y = next((arrays[k] for k in ("labels", "y") if k in arrays), None)
    if y is None:
        return _unlabelled(x, f"{path.name} ({key})", seed)
    return _split(x, y.reshape(-1).astype(np.int64), seed, None, f"{path.name} ({key}, 20% held out)")


def _unlabelled(x: np.ndarray, what: str, seed: int | None) -> EvalData:
    if seed is None:
        return EvalData(x, x, None, None, f"{what}: all {len(x)} unlabelled images")
    if len(x) < _SPLIT_UNLABELLED:
        return EvalData(x, x, None, None, f"{what}: {len(x)} unlabelled images, used for both calibration and "
                                          "evaluation", shared=True)
    order = np.random.default_rng(seed).permutation(len(x))
    half = len(x) // 2
    return EvalData(x[order[half:]], x[order[:half]], None, None,
                    f"{what}: {len(x)} unlabelled images, {len(x) - half} for calibration and {half} held out "
                    "for evaluation")


def _as_images(x: np.ndarray, path: Path, key: str, size: _Fit) -> np.ndarray:
    if x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"{path}: {key} must be (N, height, width, 3) RGB images, got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{path}: {key} must be uint8 pixels 0-255, got dtype {x.dtype}.")
    return size.arrays(to_uint8(x, f"{path}:{key}"))


def _class_tree(root: Path, size: _Fit, names: list[str] | None):
    dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = names or dirs
    xs, ys = [], []
    for label, name in enumerate(names):
        files = list_images(root / name) if (root / name).is_dir() else []
        xs += [size.file(f) for f in files]
        ys += [label] * len(files)
    if not xs:
        raise DataError(f"No images under {root}.")
    return np.stack(xs), np.asarray(ys, dtype=np.int64), names


def _task_folder(root: Path) -> dict[str, Path] | None:
    """The image folders of a segmentation or YOLO dataset (``images/`` beside ``masks/`` or
    ``labels/``, at the top or in train/val/test), by split; None for any other folder."""
    def is_task(d: Path) -> bool:
        return (d / "images").is_dir() and ((d / "masks").is_dir() or (d / "labels").is_dir())

    if is_task(root):
        return {"train": root / "images"}
    found = {s: root / s / "images" for s in ("train", "val", "test") if is_task(root / s)}
    return found or None


def _from_task_folder(splits: dict[str, Path], root: Path, size: _Fit, seed: int | None) -> EvalData:
    """Calibration on the training images, judging on test/ (else val/, else a held-out part)."""
    def read(folder: Path) -> np.ndarray:
        files = list_images(folder)
        if not files:
            raise DataError(f"No images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {folder}.")
        return np.stack([size.file(f) for f in files])

    held = splits.get("test") or splits.get("val")
    if "train" in splits and held is not None:
        return EvalData(read(splits["train"]), read(held), None, None, f"{root.name} ({held.parent.name}/ images)")
    return _unlabelled(read(next(iter(splits.values()))), root.name, seed)


def _from_folder(root: Path, size: _Fit, seed: int | None) -> EvalData:
    task_splits = _task_folder(root)
    if task_splits:
        return _from_task_folder(task_splits, root, size, seed)
    if (root / "train").is_dir() and (root / "test").is_dir():
        calib, calib_labels, names = _class_tree(root / "train", size, None)
        test, labels, _ = _class_tree(root / "test", size, names)
        return EvalData(calib, test, labels, names, f"{root.name} (train/ + test/)", calibration_labels=calib_labels)
    subdirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if len(subdirs) >= 2:
        x, y, names = _class_tree(root, size, None)
        return _split(x, y, seed, names, f"{root.name} (class folders, 20% held out)")
    files = list_images(root)
    if not files:
        raise DataError(f"No images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}.")
    return _unlabelled(np.stack([size.file(f) for f in files]), root.name, seed)
