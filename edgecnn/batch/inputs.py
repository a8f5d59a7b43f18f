"""What a batch job reads: the list of inputs, in a fixed order, and how one of them becomes pixels.

A SOURCE is a folder (every image file below it, recursively), a glob (``photos/**/*.jpg``), a text
file of paths (one per line; ``#`` comments and blank lines skipped; relative paths from the text
file's folder), or an ``.npz`` (its ``x_test`` array in the keras layout, else its only 4-D uint8
array; item ``i`` is named ``FILE.npz#i``). The order is fixed (sorted paths, the text file's own
order, array order), so a resumed job cuts the same shards as the first run did: the list's
SHA-256 goes in the job's manifest.
"""

from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.datasets import IMAGE_EXTENSIONS, list_images
from edgecnn.errors import DataError, InputError
from edgecnn.runtime.preprocess import FitInfo, Fitting, fit_image

__all__ = ["Inputs", "list_inputs", "Decoder"]

_NPZ_MARK = "#"


@dataclass(frozen=True, kw_only=True)
class Inputs:
    """The inputs of one job: ``names`` (the ``path`` column) and, for an ``.npz``, its array."""

    source: str
    names: tuple[str, ...]
    array: np.ndarray | None = None  # an .npz's images, item i = names[i]

    def __len__(self) -> int:
        return len(self.names)

    def digest(self) -> str:
        """SHA-256 of the names in order: a resumed job must see the same list."""
        h = hashlib.sha256()
        for name in self.names:
            h.update(name.encode("utf-8", "surrogateescape") + b"\n")
        return h.hexdigest()


def list_inputs(source: str | Path) -> Inputs:
    """The inputs SOURCE names (see the module docstring).

    Raises:
        DataError: for a source that does not exist, names no image, or an unreadable text file or .npz.
    """
    text = str(source)
    path = Path(source)
    if path.is_dir():
        names = [str(p) for p in list_images(path)]
    elif path.is_file() and path.suffix.lower() == ".npz":
        return _npz(path)
    elif path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        names = [str(path)]
    elif path.is_file():
        names = _listed(path)
    elif glob.has_magic(text):
        names = sorted(p for p in glob.glob(text, recursive=True) if Path(p).is_file())
    else:
        raise DataError(f"{source} does not exist; pass a folder, a glob (quoted: 'photos/**/*.jpg'), a text file "
                        "of paths, or an .npz.")
    if not names:
        raise DataError(f"{source} names no image ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    return Inputs(source=text, names=tuple(names))


def _listed(path: Path) -> list[str]:
    """The paths of a text file, relative ones from its folder."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not a readable text file of image paths ({type(err).__name__}).") from None
    out = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line)
            out.append(str(p if p.is_absolute() else path.parent / p))
    return out


def _npz(path: Path) -> Inputs:
    try:
        with np.load(path, allow_pickle=False) as data:
            key = "x_test" if "x_test" in data.files else None
            if key is None:
                arrays = [k for k in data.files if data[k].ndim == 4 and data[k].dtype == np.uint8]
                if len(arrays) != 1:
                    raise DataError(f"{path} has no x_test and {len(arrays)} 4-D uint8 arrays ({data.files}); "
                                    "save the images as x_test (N, H, W, C).")
                key = arrays[0]
            images = data[key]
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable .npz ({type(err).__name__}: {err}).") from None
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3) or not len(images):
        raise DataError(f"{path}: {key} must be uint8 (N, H, W, 1 or 3) images; got {images.dtype} {images.shape}.")
    return Inputs(source=str(path), names=tuple(f"{path}{_NPZ_MARK}{i}" for i in range(len(images))), array=images)


@dataclass(frozen=True, kw_only=True)
class Decoder:
    """Fits one input to the model input (the runtime's one loader): picklable, so Ray's actors
    can hold it. ``error`` is the one-line message of an input that cannot be read."""

    input_size: tuple[int, int]
    channels: int
    fitting: Fitting
    max_pixels: int

    @classmethod
    def of(cls, model: Any) -> Decoder:
        card = model.card
        return cls(input_size=card.input_size, channels=card.channels, fitting=Fitting.of(card),
                   max_pixels=model.max_pixels)

    def fit(self, image: Any) -> tuple[np.ndarray | None, FitInfo | None, str | None]:
        """(pixels, fit, None), or (None, None, the error in one line)."""
        try:
            pixels, info = fit_image(image, self.input_size, max_pixels=self.max_pixels, channels=self.channels,
                                     fitting=self.fitting)
        except (InputError, DataError, OSError) as err:
            return None, None, " ".join(str(err).split())[:500]
        return pixels, info, None

    def fit_many(self, names: list[str]) -> list[tuple[np.ndarray | None, FitInfo | None, str | None]]:
        """:meth:`fit` of each image file (what a decoding thread runs on one chunk)."""
        return [self.fit(Path(n)) for n in names]
