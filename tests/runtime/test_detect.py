"""Detection head: box geometry, NMS, YOLO decoding, letterbox mapping, mAP, and the real
Ultralytics export in tests/data/foreign (tools/make_foreign_models.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecnn.errors import ArtifactError, InputError
from edgecnn.runtime.core import InferenceModel
from edgecnn.runtime.heads import (
    Detection,
    Detections,
    Detector,
    average_precision,
    box_iou,
    decode_yolo,
    detection_map,
    nms,
    postprocess_yolo,
    select_boxes,
    yolo_layout,
)
from edgecnn.runtime.preprocess import FitInfo, Fitting, fit_image

FOREIGN = Path(__file__).parents[1] / "data" / "foreign"
YOLOV8 = FOREIGN / "yolov8_shapes.onnx"
YOLOV5 = FOREIGN / "yolov5layout_shapes.onnx"
RED, GREEN, BLUE = (220, 40, 40), (40, 200, 60), (50, 70, 230)


def det(index: int, box, score: float = 0.9) -> Detection:
    return Detection(str(index), index, score, tuple(float(v) for v in box))


# ------------------------------------------------------------------------------ pure functions
@pytest.mark.parametrize("a, b, expected", [
    ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
    ([0, 0, 10, 10], [5, 5, 15, 15], 25 / 175),
    ([0, 0, 10, 10], [0, 0, 10, 5], 0.5),
    ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # touching edges
    ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),
    ([5, 5, 5, 9], [0, 0, 10, 10], 0.0),  # zero width
])
def test_box_iou(a, b, expected):
    assert box_iou(np.array([a]), np.array([b]))[0, 0] == pytest.approx(expected)


def test_box_iou_is_pairwise():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]])
    b = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [100, 100, 110, 110]])
    assert box_iou(a, b) == pytest.approx(np.array([[1, 1 / 7, 0], [1 / 7, 1, 0]]))


@pytest.mark.parametrize("boxes, scores, classes, iou, kept", [
    # a near-duplicate (IoU 0.81) of the same class goes
    ([[0, 0, 10, 10], [0, 0, 9, 9]], [0.8, 0.9], [0, 0], 0.45, [1]),
    # ... of another class stays (class-aware)
    ([[0, 0, 10, 10], [0, 0, 9, 9]], [0.8, 0.9], [0, 1], 0.45, [1, 0]),
    # ... and without classes it goes
    ([[0, 0, 10, 10], [0, 0, 9, 9]], [0.8, 0.9], None, 0.45, [1]),
    # IoU exactly at the threshold is kept, above it is not
    ([[0, 0, 10, 10], [0, 0, 10, 5]], [0.9, 0.8], [0, 0], 0.5, [0, 1]),
    ([[0, 0, 10, 10], [0, 0, 10, 5]], [0.9, 0.8], [0, 0], 0.49, [0]),
    # a chain: 2 overlaps 1 and 3, 1 and 3 are apart; 1 wins, drops 2, so 3 survives
    ([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]], [0.9, 0.8, 0.7], [0, 0, 0], 0.3, [0, 2]),
    # disjoint boxes come back best score first
    ([[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]], [0.2, 0.9, 0.5], [0, 0, 0], 0.45, [1, 2, 0]),
    (np.zeros((0, 4)), [], [], 0.45, []),
])
def test_nms(boxes, scores, classes, iou, kept):
    assert nms(np.array(boxes, float), np.array(scores, float), iou, classes).tolist() == kept


def test_nms_stops_after_max_keep():
    boxes = np.array([[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10], [0, 0, 1, 0.9]], float)
    scores = np.array([0.2, 0.9, 0.5, 0.95])
    assert nms(boxes, scores, 0.45, max_keep=2).tolist() == [3, 1]
    assert nms(boxes, scores, 0.45).tolist() == [3, 1, 2]  # box 0 is suppressed by box 3


def test_nms_class_offsets_work_for_large_coordinates():
    boxes = np.array([[3000, 3000, 4000, 4000], [3000, 3000, 4000, 4000]], float)
    assert sorted(nms(boxes, np.array([0.9, 0.8]), 0.5, np.array([0, 1])).tolist()) == [0, 1]


def test_decode_yolov8_and_yolov5_hand_case():
    # one anchor: centre (50, 40), size 20x10; class scores 0.1 and 0.9
    v8 = np.array([[[50.0], [40.0], [20.0], [10.0], [0.1], [0.9]]])  # [1, 4 + 2, 1]
    boxes, scores = decode_yolo(v8, "yolov8")
    assert boxes.tolist() == [[[40.0, 35.0, 60.0, 45.0]]]
    assert scores == pytest.approx(np.array([[[0.1, 0.9]]]))
    v5 = np.array([[[50.0, 40.0, 20.0, 10.0, 0.5, 0.2, 0.8]]])  # [1, 1, 5 + 2], objectness 0.5
    boxes, scores = decode_yolo(v5, "yolov5")
    assert boxes.tolist() == [[[40.0, 35.0, 60.0, 45.0]]]
    assert scores == pytest.approx(np.array([[[0.1, 0.4]]]))


def test_decode_yolox_grid_hand_case():
    """YOLOX's raw outputs, decoded as its demo_postprocess: on a 64x32 input, stride 8 is an 8x4
    grid (row by row), then 4x2 at 16 and 2x1 at 32: 32 + 8 + 2 = 42 predictions."""
    out = np.zeros((1, 42, 6), np.float32)
    out[0, 9] = [0.5, 0.25, np.log(2.0), 0.0, 0.8, 0.5]   # stride 8, cell x=1, y=1 (row 1 starts at 8)
    out[0, 32 + 8 + 1] = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]  # stride 32, cell x=1, y=0
    boxes, scores = decode_yolo(out, "yolox", (32, 64))
    # (x + grid) * stride = (1.5 * 8, 1.25 * 8) = (12, 10); size exp(log 2) * 8 = 16, exp(0) * 8 = 8
    assert boxes[0, 9].tolist() == [4.0, 6.0, 20.0, 14.0]
    assert boxes[0, 41].tolist() == [16.0, -16.0, 48.0, 16.0]  # centre (32, 0), 32x32
    assert scores[0, 9, 0] == pytest.approx(0.4)
    with pytest.raises(ArtifactError, match="does not fit a 64x64 input .* pass the --input-size"):
        decode_yolo(out, "yolox", (64, 64))


@pytest.mark.parametrize("shape, kind", [
    ([1, 4, 100], "yolov8"),   # boxes but no class scores
    ([1, 100, 5], "yolov5"),   # boxes and objectness, no class scores
    ([100, 7], "yolov8"),      # not 3-D
])
def test_decode_rejects_outputs_without_class_scores(shape, kind):
    with pytest.raises(ArtifactError, match=kind):
        decode_yolo(np.zeros(shape), kind)


@pytest.mark.parametrize("shape, classes, expected", [
    ([1, 7, 525], 3, "yolov8"),
    ([1, 525, 8], 3, "yolov5"),
    ([1, 84, 8400], 80, "yolov8"),
    ([1, 25200, 85], 80, "yolov5"),
    ([1, 8, 7], 3, None),  # neither: 8 != 4 + 3 and 7 != 5 + 3
    ([1, 7, 8], 3, None),  # 7 = 4 + 3 and 8 = 5 + 3: ambiguous
    (["batch", 7, "anchors"], 3, "yolov8"),
    ([1, 2100], 3, None),
])
def test_yolo_layout(shape, classes, expected):
    assert yolo_layout(shape, classes) == expected


@pytest.mark.parametrize("conf, max_det, expected", [
    (0.5, 10, [0.9, 0.6]),  # 0.5 itself is dropped: kept means above conf
    (0.0, 10, [0.9, 0.6, 0.5, 0.1]),
    (0.0, 2, [0.9, 0.6]),
])
def test_select_boxes_threshold_and_max_det(conf, max_det, expected):
    boxes = np.array([[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21], [30, 30, 31, 31]], float)
    scores = np.array([[0.9, 0.0], [0.1, 0.6], [0.5, 0.2], [0.1, 0.05]])
    _, kept, cls = select_boxes(boxes, scores, conf=conf, iou=0.45, max_det=max_det)
    assert kept.tolist() == pytest.approx(expected)
    assert cls.tolist() == [0, 1, 0, 0][:len(expected)]


def test_select_boxes_drops_non_finite():
    boxes = np.array([[0, 0, 1, 1], [np.nan, 0, 1, 1]], float)
    _, kept, _ = select_boxes(boxes, np.array([[np.nan], [0.9]]), conf=0.1, iou=0.5, max_det=5)
    assert kept.size == 0


# --------------------------------------------------------------------------- letterbox mapping
@pytest.mark.parametrize("orig, size, scale, pad", [
    ((200, 100), (160, 160), 0.8, (0, 40)),   # wide: padded top and bottom
    ((100, 200), (160, 160), 0.8, (40, 0)),   # tall: padded left and right
    ((80, 80), (160, 160), 2.0, (0, 0)),      # upscaled, no padding
    ((320, 160), (160, 320), 1.0, (0, 0)),    # same aspect as a non-square input
])
def test_letterbox_geometry(orig, size, scale, pad):
    img = Image.new("RGB", orig, (10, 200, 30))
    pixels, fit = fit_image(img, size, fitting=Fitting(resize="letterbox", pad_value=114))
    assert pixels.shape == (*size, 3) and pixels.dtype == np.uint8
    assert (fit.width, fit.height) == orig
    assert (fit.scale_x, fit.scale_y) == pytest.approx((scale, scale))
    assert (fit.pad_x, fit.pad_y) == pad
    if pad[1]:
        assert (pixels[:pad[1]] == 114).all() and (pixels[-pad[1]:] == 114).all()
    if pad[0]:
        assert (pixels[:, :pad[0]] == 114).all() and (pixels[:, -pad[0]:] == 114).all()
    inner = pixels[pad[1]:size[0] - pad[1], pad[0]:size[1] - pad[0]]
    assert (inner == (10, 200, 30)).all()


def test_postprocess_maps_boxes_back_through_the_letterbox():
    # 200x100 image in a 160x160 input: scale 0.8, 40 px of padding at the top
    fit = FitInfo(200, 100, 0.8, 0.8, 0.0, 40.0)
    out = np.zeros((1, 4 + 2, 1), np.float32)
    out[0, :4, 0] = [48, 68, 64, 40]  # centre-size of (16, 48, 80, 88) on the input
    out[0, 5, 0] = 0.9
    (result,) = postprocess_yolo(out, "yolov8", [fit], ["a", "b"], input_size=(160, 160))
    assert [d.label for d in result] == ["b"]
    assert result[0].box == pytest.approx((20.0, 10.0, 100.0, 60.0))
    assert (result.width, result.height) == (200, 100)


def test_postprocess_scales_normalized_boxes_and_clips_to_the_image():
    fit = FitInfo(160, 160, 1.0, 1.0)
    out = np.zeros((1, 5, 2), np.float32)
    out[0, :, 0] = [0.5, 0.5, 0.25, 0.5, 0.8]     # normalized (0-1) centre-size
    out[0, :, 1] = [0.95, 0.5, 0.2, 0.2, 0.7]      # reaches past the right edge
    (result,) = postprocess_yolo(out, "yolov8", [fit], ["x"], input_size=(160, 160), iou=0.45)
    assert result[0].box == pytest.approx((60.0, 40.0, 100.0, 120.0))
    assert result[1].box == pytest.approx((136.0, 64.0, 160.0, 96.0))  # x2 clipped from 168 to 160


@pytest.mark.parametrize("orig_size, box", [
    ((333, 211), (40, 30, 200, 150)),
    ((211, 333), (17, 101, 190, 320)),
    ((64, 48), (5, 5, 40, 30)),         # upscaled
    ((1000, 120), (100, 10, 900, 110)),  # very wide
])
def test_box_round_trip_through_letterbox_within_one_pixel(orig_size, box):
    img = Image.new("RGB", orig_size, (128, 128, 128))
    img.paste((255, 0, 0), box)  # pixels box[0]..box[2]-1, box[1]..box[3]-1
    pixels, fit = fit_image(img, (160, 160), fitting=Fitting(resize="letterbox", pad_value=114))
    # the exact image of the box on the input maps back exactly
    forward = np.array([[box[0] * fit.scale_x + fit.pad_x, box[1] * fit.scale_y + fit.pad_y,
                         box[2] * fit.scale_x + fit.pad_x, box[3] * fit.scale_y + fit.pad_y]])
    assert fit.to_original(forward)[0] == pytest.approx(np.array(box, float), abs=1e-3)
    # the box as the model sees it (red pixels of the letterboxed input) maps back within one
    # input pixel, which is one original pixel or less when the image was not shrunk
    red = (pixels[..., 0] > 190) & (pixels[..., 1] < 60)
    ys, xs = np.nonzero(red)
    seen = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float)
    one_input_px = 1.0 / min(fit.scale_x, fit.scale_y, 1.0)
    assert fit.to_original(seen)[0] == pytest.approx(np.array(box, float), abs=one_input_px + 1e-6)


def test_thresholds_out_of_range_are_input_errors():
    fit = FitInfo(10, 10, 1.0, 1.0)
    for kwargs, flag in (({"conf": 1.5}, "--conf"), ({"iou": -0.1}, "--iou"), ({"max_det": 0}, "--max-det")):
        with pytest.raises(InputError, match=flag):
            postprocess_yolo(np.zeros((1, 5, 1)), "yolov8", [fit], ["x"], input_size=(10, 10), **kwargs)


def test_postprocess_refuses_a_class_count_other_than_the_labels():
    with pytest.raises(ArtifactError, match="2 classes but the card has 3 labels"):
        postprocess_yolo(np.zeros((1, 6, 4)), "yolov8", [FitInfo(8, 8, 1, 1)], ["a", "b", "c"], input_size=(8, 8))


# ------------------------------------------------------------------------------------ metrics
@pytest.mark.parametrize("recall, precision, expected", [
    ([1.0], [1.0], 1.0),
    ([0.5, 1.0], [1.0, 1.0], 1.0),
    ([0.0, 1.0], [0.0, 0.5], 0.5),
    ([0.2, 0.4, 0.4, 0.6], [1.0, 1.0, 0.67, 0.75], 0.2 + 0.2 + 0.2 * 0.75),  # envelope lifts 0.67 to 0.75
    ([], [], 0.0),
])
def test_average_precision_all_point(recall, precision, expected):
    assert average_precision(np.array(recall), np.array(precision)) == pytest.approx(expected)


A, B, FAR = (0, 0, 10, 10), (20, 20, 30, 30), (50, 50, 60, 60)


@pytest.mark.parametrize("candidates, references, expected", [
    ([[det(0, A), det(1, B)]], [[det(0, A), det(1, B)]], 1.0),                    # identical
    ([[]], [[]], 1.0),                                                              # both see nothing
    ([[]], [[det(0, A)]], 0.0),                                                     # missed
    ([[det(0, FAR, 0.9), det(0, A, 0.8)]], [[det(0, A)]], 0.5),                     # FP ranked above the TP
    ([[det(0, A, 0.9), det(0, FAR, 0.8)]], [[det(0, A)]], 1.0),                     # FP ranked below the TP
    ([[det(0, A, 0.9), det(0, A, 0.8)]], [[det(0, A)]], 1.0),                       # duplicate after the match
    ([[det(0, A)]], [[det(0, A), det(0, B)]], 0.5),                                 # half recalled
    ([[det(0, A), det(1, B)]], [[det(0, A)]], 0.5),                                 # a class only int8 sees: AP 0
    ([[det(1, A)]], [[det(0, A)]], 0.0),                                            # right box, wrong class
    ([[det(0, (0, 0, 10, 4.9))]], [[det(0, A)]], 0.0),                              # IoU 0.49 < 0.5
    ([[det(0, (0, 0, 10, 5))]], [[det(0, A)]], 1.0),                                # IoU 0.5 counts
    ([[det(0, A)], [det(0, A)]], [[det(0, A)], [det(0, B)]], 0.5),                  # boxes match per image
])
def test_detection_map_hand_cases(candidates, references, expected):
    assert detection_map(candidates, references).value == pytest.approx(expected)


def test_detection_map_counts_and_per_class():
    result = detection_map([[det(0, A), det(1, B)]], [[det(0, A)]])
    assert result.per_class == {0: 1.0, 1: 0.0}
    assert (result.references, result.candidates, result.iou_threshold) == (1, 2, 0.5)


def test_detection_map_needs_the_same_images():
    with pytest.raises(InputError, match="same images"):
        detection_map([[], []], [[]])


# --------------------------------------------------------------- the real Ultralytics export
def scene(size: tuple[int, int], rects: list[tuple[tuple[int, int, int], tuple[int, int, int, int]]]) -> Image.Image:
    """A flat grey image (width, height) with filled rectangles (colour, (x1, y1, x2, y2))."""
    img = Image.new("RGB", size, (120, 120, 120))
    for colour, box in rects:
        img.paste(colour, box)
    return img


SCENE = [(RED, (30, 40, 110, 120)), (BLUE, (170, 20, 260, 90))]


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(YOLOV8)


def test_ultralytics_metadata_becomes_the_card():
    model = InferenceModel(YOLOV8)
    card = model.card
    assert card.task == "detect" and card.output_kind == "yolov8"
    assert card.class_names == ("red", "green", "blue")
    assert card.input_size == (160, 160) and card.stride == 32
    assert (card.resize, card.pad_value, card.layout, card.channels) == ("letterbox", 114, "nchw", 3)
    assert card.mean == (0.0, 0.0, 0.0) and card.std == (255.0, 255.0, 255.0)


def test_detector_finds_the_rectangles_on_the_original_image(detector):
    img = scene((300, 150), SCENE)  # not square: letterboxed with 40 px bands
    (result,) = detector.predict(img)
    assert isinstance(result, Detections) and (result.width, result.height) == (300, 150)
    found = {d.label: d for d in result}
    assert set(found) == {"red", "blue"}
    for colour, box in SCENE:
        label = "red" if colour == RED else "blue"
        assert box_iou(np.array([found[label].box]), np.array([box]))[0, 0] > 0.8
    for d in result:
        x1, y1, x2, y2 = d.box
        assert 0 <= x1 < x2 <= 300 and 0 <= y1 < y2 <= 150 and 0.25 < d.score <= 1.0
    assert [d.score for d in result] == sorted((d.score for d in result), reverse=True)


def test_detector_is_deterministic_and_batches_like_single_images(detector):
    images = [scene((300, 150), SCENE), scene((160, 160), [(GREEN, (30, 30, 90, 100))]), scene((90, 200), [])]
    batch = detector.predict(images)  # the model's batch is fixed at 1: the core runs it in chunks
    assert len(batch) == 3
    singles = [detector.predict(im)[0] for im in images]
    assert [r.to_dict() for r in batch] == [r.to_dict() for r in singles]
    assert [r.to_dict() for r in detector.predict(images)] == [r.to_dict() for r in batch]
    assert [d.label for d in batch[1]] == ["green"]
    assert len(batch[2]) == 0  # an empty scene


def test_yolov5_layout_decodes_to_the_same_boxes(detector):
    v5 = Detector(YOLOV5)
    assert v5.output_kind == "yolov5"
    img = scene((300, 150), SCENE)
    assert [r.to_dict() for r in v5.predict(img, conf=0.1)] == [r.to_dict() for r in detector.predict(img, conf=0.1)]


def test_detector_thresholds(detector):
    img = scene((300, 150), SCENE)
    assert len(detector.predict(img, conf=0.999)[0]) == 0
    assert len(detector.predict(img, conf=0.01, max_det=1)[0]) == 1
    with pytest.raises(InputError, match="--conf"):
        detector.predict(img, conf=2)


def test_detector_postprocess_ignores_other_heads_parameters(detector):
    pixels, fits = detector.load(scene((300, 150), SCENE))
    from edgecnn.runtime.preprocess import normalize_batch

    outputs = detector.run_all(normalize_batch(pixels, detector.card))
    results = detector.postprocess(outputs, fits, top_k=5)
    assert results[0].to_dict() == detector.predict(scene((300, 150), SCENE))[0].to_dict()


def test_annotate_draws_the_boxes_on_the_original_image(detector):
    img = scene((300, 150), SCENE)
    result = detector.predict(img)[0]
    out = detector.annotate(img, result)
    assert out.size == img.size and out.mode == "RGB"
    diff = np.any(np.asarray(out) != np.asarray(img), axis=2)
    x1, y1, _, y2 = (round(v) for v in result[0].box)
    assert diff[min(y1 + 5, y2 - 1), max(x1 - 1, 0):x1 + 2].any()  # the left edge of the best box is drawn
    assert not diff[140:, 280:].any()  # far from every box, nothing changes


def test_detector_refuses_other_tasks():
    with pytest.raises(ArtifactError, match="not a detector"):
        Detector(FOREIGN / "lraspp_shapes.onnx")


def test_detection_map_of_a_model_against_itself_is_one(detector):
    images = [scene((300, 150), SCENE), scene((160, 160), [(GREEN, (30, 30, 90, 100))])]
    results = detector.predict(images, conf=0.1)
    assert detection_map(results, results).value == 1.0
    shifted = [Detections(tuple(Detection(d.label, d.index, d.score, (d.box[0] + 30, d.box[1], d.box[2] + 30,
    d.box[3])) for d in r), r.width, r.height)
               for r in results]
    assert detection_map(shifted, results).value < 1.0


def test_load_model_picks_the_detector_for_both_layouts():
    from edgecnn.runtime import load_model

    for path, kind in ((YOLOV8, "yolov8"), (YOLOV5, "yolov5")):
        model = load_model(path)
        assert isinstance(model, Detector) and model.output_kind == kind
        assert {d.label for d in model.predict(scene((300, 150), SCENE))[0]} == {"red", "blue"}
