"""Annotated images for ``predict --save``: boxes with labels, class maps overlaid (Pillow only)."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from edgecnn.errors import InputError
from edgecnn.runtime.heads.detect import Detection
from edgecnn.runtime.heads.segment import SegmentationResult

__all__ = ["class_colour", "draw_detections", "overlay_mask", "BACKGROUND_NAMES"]

# A class with one of these names is left uncoloured in an overlay (the image shows through).
BACKGROUND_NAMES = ("background", "bg", "__background__", "_background_")


def class_colour(index: int) -> tuple[int, int, int]:
    """A fixed, well-spread RGB colour per class index (golden-ratio hue steps)."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: Image.Image, detections: Sequence[Detection], *, width: int | None = None) -> Image.Image:
    """A copy of ``image`` (RGB) with each box outlined in its class colour and labelled
    ``label score`` on a filled tag above it (inside it when at the top edge)."""
    img = image.convert("RGB")
    draw = ImageDraw.Draw(img)
    line = width or max(1, round(min(img.size) / 200))
    font = ImageFont.load_default(size=max(10, round(min(img.size) / 40)))
    for det in detections:
        colour = class_colour(det.index)
        x1, y1, x2, y2 = det.box
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        text = f"{det.label} {det.score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top + 2
        ty = y1 - th - 1 if y1 - th - 1 >= 0 else y1 + 1
        draw.rectangle((x1, ty, x1 + tw + 4, ty + th), fill=colour)
        draw.text((x1 + 2, ty - top), text, fill=(255, 255, 255) if sum(colour) < 450 else (0, 0, 0), font=font)
    return img


def overlay_mask(image: Image.Image, result: SegmentationResult, *, alpha: float = 0.5,
                 legend: bool = True) -> Image.Image:
    """A copy of ``image`` (RGB) blended with one colour per class of ``result.mask``; classes
    named like a background (:data:`BACKGROUND_NAMES`) stay unpainted. ``legend``: a panel in the
    top left corner names each painted class present, with its colour swatch and share of the
    image (the twelve largest).

    Raises:
        InputError: for ``alpha`` outside 0-1 or a mask of another size than the image.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in 0-1, got {alpha}.")
    img = np.asarray(image.convert("RGB"), dtype=np.float32)
    mask = np.asarray(result.mask)
    if mask.shape != img.shape[:2]:
        raise InputError(f"The mask is {mask.shape[1]}x{mask.shape[0]} but the image is {img.shape[1]}x{img.shape[0]}.")
    n = max(len(result.classes), int(mask.max(initial=0)) + 1)
    palette = np.asarray([class_colour(i) for i in range(n)], dtype=np.float32)
    painted = np.ones(n, dtype=bool)
    for i, name in enumerate(result.classes):
        painted[i] = name.lower() not in BACKGROUND_NAMES
    where = painted[mask][..., None]
    blended = np.where(where, img * (1 - alpha) + palette[mask] * alpha, img)
    out = Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))
    if legend:
        shares = np.bincount(mask.ravel(), minlength=n) / max(mask.size, 1)
        present = [i for i in np.argsort(-shares) if shares[i] > 0 and painted[i]][:12]
        _legend(out, [(int(i), result.classes[i] if i < len(result.classes) else str(i), float(shares[i]))
                      for i in present])
    return out


def _legend(img: Image.Image, rows: list[tuple[int, str, float]]) -> None:
    """Swatch, class name and share per row, on a dark panel in the top left corner (in place)."""
    if not rows:
        return
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(10, round(min(img.size) / 40)))
    texts = [f"{name} {100 * share:.1f}%" for _, name, share in rows]
    height = max(draw.textbbox((0, 0), t, font=font)[3] for t in texts) + 4
    width = max(draw.textbbox((0, 0), t, font=font)[2] for t in texts) + height + 8
    draw.rectangle((0, 0, width, height * len(rows) + 4), fill=(20, 20, 20))
    for k, ((index, _, _), text) in enumerate(zip(rows, texts)):
        y = 2 + k * height
        draw.rectangle((2, y + 1, height - 1, y + height - 2), fill=class_colour(index))
        draw.text((height + 4, y), text, fill=(255, 255, 255), font=font)
