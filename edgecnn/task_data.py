"""Datasets beyond classification, as users already have them: image + mask folders, and YOLO labels.

Segmentation (``load_segmentation_folder``): ``DIR/images/*`` and ``DIR/masks/*`` with the same
stems; a mask is a PNG whose pixel values are class indices (mode ``L``, or ``P``: a palette PNG,
its index is the class and the palette only its colour); ``DIR/classes.txt`` names the classes (one
per line), else they are ``class0``, ``class1``, ... up to the largest index found. The value 255
marks pixels to ignore (Pascal VOC's object borders): no loss and no score is computed on them.

Detection (``load_yolo_folder``): ``DIR/images/*`` and ``DIR/labels/<stem>.txt`` with one object per
line, ``class cx cy w h`` normalized to 0-1 (the format Ultralytics and most labelling tools write);
an image without a label file has no objects; ``DIR/classes.txt`` or a data YAML's ``names``
(``DIR/data.yaml``, a list or an index -> name mapping) names the classes.

Both take splits as ``DIR/train``, ``DIR/val`` and ``DIR/test`` each holding the folders above (or
the folders directly in ``DIR``: all of it is ``train``). Every bad input is a :class:`DataError`
naming the file (and the line): a missing mask, a mask of another size than its image, a class
index out of range, a malformed label line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.datasets import list_images, read_image
from edgecnn.errors import DataError

__all__ = ["SegmentationSplit", "DetectionSplit", "TaskData", "load_segmentation_folder", "load_yolo_folder",
           "SPLITS", "IGNORE"]

SPLITS = ("train", "val", "test")
IGNORE = 255  # a mask value that is no class: ignored by the loss and the scores (Pascal VOC's borders)


@dataclass(frozen=True, kw_only=True, eq=False)
class SegmentationSplit:
    """Images (N, H, W, 3) uint8 and their class maps (N, H, W) uint8/uint16, with the image files."""

    images: np.ndarray
    masks: np.ndarray
    files: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, eq=False)
class DetectionSplit:
    """Images (N, H, W, 3) uint8 and, per image, a (K, 5) float32 array of ``class, x1, y1, x2, y2``
    normalized to 0-1 (corners, from YOLO's centre and size), with the image files."""

    images: np.ndarray
    boxes: tuple[np.ndarray, ...]
    files: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, eq=False)
class TaskData:
    """A dataset of one task: its class names and splits (``val``/``test`` None when absent)."""

    task: str
    class_names: tuple[str, ...]
    train: Any
    val: Any = None
    test: Any = None
    source: str = ""


def _split_roots(root: Path, inner: str) -> dict[str, Path]:
    """``{split: folder holding images/ and inner/}``."""
    if not root.is_dir():
        raise DataError(f"Dataset folder {root} does not exist.")
    split = {s: root / s for s in SPLITS if (root / s / "images").is_dir()}
    if split:
        if "train" not in split:
            raise DataError(f"{root} has {', '.join(split)}/ but no train/images/.")
        for folder in split.values():
            if not (folder / inner).is_dir():
                raise DataError(f"{folder} has images/ but no {inner}/ beside it"
                                + (" (is this a segmentation folder?)" if inner == "labels" and
                                   (folder / "masks").is_dir() else "") + ".")
        return split
    if not (root / "images").is_dir() or not (root / inner).is_dir():
        raise DataError(f"{root} needs images/ and {inner}/ (or train/, val/, test/ each holding them).")
    return {"train": root}


def _class_names(root: Path, *, yaml: bool) -> list[str] | None:
    """classes.txt, else (detection) data.yaml's names, else None."""
    txt = root / "classes.txt"
    if txt.is_file():
        names = [line.strip() for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise DataError(f"{txt} names no class; write one class name per line.")
        return names
    data = next((root / n for n in ("data.yaml", "data.yml") if (root / n).is_file()), None) if yaml else None
    if data is None:
        return None
    from edgecnn._optional import require

    loaded = require("yaml", "train").safe_load(data.read_text(encoding="utf-8"))
    found: Any = loaded.get("names") if isinstance(loaded, dict) else None
    if isinstance(found, dict) and all(isinstance(k, int) for k in found):
        found = [str(found[k]) for k in sorted(found)] if sorted(found) == list(range(len(found))) else None
    if not isinstance(found, list) or not found:
        raise DataError(f"{data} has no 'names' list (or 0..N-1 mapping) of class names.")
    return [str(n) for n in found]


# ------------------------------------------------------------------------------ segmentation


def load_segmentation_folder(root: str | Path, *, size: tuple[int, int] | None = None) -> TaskData:
    """Read an image + mask folder (see the module docstring); images resized to ``size`` (height,
    width) bilinearly, masks with nearest-neighbour sampling, when given.

    Raises:
        DataError: naming the file, for a missing mask, a size mismatch, an index out of range, an
            unreadable file, or no images.
    """
    root = Path(root)
    names = _class_names(root, yaml=False)
    splits = {s: _read_masks(folder, size) for s, folder in _split_roots(root, "masks").items()}
    largest = max(_largest_class(sp.masks) for sp in splits.values())
    if names is None:
        names = [f"class{i}" for i in range(largest + 1)]
    for split in splits.values():
        bad = [i for i, m in enumerate(split.masks) if _largest_class(m) >= len(names)]
        if bad:
            i = bad[0]
            raise DataError(f"{split.files[i]}: its mask holds class index {_largest_class(split.masks[i])} but "
                            f"{root / 'classes.txt'} names {len(names)} classes (0-{len(names) - 1}; "
                            f"{IGNORE} marks pixels to ignore).")
    if len(names) < 2:
        raise DataError(f"{root}: a segmentation dataset needs at least two classes (background and one more).")
    return TaskData(task="segment", class_names=tuple(names), source=str(root), **splits)


def _largest_class(masks: np.ndarray) -> int:
    """The largest class index in ``masks``, the ignore value left out (-1 when there is none)."""
    values = np.unique(masks)
    values = values[values != IGNORE]
    return int(values.max()) if values.size else -1


def _read_masks(folder: Path, size: tuple[int, int] | None) -> SegmentationSplit:
    from PIL import Image

    files = list_images(folder / "images")
    if not files:
        raise DataError(f"{folder / 'images'} holds no images.")
    masks = {p.stem: p for p in list_images(folder / "masks")}
    images, maps = [], []
    for f in files:
        mask_file = masks.get(f.stem)
        if mask_file is None:
            raise DataError(f"{f}: no mask {folder / 'masks' / f.stem}.png beside it; every image needs its mask.")
        image = read_image(f, None)
        try:
            with Image.open(mask_file) as m:
                if m.mode not in ("L", "P", "I;16", "I"):
                    raise DataError(f"{mask_file}: a mask is a PNG of class indices (mode L or P), got mode {m.mode}.")
                mask = np.asarray(m)
        except OSError as err:
            raise DataError(f"{mask_file} is not a readable mask ({type(err).__name__}).") from None
        if mask.shape != image.shape[:2]:
            raise DataError(f"{mask_file}: mask {mask.shape[1]}x{mask.shape[0]} but image {f.name} is "
                            f"{image.shape[1]}x{image.shape[0]}; a mask has its image's size.")
        if size is not None:
            image = read_image(f, size)
            mask = np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.Resampling.NEAREST))
        images.append(image)
        maps.append(mask)
    try:
        return SegmentationSplit(images=np.stack(images), masks=np.stack(maps), files=tuple(map(str, files)))
    except ValueError:
        raise DataError(f"{folder / 'images'}: images of different sizes; pass an input size to resize them.") from None


# --------------------------------------------------------------------------------- detection


def load_yolo_folder(root: str | Path, *, size: tuple[int, int] | None = None) -> TaskData:
    """Read a YOLO-format folder (see the module docstring); images resized to ``size`` (boxes are
    normalized, so they stay as they are) when given.

    Raises:
        DataError: naming the file and line, for a malformed label line or a class out of range;
            naming the file for an unreadable image; for no class names or no images.
    """
    root = Path(root)
    names = _class_names(root, yaml=True)
    if names is None:
        raise DataError(f"{root} has no classes.txt or data.yaml with names; name the classes, one per line, in "
                        f"{root / 'classes.txt'}.")
    splits = {s: _read_labels(folder, size, len(names)) for s, folder in _split_roots(root, "labels").items()}
    if not any(len(b) for b in splits["train"].boxes):
        raise DataError(f"{root}: no label file under train holds an object; a detector learns from boxes "
                        "(labels/NAME.txt, a line 'class cx cy w h' per object).")
    return TaskData(task="detect", class_names=tuple(names), source=str(root), **splits)


def _read_labels(folder: Path, size: tuple[int, int] | None, classes: int) -> DetectionSplit:
    files = list_images(folder / "images")
    if not files:
        raise DataError(f"{folder / 'images'} holds no images.")
    boxes = [parse_label_file(folder / "labels" / f"{f.stem}.txt", classes) for f in files]
    images = [read_image(f, size) for f in files]
    try:
        stacked = np.stack(images)
    except ValueError:
        raise DataError(f"{folder / 'images'}: images of different sizes; pass an input size to resize them.") from None
    return DetectionSplit(images=stacked, boxes=tuple(boxes), files=tuple(map(str, files)))


def parse_label_file(path: Path, classes: int) -> np.ndarray:
    """One YOLO label file -> (K, 5) ``class, x1, y1, x2, y2`` normalized (no file: no objects).

    Raises:
        DataError: ``FILE:LINE: what is wrong`` for a malformed line, a class index out of range, or
            a box outside 0-1 or of no size.
    """
    if not path.is_file():
        return np.zeros((0, 5), dtype=np.float32)
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{number}"
        if len(parts) != 5:
            raise DataError(f"{where}: expected 'class cx cy w h' (5 values), got {len(parts)}: {line.strip()[:80]!r}.")
        try:
            cls = int(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:])
        except ValueError:
            raise DataError(f"{where}: not numbers: {line.strip()[:80]!r}.") from None
        if not 0 <= cls < classes:
            raise DataError(f"{where}: class {cls} is outside 0-{classes - 1} (the {classes} class names).")
        if not all(np.isfinite([cx, cy, w, h])) or w <= 0 or h <= 0 or not (0 <= cx <= 1 and 0 <= cy <= 1) \
                or w > 1 or h > 1:
            raise DataError(f"{where}: box {cx} {cy} {w} {h} is not a normalized centre and size in 0-1.")
        rows.append((cls, max(cx - w / 2, 0.0), max(cy - h / 2, 0.0), min(cx + w / 2, 1.0), min(cy + h / 2, 1.0)))
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5)
