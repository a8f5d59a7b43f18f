"""A synthetic but not trivial detection and segmentation dataset, for tests and benchmarks.

No detection or segmentation dataset can be downloaded here, so :func:`make_scenes` draws one:
circles, squares and triangles (the class is the shape, never the colour: every object gets a random
colour and shading), 1-5 per image at scales from a tenth to almost half of the image, rotated,
overlapping (a later object hides part of an earlier one: the mask shows what is visible, the box
keeps the whole object, and an object less than a fifth visible is dropped from both), on textured
backgrounds: random crops of real photos when a folder of them is given (the tests use photos from
public wheels), else smooth random texture. It writes the formats :mod:`edgecnn.task_data` reads:

- ``OUT/segment/{train,val,test}/{images,masks}/`` + ``OUT/segment/classes.txt`` (``background`` first);
- ``OUT/detect/{train,val,test}/{images,labels}/`` + ``OUT/detect/classes.txt`` (YOLO labels),

the same images in both (hard links where the file system allows).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from edgecnn.datasets import list_images

__all__ = ["SHAPES", "make_scenes", "draw_scene"]

SHAPES = ("circle", "square", "triangle")
_MIN_VISIBLE = 0.2


def _background(rng: np.random.Generator, size: int, photos: Sequence[Path]) -> Image.Image:
    if photos:
        with Image.open(photos[int(rng.integers(len(photos)))]) as photo:
            rgb = photo.convert("RGB")
        side = int(min(rgb.size) * rng.uniform(0.3, 1.0))
        x, y = (int(rng.integers(0, max(1, d - side + 1))) for d in rgb.size)
        return rgb.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BILINEAR)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    smooth = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    grain = rng.normal(0, 10, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(smooth, np.float32) + grain, 0, 255).astype(np.uint8))


def _outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    corners = {"square": 4, "triangle": 3}[shape]
    turns = [angle + 2 * math.pi * k / corners for k in range(corners)]
    return [(cx + r * math.cos(t), cy + r * math.sin(t)) for t in turns]


def draw_scene(rng: np.random.Generator, size: int, photos: Sequence[Path] = ()
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: RGB (size, size, 3) uint8, class map (size, size) uint8 (0 background, shape i is
    i + 1) and (K, 5) float32 boxes ``class, x1, y1, x2, y2`` normalized."""
    image = _background(rng, size, photos)
    classes = np.zeros((size, size), np.uint8)
    owner = np.full((size, size), -1, np.int16)  # which object each pixel shows
    objects = []
    for index in range(int(rng.integers(1, 6))):
        shape = int(rng.integers(len(SHAPES)))
        r = size * rng.uniform(0.05, 0.22)
        cx, cy = (float(v) for v in rng.uniform(r * 0.6, size - r * 0.6, 2))
        stencil = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(stencil)
        if SHAPES[shape] == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        else:
            draw.polygon(_outline(SHAPES[shape], cx, cy, r, float(rng.uniform(0, 2 * math.pi))), fill=255)
        inside = np.asarray(stencil) > 127
        if not inside.any():
            continue
        colour = rng.integers(20, 236, 3)
        shade = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(1.0, 1.3), size)[:, None, None]
        paint = np.clip(colour * shade + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)
        image.paste(Image.fromarray(paint), mask=stencil.filter(ImageFilter.GaussianBlur(0.6)))
        owner[inside] = index
        ys, xs = np.nonzero(inside)
        objects.append((index, shape, int(inside.sum()), (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)))
    boxes = []
    for index, shape, area, (x1, y1, x2, y2) in objects:
        visible = owner == index
        if visible.sum() < _MIN_VISIBLE * area:  # hidden: neither a box nor mask pixels
            owner[visible] = -1
            continue
        classes[visible] = shape + 1
        boxes.append((shape, x1 / size, y1 / size, x2 / size, y2 / size))
    return np.asarray(image), classes, np.asarray(boxes, np.float32).reshape(-1, 5)


def make_scenes(out: str | Path, *, counts: dict[str, int] | None = None, size: int = 128, seed: int = 0,
                backgrounds: str | Path | None = None) -> Path:
    """Write the dataset (see the module docstring) into ``out``: ``counts`` images per split
    (default train 400, val 100, test 100) of ``size`` x ``size``; returns ``out``."""
    out = Path(out)
    photos = list_images(Path(backgrounds)) if backgrounds else []
    rng = np.random.default_rng(seed)
    for root, names in (("segment", ("background", *SHAPES)), ("detect", SHAPES)):
        (out / root).mkdir(parents=True, exist_ok=True)
        (out / root / "classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    for split, n in (counts or {"train": 400, "val": 100, "test": 100}).items():
        seg_images, seg_masks = out / "segment" / split / "images", out / "segment" / split / "masks"
        det_images, det_labels = out / "detect" / split / "images", out / "detect" / split / "labels"
        for folder in (seg_images, seg_masks, det_images, det_labels):
            folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, classes, boxes = draw_scene(rng, size, photos)
            name = f"{split}_{i:05d}"
            Image.fromarray(image).save(seg_images / f"{name}.png")
            Image.fromarray(classes).save(seg_masks / f"{name}.png")
            _link_or_copy(seg_images / f"{name}.png", det_images / f"{name}.png")
            lines = [f"{int(c)} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}"
                     for c, x1, y1, x2, y2 in boxes]
            (det_labels / f"{name}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return out


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        dst.write_bytes(src.read_bytes())


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m edgecnn.synthetic_scenes OUT``: write the dataset (both formats) into OUT."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m edgecnn.synthetic_scenes", description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backgrounds", type=Path, help="a folder of photos to crop backgrounds from")
    args = parser.parse_args(argv)
    if min(args.train, args.val, args.test) < 0 or args.train < 1 or args.size < 32:
        parser.error("--train must be >= 1, --val and --test >= 0, --size >= 32")
    if args.backgrounds is not None and not list_images(args.backgrounds):
        parser.error(f"--backgrounds {args.backgrounds} holds no images")
    counts = {k: n for k, n in (("train", args.train), ("val", args.val), ("test", args.test)) if n}
    out = make_scenes(args.out, counts=counts, size=args.size, seed=args.seed, backgrounds=args.backgrounds)
    print(f"Wrote {sum(counts.values())} scenes to {out}/segment (images + masks) and {out}/detect (YOLO labels).")


if __name__ == "__main__":
    main()
