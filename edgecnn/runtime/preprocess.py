"""Preprocessing from the model card alone, identical to training's.

Training decodes every image to uint8 RGB at the card's ``input_size`` (Pillow bilinear resize),
then applies :func:`normalize_batch`; so does the runtime.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from edgecnn.card import ModelCard
from edgecnn.errors import InputError

__all__ = ["normalize_batch", "load_image", "check_pixels", "DEFAULT_MAX_PIXELS", "ImageLike"]


def normalize_batch(x: np.ndarray, card: ModelCard) -> np.ndarray:
    """uint8 (or 0-255 float) NHWC RGB batch -> float32 model input in the card's layout.

    Applies channel order, ``(x - mean) / std`` per channel and the NHWC/NCHW layout.
    """
    x = np.asarray(x, dtype=np.float32)
    if card.channel_order == "BGR":
        x = x[..., ::-1]
    mean = np.asarray(card.mean, dtype=np.float32)
    inv_std = np.asarray([1.0 / s for s in card.std], dtype=np.float32)
    x = (x - mean) * inv_std
    if card.layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


# ------------------------------------------------------------------------------ image decoding
# The one image decoder: edgecnn.datasets.read_image (training data) calls it too
# (Pillow ``convert("RGB")`` then a bilinear resize to (width, height)), so the same file gives
# the same uint8 tensor in training and at inference.

DEFAULT_MAX_PIXELS = 50_000_000  # ~7000x7000: far beyond any camera frame a CNN classifier needs

ImageLike = Union[str, Path, bytes, bytearray, memoryview, "Image.Image", np.ndarray]


def load_image(
    image: ImageLike,
    size: tuple[int, int],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode a path, encoded bytes, PIL image or array to uint8 HxWx3 RGB at ``size`` = (h, w).

    Grayscale, palette, RGBA, LA and CMYK images are converted to RGB (alpha dropped, as training
    does); other sizes are resized with Pillow's bilinear filter.

    Raises:
        InputError: for an unreadable or truncated file, an unsupported array shape or dtype,
            NaN or out-of-range pixels, or more than ``max_pixels`` pixels.
    """
    if isinstance(image, np.ndarray):
        img = _array_to_pil(image, max_pixels)
        return _finish(img, size, "the array")
    if isinstance(image, Image.Image):
        _check_pixels(image.size, max_pixels, "the PIL image")
        return _finish(image, size, "the PIL image")
    if isinstance(image, (bytes, bytearray, memoryview)):
        source, name = io.BytesIO(bytes(image)), f"the {len(image)} bytes given"
    elif isinstance(image, (str, Path)):
        source, name = Path(image), str(image)
        if not source.is_file():
            raise InputError(f"Image {image} does not exist.")
    else:
        raise InputError(
            f"Cannot use a {type(image).__name__} as an image; pass a path, bytes, a PIL image or a "
            "uint8 HxWx3 numpy array."
        )
    try:
        with Image.open(source) as img:
            _check_pixels(img.size, max_pixels, name)  # from the header, before decoding
            img.load()
            return _finish(img, size, name)
    except InputError:
        raise
    except Image.DecompressionBombError as err:
        raise InputError(f"Refusing {name}: {err}") from err
    except (OSError, ValueError, SyntaxError) as err:  # PIL: unidentified, truncated, broken data
        raise InputError(f"Cannot read {name} as an image ({err}); expected a PNG, JPEG, WebP, ... file.") from err


def _check_pixels(wh: tuple[int, int], max_pixels: int, name: str) -> None:
    if wh[0] * wh[1] > max_pixels:
        raise InputError(
            f"Refusing {name}: {wh[0]}x{wh[1]} = {wh[0] * wh[1]:,} pixels is over the limit of "
            f"{max_pixels:,}; downscale it first (or raise max_pixels)."
        )


def _finish(img: Image.Image, size: tuple[int, int], name: str) -> np.ndarray:
    try:
        img = img.convert("RGB")
        if img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as err:
        raise InputError(f"Cannot convert {name} to RGB ({err}).") from err


def _array_to_pil(x: np.ndarray, max_pixels: int) -> Image.Image:
    """uint8 (or 0-255 numeric) HxW, HxWx1, HxWx3 or HxWx4 array -> PIL image."""
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] not in (3, 4)):
        raise InputError(
            f"An image array must be HxW (gray), HxWx1, HxWx3 (RGB) or HxWx4 (RGBA); got shape {x.shape}."
        )
    _check_pixels((x.shape[1], x.shape[0]), max_pixels, "the array")
    x = check_pixels(x, "the image array")
    if x.dtype != np.uint8:
        x = np.rint(x).astype(np.uint8)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[x.shape[-1] if x.ndim == 3 else 2]
    return Image.fromarray(np.ascontiguousarray(x), mode=mode) if mode != "L" else Image.fromarray(x)


def check_pixels(x: np.ndarray, name: str) -> np.ndarray:
    """Check that ``x`` holds 0-255 pixel values (uint8, or another real dtype without NaN).

    Raises:
        InputError: for a non-numeric dtype, NaN/inf, or values outside 0-255.
    """
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise InputError(f"{name} must hold uint8 pixels (0-255); got dtype {x.dtype}.")
    if x.size == 0:
        return x
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise InputError(f"{name} contains NaN or infinite values; expected pixels in 0-255.")
    lo, hi = x.min(), x.max()
    if lo < 0 or hi > 255:
        raise InputError(
            f"{name} has values in {float(lo):g}..{float(hi):g}; expected raw pixels in 0-255 "
            "(normalization is applied from the model card, do not normalize beforehand)."
        )
    return x
