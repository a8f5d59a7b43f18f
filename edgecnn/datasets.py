"""Datasets: CIFAR-10 (download, or a local .npz in the keras layout), image folders, and the
embedded CIFAR-10 sample. No TensorFlow here (only the CIFAR-10 download loads Keras), so the
export stage reads calibration data through the same code.

Every source is decoded to uint8 RGB arrays of the model's input size by the runtime's own
decoder (:func:`edgecnn.runtime.preprocess.load_image`: Pillow ``convert("RGB")`` and bilinear
resize), so training and inference see the same tensor for the same file.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgecnn.errors import DataError, InputError

log = logging.getLogger(__name__)

__all__ = ["Dataset", "load_dataset", "load_image_folder", "load_npz", "load_embedded_sample", "read_image",
           "list_images", "resize_all", "to_uint8", "channel_stats", "parse_classes", "CIFAR10_CLASSES",
           "IMAGE_EXTENSIONS"]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
_DOWNLOAD_TIMEOUT_S = 20


@dataclass(frozen=True)
class Dataset:
    """In-memory splits as uint8 NHWC RGB images and int32 labels."""

    name: str
    class_names: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict[str, Any]:
        """What goes into the model card's ``dataset`` entry."""
        return {**self.source, "name": self.name, "num_train": int(len(self.x_train)),
                "num_val": int(len(self.x_val)), "num_test": int(len(self.x_test))}


# ----------------------------------------------------------------------------------- sources

def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read ``x_train, y_train, x_test, y_test`` (keras layout) and check shapes and dtypes.

    Raises:
        DataError: for a missing or unreadable file, missing keys, or wrong shapes/dtypes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Dataset file {path} does not exist; "
                        "pass --data PATH.npz with x_train, y_train, x_test, y_test.")
    try:
        with np.load(path, allow_pickle=False) as d:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in d.files]
            if missing:
                raise DataError(f"{path} lacks {', '.join(missing)} (has {', '.join(d.files) or 'nothing'}); "
                                "an .npz dataset needs x_train, y_train, x_test, y_test as keras.datasets writes them.")
            arrays = [d[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    except DataError:
        raise
    except Exception as err:  # zipfile/pickle/OS errors: the file is not a readable npz
        raise DataError(f"Cannot read {path} as an .npz archive ({type(err).__name__}: {err}).") from err
    x_train, y_train, x_test, y_test = arrays
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        _check_split(path, name, x, y)
    return (to_uint8(x_train, path), y_train.reshape(-1).astype(np.int32),
            to_uint8(x_test, path), y_test.reshape(-1).astype(np.int32))


def _check_labels(path: Path, y_train: np.ndarray, y_test: np.ndarray) -> int:
    """The class count of an .npz dataset: its training labels must be 0..K-1, each present, and
    its test labels within them (one stray label must not make a 51-class or 100001-class model).

    Raises:
        DataError: naming the labels that do not fit.
    """
    counts = np.bincount(y_train, minlength=1) if int(y_train.max()) < 1_000_000 else None
    n = int(y_train.max()) + 1
    missing = [] if counts is None else np.flatnonzero(counts == 0).tolist()
    if counts is None or missing:
        present = np.unique(y_train)
        raise DataError(f"{path}: y_train must use the labels 0..K-1 with every class present; it has "
                        f"{len(present)} distinct labels up to {n - 1}"
                        + (f" (none of {missing[:5]}{'...' if len(missing) > 5 else ''})" if missing else "")
                        + ". Renumber the classes 0..K-1.")
    stray = np.unique(y_test[y_test >= n])
    if stray.size:
        raise DataError(f"{path}: y_test has labels {stray[:5].tolist()} that y_train never uses (0..{n - 1}); "
                        "the test split must use the training classes.")
    return n


def _check_split(path: Path, name: str, x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"{path}: x_{name} must be (N, height, width, 3) RGB images, got shape {x.shape}.")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{path}: x_{name} must hold numbers (uint8 0-255), got dtype {x.dtype}.")
    if y.size != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y_{name} must be {len(x)} integer labels, got shape {y.shape} dtype {y.dtype}.")
    if len(x) == 0:
        raise DataError(f"{path}: the {name} split is empty.")
    if y.min() < 0:
        raise DataError(f"{path}: y_{name} has negative labels.")


def to_uint8(x: np.ndarray, path: str | Path) -> np.ndarray:
    """Pixels as uint8: 0-255 numbers are rounded, 0-1 floats scaled (with a warning).

    Raises:
        DataError: for values outside 0-255.
    """
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise DataError(f"{path}: {bad:,} pixel values are NaN or infinite; fix the array (pixels are 0-255 numbers).")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 255:
        raise DataError(f"{path}: pixel values must lie in 0-255, got {lo:g}..{hi:g}.")
    if hi <= 1.0:
        log.warning("%s: pixels look scaled to 0-1; multiplying by 255.", path)
        x = x * 255.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def load_embedded_sample() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The CIFAR-10 sample shipped in the package (2,000 train / 500 test, class-balanced)."""
    root = resources.files("edgecnn") / "assets" / "cifar10_sample"
    labels = json.loads((root / "labels.json").read_text())
    (x_train, y_train), (x_test, y_test) = (_sample_split(root, split, labels[split]) for split in ("train", "test"))
    return x_train, y_train, x_test, y_test


def _sample_split(root: Any, split: str, labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One split of the embedded sample: a mosaic of 32x32 images, row by row, and its labels."""
    with (root / f"{split}.webp").open("rb") as fh:
        grid = np.asarray(Image.open(fh).convert("RGB"))
    rows, cols = grid.shape[0] // 32, grid.shape[1] // 32
    x = grid.reshape(rows, 32, cols, 32, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 32, 32, 3)
    y = np.asarray(labels, dtype=np.int32)
    return np.ascontiguousarray(x[: len(y)]), y


def download_cifar10() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-10 through ``keras.datasets`` (cached in ~/.keras/datasets after the first download).

    Raises:
        DataError: when the download fails, saying to pass a local file instead.
    """
    from edgecnn._optional import require

    keras = require("keras", "train")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as err:  # urllib, socket and archive errors all mean: no usable download
        raise DataError(
            f"Could not download CIFAR-10 ({type(err).__name__}: {_short(err)}); "
            "pass --data PATH.npz (keras layout) or --data sample for the embedded sample."
        ) from err
    finally:
        socket.setdefaulttimeout(old)
    return x_train, y_train.reshape(-1).astype(np.int32), x_test, y_test.reshape(-1).astype(np.int32)


def _short(err: BaseException, limit: int = 160) -> str:
    """An error's text on one line, cut at a word boundary (never mid-word) when long."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def list_images(folder: Path) -> list[Path]:
    """Image files (by extension) below ``folder``, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_image(path: str | Path, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one image file to uint8 RGB at ``size`` = (height, width), or its own size if None.

    Raises:
        DataError: for an unreadable, truncated or oversized image, naming the file.
    """
    from edgecnn.runtime.preprocess import decode_image, load_image

    try:
        if size is None:
            return np.asarray(decode_image(Path(path))[0], dtype=np.uint8)
        return load_image(Path(path), size)
    except InputError as err:  # every decoding failure, whatever Pillow raised
        raise DataError(f"{err} Remove or replace {path}.") from err


def _read_class_tree(root: Path, size: tuple[int, int], class_names: list[str] | None):
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if class_names is None:
        class_names = [d.name for d in dirs]
    elif sorted(d.name for d in dirs) != sorted(class_names):
        raise DataError(f"{root} has class folders {[d.name for d in dirs]}, expected {class_names} as in train/.")
    if len(class_names) < 2:
        raise DataError(f"{root} needs at least two class sub-folders (one per class), found {len(class_names)}.")
    xs, ys = [], []
    for label, name in enumerate(class_names):
        files = list_images(root / name)
        if not files:
            raise DataError(f"Class folder {root / name} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
        xs += [read_image(f, size) for f in files]
        ys += [label] * len(files)
    return np.stack(xs), np.asarray(ys, dtype=np.int32), class_names


def load_image_folder(root: str | Path, size: tuple[int, int]):
    """Read ``root/<class>/*`` or ``root/train/<class>/*`` (+ ``val/`` and/or ``test/``).

    Returns:
        (x_train, y_train, x_val or None, y_val or None, x_test or None, y_test or None, class_names)

    Raises:
        DataError: for an empty tree, a class folder without images, or an unreadable image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Image folder {root} does not exist.")
    if (root / "train").is_dir():
        x_tr, y_tr, names = _read_class_tree(root / "train", size, None)
        val = _read_class_tree(root / "val", size, names)[:2] if (root / "val").is_dir() else (None, None)
        test = _read_class_tree(root / "test", size, names)[:2] if (root / "test").is_dir() else (None, None)
        return x_tr, y_tr, *val, *test, names
    x, y, names = _read_class_tree(root, size, None)
    return x, y, None, None, None, None, names


# ----------------------------------------------------------------------------------- assembly

def parse_classes(spec: str | Sequence[Any] | None, class_names: list[str]) -> list[int] | None:
    """Turn ``"0-4"``, ``"cat,dog"``, ``"5,7,9"`` or a list into class indices.

    Raises:
        DataError: for unknown names or indices out of range.
    """
    if spec is None or spec == "" or spec == []:
        return None
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[int] = []
    for item in (str(i).strip() for i in items):
        if "-" in item and all(p.isdigit() for p in item.split("-", 1)):
            lo, hi = (int(p) for p in item.split("-", 1))
            out += list(range(lo, hi + 1))
        elif item.isdigit():
            out.append(int(item))
        elif item in class_names:
            out.append(class_names.index(item))
        else:
            raise DataError(f"Unknown class {item!r}; classes are {', '.join(class_names)} "
                            f"(or indices 0-{len(class_names) - 1}).")
    bad = [i for i in out if not 0 <= i < len(class_names)]
    if bad:
        raise DataError(f"Class indices {bad} are out of range 0-{len(class_names) - 1}.")
    if len(set(out)) < 2:
        raise DataError(f"Choose at least two classes, got {spec!r}.")
    return sorted(set(out))


def _subset(x, y, keep: list[int]):
    mask = np.isin(y, keep)
    remap = np.full(max(keep) + 1, -1, dtype=np.int32)
    remap[keep] = np.arange(len(keep), dtype=np.int32)
    return x[mask], remap[y[mask]]


def resize_all(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 NHWC batch to ``size`` = (height, width) with Pillow's bilinear filter."""
    if x.shape[1:3] == tuple(size):
        return x
    return np.stack([np.asarray(Image.fromarray(i).resize((size[1], size[0]), Image.Resampling.BILINEAR)) for i in x])


_Arrays = tuple[np.ndarray, np.ndarray, "np.ndarray | None", "np.ndarray | None", "np.ndarray | None",
                "np.ndarray | None"]  # x_train, y_train, x_val, y_val, x_test, y_test


def load_dataset(
    data: str | None,
    *,
    input_size: tuple[int, int] = (32, 32),
    val_split: float = 0.1,
    seed: int = 0,
    classes: str | Sequence[Any] | None = None,
    limit: int | None = None,
    max_train: int | None = None,
) -> Dataset:
    """Load a dataset by spec: None (CIFAR-10, else the embedded sample), ``cifar10``,
    ``sample``, a ``.npz`` file or an image folder.

    ``max_train`` keeps that many (shuffled) training images and resizes only those: export
    calibrates on 512, and 50,000 CIFAR-10 images at 224x224 would be 7.5 GB.

    Raises:
        DataError: for anything wrong with the data, with the fix in the message.
    """
    if not 0.0 <= val_split < 1.0:
        raise DataError(f"val_split must be in [0, 1), got {val_split}.")
    name, source, class_names, arrays = _read(data, input_size)
    source.setdefault("format", "arrays")
    keep = parse_classes(classes, class_names)
    if keep is not None:
        source["classes"] = [class_names[i] for i in keep]
        arrays = _subset_all(arrays, keep)
        class_names = [class_names[i] for i in keep]
    x_tr, y_tr, x_val, y_val, x_te, y_te = _hold_out(arrays, val_split=val_split, seed=seed, limit=limit,
                                                     source=source)
    if x_val is None or y_val is None or x_te is None or y_te is None:
        raise DataError(f"{name} has no test or validation images: hold some out with --val-split.")
    if y_tr.max() >= len(class_names):
        raise DataError(f"Labels go up to {int(y_tr.max())} but there are {len(class_names)} classes.")
    if max_train is not None:
        x_tr, y_tr = x_tr[:max_train], y_tr[:max_train]
    x_tr, x_val, x_te = (resize_all(a, input_size) for a in (x_tr, x_val, x_te))
    return Dataset(name, class_names, x_tr, y_tr, x_val, y_val, x_te, y_te, source)


def _read(data: str | None, input_size: tuple[int, int]) -> tuple[str, dict[str, Any], list[str], _Arrays]:
    """The dataset ``data`` names: its name, where it came from, its class names and its arrays
    (validation arrays only where the data has them: an image folder's ``val/``)."""
    if data == "keras.datasets.cifar10":  # as recorded in the card of a run trained on the download
        data = "cifar10"
    cifar = list(CIFAR10_CLASSES)
    if data is None:
        try:
            x_tr, y_tr, x_te, y_te = download_cifar10()
            return "cifar10", {"path": "keras.datasets.cifar10"}, cifar, (x_tr, y_tr, None, None, x_te, y_te)
        except DataError as err:
            log.warning("%s Using the embedded CIFAR-10 sample instead.", err)
            data = "sample"
    if data == "cifar10":
        x_tr, y_tr, x_te, y_te = download_cifar10()
        return "cifar10", {"path": "keras.datasets.cifar10"}, cifar, (x_tr, y_tr, None, None, x_te, y_te)
    if data == "sample":
        x_tr, y_tr, x_te, y_te = load_embedded_sample()
        return "cifar10-sample", {"path": "sample"}, cifar, (x_tr, y_tr, None, None, x_te, y_te)
    path = Path(data).expanduser()
    if path.suffix == ".npz" or path.is_file():
        x_tr, y_tr, x_te, y_te = load_npz(path)
        n = _check_labels(path, y_tr, y_te)
        names = cifar if n == 10 and "cifar" in path.name.lower() else [str(i) for i in range(n)]
        return path.stem, {"path": str(path.resolve())}, names, (x_tr, y_tr, None, None, x_te, y_te)
    if path.is_dir():
        x_tr, y_tr, x_val, y_val, x_te, y_te, names = load_image_folder(path, input_size)
        return (path.name, {"path": str(path.resolve()), "format": "folder"}, names,
                (x_tr, y_tr, x_val, y_val, x_te, y_te))
    raise DataError(f"Dataset {data!r} not found: pass a .npz file, an image folder, 'cifar10' or 'sample'.")


def _subset_all(arrays: _Arrays, keep: list[int]) -> _Arrays:
    """Every split reduced to the classes ``keep`` (labels renumbered)."""
    x_tr, y_tr, x_val, y_val, x_te, y_te = arrays
    x_tr, y_tr = _subset(x_tr, y_tr, keep)
    if x_val is not None:
        x_val, y_val = _subset(x_val, y_val, keep)
    if x_te is not None:
        x_te, y_te = _subset(x_te, y_te, keep)
    return x_tr, y_tr, x_val, y_val, x_te, y_te


def _hold_out(arrays: _Arrays, *, val_split: float, seed: int, limit: int | None, source: dict[str, Any]) -> _Arrays:
    """Training images shuffled, a validation split held out where the data has none, ``limit``
    applied, and the validation split standing in for a missing test split (and the reverse);
    ``source`` records the limit and a test split that is the validation one."""
    x_tr, y_tr, x_val, y_val, x_te, y_te = arrays
    order = np.random.default_rng(seed).permutation(len(x_tr))
    x_tr, y_tr = x_tr[order], y_tr[order]
    if limit and x_val is None:  # --limit caps the images drawn from, validation split included
        x_tr, y_tr = x_tr[:limit], y_tr[:limit]
    if x_val is None and val_split > 0:
        n_val = max(1, int(round(len(x_tr) * val_split)))
        if n_val >= len(x_tr):
            raise DataError(f"Only {len(x_tr)} training images: too few to hold out a validation split.")
        x_val, y_val, x_tr, y_tr = x_tr[:n_val], y_tr[:n_val], x_tr[n_val:], y_tr[n_val:]
    if limit:
        x_tr, y_tr = x_tr[:limit], y_tr[:limit]
        if x_val is not None and y_val is not None:
            x_val, y_val = x_val[:limit], y_val[:limit]
        source["limit"] = int(limit)
    if x_te is None:  # an image folder without test/: evaluate on the validation split
        x_te, y_te = x_val, y_val
        source["test_split"] = "val"
    if x_val is None:
        x_val, y_val = x_te, y_te
    return x_tr, y_tr, x_val, y_val, x_te, y_te


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation on the 0-255 scale (float64 accumulation)."""
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    return flat.mean(axis=0).round(4).tolist(), flat.std(axis=0).round(4).tolist()
