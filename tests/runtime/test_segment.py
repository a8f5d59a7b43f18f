"""Segmentation head: class maps, mapping back to the image, mIoU, and torchvision's LR-ASPP
exported to tests/data/foreign (tools/make_foreign_models.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecnn.errors import ArtifactError, InputError
from edgecnn.presets import ModelOverrides
from edgecnn.runtime.heads import (
    SegmentationResult,
    Segmenter,
    class_axis,
    class_fractions,
    class_ious,
    class_maps,
    mean_iou,
    postprocess_segmentation,
    to_original,
)
from edgecnn.runtime.preprocess import FitInfo

FOREIGN = Path(__file__).parents[1] / "data" / "foreign"
LRASPP = FOREIGN / "lraspp_shapes.onnx"
IMAGENET = {"mean": (123.675, 116.28, 103.53), "std": (58.395, 57.12, 57.375)}
LABELS = ["background", "red", "green", "blue"]
RED, GREEN, BLUE = (220, 40, 40), (40, 200, 60), (50, 70, 230)


# ------------------------------------------------------------------------------ pure functions
@pytest.mark.parametrize("shape, classes, layout, expected", [
    ((1, 4, 128, 128), 4, "nchw", 1),
    ((1, 128, 128, 4), 4, "nhwc", 3),
    ((1, 128, 128, 4), 4, "nchw", 3),      # the labels decide, not the input layout
    ((1, 21, 64, 64), 0, "nhwc", 1),       # no labels: the smaller axis
    ((1, 64, 64, 21), 0, "nchw", 3),
    ((1, 8, 4, 8), 8, "nhwc", 3),          # both axes fit the labels: the input layout decides
    ((1, 8, 4, 8), 8, "nchw", 1),
    ((2, 64, 64), 5, "nchw", None),        # class indices already
])
def test_class_axis(shape, classes, layout, expected):
    assert class_axis(shape, classes, layout) == expected


def test_class_axis_refuses_other_ranks():
    with pytest.raises(ArtifactError, match=r"\[N, C, H, W\]"):
        class_axis((1, 4), 4, "nchw")


def test_class_maps_argmax_in_either_layout():
    logits = np.zeros((1, 3, 2, 2), np.float32)
    logits[0, 0, 0, 0] = 5   # pixel (0, 0): class 0
    logits[0, 1, 0, 1] = 5   # (0, 1): class 1
    logits[0, 2, 1, :] = 5   # bottom row: class 2
    expected = [[[0, 1], [2, 2]]]
    assert class_maps(logits, axis=1).tolist() == expected
    assert class_maps(logits.transpose(0, 2, 3, 1), axis=3).tolist() == expected


@pytest.mark.parametrize("values, kind, expected", [
    ([[-1.0, 0.5], [0.0, 3.0]], "logits", [[0, 1], [0, 1]]),              # foreground above 0
    ([[0.2, 0.6], [0.5, 0.9]], "probabilities", [[0, 1], [0, 1]]),       # foreground above 0.5
])
def test_one_channel_output_is_foreground(values, kind, expected):
    out = np.asarray(values, np.float32)[None, None]
    assert class_maps(out, axis=1, output_kind=kind).tolist() == [expected]


def test_class_index_maps_pass_through_and_fractions_are_refused():
    assert class_maps(np.array([[[0, 2], [1, 1]]], np.int64), axis=None).tolist() == [[[0, 2], [1, 1]]]
    assert class_maps(np.array([[[0.0, 2.0]]]), axis=None).tolist() == [[[0, 2]]]
    with pytest.raises(ArtifactError, match="class indices"):
        class_maps(np.array([[[0.3, 2.0]]]), axis=None)


def _band_map(n_in: int) -> np.ndarray:
    """An n_in x n_in input grid of a 16x8 image letterboxed into 8x8: padding rows (class 9)
    above and below, the image rows split into class 1 (left) and class 2 (right)."""
    m = np.full((n_in, n_in), 9, np.int64)
    q = n_in // 4
    m[q:3 * q, : n_in // 2] = 1
    m[q:3 * q, n_in // 2:] = 2
    return m


@pytest.mark.parametrize("out_size", [8, 4, 16])  # output at, under and over the input resolution
def test_to_original_drops_the_letterbox_border(out_size):
    fit = FitInfo(16, 8, 0.5, 0.5, 0.0, 2.0)  # 16x8 -> 8x4, 2 rows of padding at the top
    mask = to_original(_band_map(out_size), fit, (8, 8))
    assert mask.shape == (8, 16)
    expected = np.zeros((8, 16), np.int64)
    expected[:, :8], expected[:, 8:] = 1, 2
    assert mask.tolist() == expected.tolist()  # no padding class left, exact halves


def test_to_original_plain_resize_nearest():
    fit = FitInfo(6, 3, 2 / 6, 2 / 3)  # a 6x3 image squashed to 2x2
    mask = to_original(np.array([[0, 1], [2, 3]]), fit, (2, 2))
    assert mask.tolist() == [[0, 0, 0, 1, 1, 1], [2, 2, 2, 3, 3, 3], [2, 2, 2, 3, 3, 3]]


@pytest.mark.parametrize("mask, n, expected", [
    ([[0, 0], [1, 3]], 4, (0.5, 0.25, 0.0, 0.25)),
    ([[2, 2], [2, 2]], 3, (0.0, 0.0, 1.0)),
])
def test_class_fractions(mask, n, expected):
    assert class_fractions(np.array(mask), n) == pytest.approx(expected)


def test_postprocess_names_classes_and_checks_the_label_count():
    logits = np.zeros((1, 3, 4, 4), np.float32)
    logits[0, 2, :2] = 1
    fit = FitInfo(4, 4, 1.0, 1.0)
    (r,) = postprocess_segmentation(logits, [fit], ["bg", "cat", "dog"], input_size=(4, 4))
    assert r.classes == ("bg", "cat", "dog") and r.fractions == pytest.approx((0.5, 0.0, 0.5))
    assert r.present() == [("bg", 0, 0.5), ("dog", 2, 0.5)]  # largest share first, ties by index
    (unnamed,) = postprocess_segmentation(logits, [fit], [], input_size=(4, 4))
    assert unnamed.classes == ("0", "1", "2")
    with pytest.raises(ArtifactError, match="3 classes but the card has 2 labels"):
        postprocess_segmentation(logits, [fit], ["a", "b"], input_size=(4, 4))
    with pytest.raises(InputError, match="1 outputs for 2 images"):
        postprocess_segmentation(logits, [fit, fit], [], input_size=(4, 4))


def test_result_is_read_only_and_json_summary():
    (r,) = postprocess_segmentation(np.zeros((1, 2, 2, 2), np.float32), [FitInfo(2, 2, 1, 1)], ["a", "b"],
                                    input_size=(2, 2))
    with pytest.raises(ValueError):
        r.mask[0, 0] = 1
    assert r.to_dict() == {"segmentation": {"width": 2, "height": 2,
                                            "classes": [{"label": "a", "index": 0, "fraction": 1.0}]}}
    assert r.to_dict(include_mask=True)["segmentation"]["mask"] == [[0, 0], [0, 0]]


# ------------------------------------------------------------------------------------ metrics
@pytest.mark.parametrize("a, b, expected", [
    ([[0, 0], [1, 1]], [[0, 0], [1, 1]], 1.0),
    ([0, 0, 1, 1], [0, 1, 1, 1], (1 / 2 + 2 / 3) / 2),
    ([0, 0, 0, 0], [1, 1, 1, 1], 0.0),
    ([0, 0, 2, 2], [0, 0, 2, 2], 1.0),  # class 1 in neither map: not counted
    ([0, 0, 0, 2], [0, 0, 0, 0], (3 / 4 + 0) / 2),  # a class only the candidate has: IoU 0
])
def test_mean_iou_hand_cases(a, b, expected):
    assert mean_iou(np.array(a), np.array(b)) == pytest.approx(expected)


def test_class_ious_over_several_images_of_different_sizes():
    a = [np.zeros((2, 2), np.int64), np.array([[1, 1, 1]])]
    b = [np.array([[0, 0], [0, 1]]), np.array([[1, 1, 0]])]
    # class 0: inter 3, union 5 (4 + 1 from the second image); class 1: inter 2, union 4
    assert class_ious(a, b) == pytest.approx({0: 3 / 5, 1: 2 / 4})


@pytest.mark.parametrize("a, b, message", [
    (np.zeros((2, 2), np.int64), np.zeros((2, 3), np.int64), "differ"),
    (np.array([[-1, 0]]), np.array([[0, 0]]), "class indices"),
    (np.array([[0.5, 0]]), np.array([[0, 0]]), "class indices"),
])
def test_mean_iou_refuses_mismatched_maps(a, b, message):
    with pytest.raises(InputError, match=message):
        mean_iou(a, b)


# --------------------------------------------------------------- torchvision's LR-ASPP export
def scene(size: tuple[int, int], rects) -> tuple[Image.Image, np.ndarray]:
    """A grey image (width, height) with filled rectangles, and its true class map."""
    img = Image.new("RGB", size, (120, 120, 120))
    truth = np.zeros((size[1], size[0]), np.int64)
    for colour, box in rects:
        img.paste(colour, box)
        truth[box[1]:box[3], box[0]:box[2]] = 1 + (RED, GREEN, BLUE).index(colour)
    return img, truth


SCENE = [(RED, (20, 30, 80, 90)), (BLUE, (120, 10, 180, 60))]


def class_fractions_of(truth: np.ndarray) -> tuple[float, ...]:
    return class_fractions(truth, len(LABELS))


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(LRASPP, overrides=ModelOverrides(task="segment", class_names=tuple(LABELS), **IMAGENET))


def test_segmenter_masks_the_original_image(segmenter):
    img, truth = scene((200, 96), SCENE)  # not the 128x128 input: resized there and back
    (r,) = segmenter.predict(img)
    assert isinstance(r, SegmentationResult)
    assert r.mask.shape == (96, 200) and r.classes == tuple(LABELS)
    assert sum(r.fractions) == pytest.approx(1.0)
    assert mean_iou(r.mask, truth) > 0.85
    assert {label for label, _, frac in r.present() if frac > 0.02} == {"background", "red", "blue"}
    assert r.fractions == pytest.approx(class_fractions_of(truth), abs=0.03)


def test_segmenter_is_deterministic_and_batches(segmenter):
    images = [scene((200, 96), SCENE)[0], scene((64, 150), [(GREEN, (10, 40, 50, 100))])[0]]
    batch = segmenter.predict(images)
    singles = [segmenter.predict(im)[0] for im in images]
    assert [r.mask.shape for r in batch] == [(96, 200), (150, 64)]
    for a, b in zip(batch, singles):
        assert np.array_equal(a.mask, b.mask) and a.fractions == b.fractions
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(batch, segmenter.predict(images)))
    assert batch[1].present()[0][0] in ("background", "green") and batch[1].fractions[2] > 0.1


def test_annotate_overlays_classes_but_not_the_background(segmenter):
    img, _ = scene((200, 96), SCENE)
    r = segmenter.predict(img)[0]
    from edgecnn.runtime.heads.draw import class_colour, overlay_mask

    plain = overlay_mask(img, r, legend=False)
    assert plain.size == img.size
    changed = np.any(np.asarray(plain) != np.asarray(img), axis=2)
    assert changed[r.mask > 0].all() and not changed[r.mask == 0].any()
    # issue 21 §3: the overlay had no legend; its swatches are the overlay's own colours
    out = np.asarray(segmenter.annotate(img, r))
    first = max((i for i in range(1, len(r.classes)) if (r.mask == i).any()), key=lambda i: (r.mask == i).sum())
    assert tuple(out[6, 4]) == class_colour(first)
    with pytest.raises(InputError, match="annotate the image the result was predicted from"):
        segmenter.annotate(scene((50, 50), [])[0], r)


def test_a_file_without_card_needs_task_segment():
    with pytest.raises(ArtifactError, match="--task segment"):
        Segmenter(LRASPP)


def test_segmenter_refuses_a_detector():
    with pytest.raises(ArtifactError, match="not a segmenter"):
        Segmenter(FOREIGN / "yolov8_shapes.onnx")


def test_load_model_picks_the_segmenter_when_told_the_task():
    from edgecnn.runtime import load_model

    model = load_model(LRASPP, overrides=ModelOverrides(task="segment", class_names=tuple(LABELS), **IMAGENET))
    assert isinstance(model, Segmenter)
    img, truth = scene((200, 96), SCENE)
    assert mean_iou(model.predict(img)[0].mask, truth) > 0.85
