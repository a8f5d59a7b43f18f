"""Segmentation and YOLO-format datasets (issue 25): the synthetic scenes, and every bad input named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecnn.errors import DataError
from edgecnn.synthetic_scenes import SHAPES, draw_scene, make_scenes
from edgecnn.task_data import load_segmentation_folder, load_yolo_folder, parse_label_file


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("scenes"), counts={"train": 24, "val": 8, "test": 8}, size=64, seed=1)


def test_scenes_round_trip_through_both_formats(scenes):
    seg = load_segmentation_folder(scenes / "segment")
    det = load_yolo_folder(scenes / "detect")
    assert seg.class_names == ("background", *SHAPES) and det.class_names == SHAPES
    assert seg.train.images.shape == (24, 64, 64, 3) and seg.train.masks.shape == (24, 64, 64)
    assert len(det.test.boxes) == 8 and np.array_equal(det.train.images, seg.train.images)
    for mask, boxes in zip(seg.train.masks, det.train.boxes):
        assert set(np.unique(mask)) - {0} == {int(c) + 1 for c in boxes[:, 0]}  # a box for each class shown
        for c, x1, y1, x2, y2 in boxes:  # every box holds pixels of its class
            window = mask[int(y1 * 64):int(np.ceil(y2 * 64)), int(x1 * 64):int(np.ceil(x2 * 64))]
            assert (window == c + 1).any()
    counts = [len(b) for b in det.train.boxes]
    assert max(counts) >= 3 and min(counts) >= 1  # several objects, some overlapping


def test_scenes_are_not_trivial():
    """The class is the shape, not the colour; sizes vary; objects hide each other."""
    rng = np.random.default_rng(0)
    colours: dict[int, list[np.ndarray]] = {i: [] for i in range(len(SHAPES))}
    sides, hidden = [], 0
    for _ in range(60):
        image, classes, boxes = draw_scene(rng, 96)
        for c, x1, y1, x2, y2 in boxes:
            visible = classes[int(y1 * 96):int(y2 * 96), int(x1 * 96):int(x2 * 96)] == c + 1
            colours[int(c)].append(image[int(y1 * 96):int(y2 * 96), int(x1 * 96):int(x2 * 96)][visible].mean(0))
            sides.append(x2 - x1)
            hidden += visible.mean() < 0.5 * (np.pi / 4 if c == 0 else 0.5)
    assert all(np.std(np.stack(v), axis=0).mean() > 30 for v in colours.values())
    assert min(sides) < 0.15 and max(sides) > 0.35 and hidden >= 3


def _seg_folder(tmp_path: Path, masks: dict[str, np.ndarray], classes: str | None = "bg\nthing\n") -> Path:
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "masks").mkdir()
    for stem, mask in masks.items():
        Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(tmp_path / "images" / f"{stem}.png")
        if mask is not None:
            Image.fromarray(mask).save(tmp_path / "masks" / f"{stem}.png")
    if classes is not None:
        (tmp_path / "classes.txt").write_text(classes)
    return tmp_path


def test_bad_segmentation_pairs_are_named(tmp_path):
    ok = np.zeros((16, 16), np.uint8)
    with pytest.raises(DataError, match=r"b\.png: no mask"):
        load_segmentation_folder(_seg_folder(tmp_path / "a", {"a": ok, "b": None}))
    with pytest.raises(DataError, match=r"masks/a\.png: mask 8x8 but image a\.png is 16x16"):
        load_segmentation_folder(_seg_folder(tmp_path / "b", {"a": np.zeros((8, 8), np.uint8)}))
    with pytest.raises(DataError, match=r"a\.png: its mask holds class index 5 .* names 2 classes"):
        load_segmentation_folder(_seg_folder(tmp_path / "c", {"a": np.full((16, 16), 5, np.uint8)}))
    rgb = _seg_folder(tmp_path / "d", {"a": ok})
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(rgb / "masks" / "a.png")
    with pytest.raises(DataError, match="mode RGB"):
        load_segmentation_folder(rgb)
    palette = _seg_folder(tmp_path / "e", {}, classes=None)
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(palette / "images" / "p.jpg")
    indexed = Image.fromarray(np.tile(np.arange(3, dtype=np.uint8), (16, 6))[:, :16]).convert("P")
    indexed.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    indexed.save(palette / "masks" / "p.png")
    data = load_segmentation_folder(palette, size=(8, 8))
    assert data.class_names == ("class0", "class1", "class2") and data.train.masks.shape == (1, 8, 8)


@pytest.mark.parametrize("line, says", [
    ("0 0.5 0.5 0.2", "expected 'class cx cy w h' \\(5 values\\), got 4"),
    ("0 0.5 0.5 0.2 x", "not numbers"),
    ("3 0.5 0.5 0.2 0.2", "class 3 is outside 0-1"),
    ("1 0.5 0.5 0 0.2", "box 0.5 0.5 0.0 0.2 is not a normalized centre and size"),
    ("1 1.5 0.5 0.2 0.2", "box 1.5 0.5 0.2 0.2 is not a normalized centre and size"),
])
def test_malformed_label_lines_are_named_with_file_and_line(tmp_path, line, says):
    label = tmp_path / "x.txt"
    label.write_text(f"0 0.5 0.5 0.5 0.5\n\n{line}\n")
    with pytest.raises(DataError, match=f"x.txt:3: {says}"):
        parse_label_file(label, classes=2)


def test_yolo_names_from_data_yaml_and_missing_label_file_is_no_object(tmp_path):
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "images" / "b.png")
    (tmp_path / "labels" / "a.txt").write_text("1 0.5 0.5 0.5 1.0\n")
    with pytest.raises(DataError, match="classes.txt or data.yaml"):
        load_yolo_folder(tmp_path)
    (tmp_path / "data.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    data = load_yolo_folder(tmp_path)
    assert data.class_names == ("cat", "dog") and data.val is None
    np.testing.assert_allclose(data.train.boxes[0], [[1, 0.25, 0.0, 0.75, 1.0]])
    assert data.train.boxes[1].shape == (0, 5)
