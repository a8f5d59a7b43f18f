"""Training beyond classification (issue 25): the detector's target assignment and loss on
hand-made boxes, paired augmentation, and a segmenter and a detector trained, evaluated, exported
with int8 guarded by mIoU/mAP, and answered the same by predict and serve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.tf


def _points(size=(128, 128)):
    from edgecnn._keras_layers import anchor_points
    from edgecnn.train.architectures.anchorfree import STRIDES

    return anchor_points(size, STRIDES)


# ---------------------------------------------------------------------------------- assignment

def test_a_box_gets_its_positives_inside_it_and_the_rest_is_background():
    from edgecnn.train.detection import assign

    pts = _points()
    t = assign(pts, np.array([[2, 30, 40, 70, 90]], np.float32))
    pos = t[:, 4] >= 0
    assert 1 <= pos.sum() <= 9 and set(t[pos, 4]) == {2}
    assert np.all(t[pos, :4] == [30, 40, 70, 90])
    x, y = pts[pos, 0], pts[pos, 1]
    assert np.all((x > 30) & (x < 70) & (y > 40) & (y < 90))
    assert np.all(t[~pos, 4] == -1)


def test_no_boxes_is_all_background():
    from edgecnn.train.detection import assign

    assert np.all(assign(_points(), np.zeros((0, 5), np.float32))[:, 4] == -1)


def test_a_box_too_small_to_hold_a_point_gets_the_nearest_point_of_the_finest_level():
    from edgecnn.train.detection import assign

    pts = _points()
    t = assign(pts, np.array([[1, 9, 9, 11, 11]], np.float32))  # 2x2 px, between the stride-8 centres 4 and 12
    pos = np.flatnonzero(t[:, 4] >= 0)
    assert len(pos) == 1 and pts[pos[0], 2] == 8
    assert np.hypot(pts[pos[0], 0] - 10, pts[pos[0], 1] - 10) == pytest.approx(np.hypot(2, 2))


def test_a_big_box_is_learned_on_the_coarse_levels_and_a_small_one_on_the_fine():
    from edgecnn.train.detection import assign

    pts = _points()
    big = assign(pts, np.array([[0, 8, 8, 120, 120]], np.float32))
    small = assign(pts, np.array([[0, 50, 50, 66, 66]], np.float32))
    assert pts[big[:, 4] >= 0, 2].mean() > 16 > pts[small[:, 4] >= 0, 2].mean()


def test_an_anchor_inside_two_boxes_goes_to_the_one_it_fits_and_both_boxes_keep_positives():
    from edgecnn.train.detection import assign

    pts = _points()
    boxes = np.array([[0, 10, 10, 110, 110], [1, 40, 40, 80, 80]], np.float32)
    t = assign(pts, boxes)
    assert {0, 1} <= set(t[:, 4].astype(int))
    inner = (t[:, 4] == 1)
    # the small box's positives sit on the fine levels and inside it
    assert np.all((pts[inner, 0] > 40) & (pts[inner, 0] < 80)) and pts[inner, 2].max() <= 16


# ---------------------------------------------------------------------------------- loss + decode

def _decoded(t: np.ndarray, classes: int, prob: float) -> np.ndarray:
    """A (1, 4 + C, A) prediction holding the targets' boxes (cx, cy, w, h) and ``prob`` for their class."""
    out = np.zeros((t.shape[0], 4 + classes), np.float32)
    pos = t[:, 4] >= 0
    out[:, :4] = [64, 64, 10, 10]
    out[pos, 0:2] = (t[pos, 0:2] + t[pos, 2:4]) / 2
    out[pos, 2:4] = t[pos, 2:4] - t[pos, 0:2]
    out[:, 4:] = 1e-3
    out[pos, 4 + t[pos, 4].astype(int)] = prob
    return out.T[None]


def test_the_loss_is_lowest_for_the_right_boxes_and_classes():
    from edgecnn.train.detection import DetectionLoss, assign

    t = assign(_points(), np.array([[1, 20, 30, 60, 90]], np.float32))[None]
    loss = DetectionLoss()
    right = float(loss(t, _decoded(t[0], 3, 0.99)))
    unsure = float(loss(t, _decoded(t[0], 3, 0.3)))
    shifted = _decoded(t[0], 3, 0.99)
    shifted[0, 0] += 15  # every box 15 px off
    wrong_class = _decoded(t[0], 3, 0.99)
    wrong_class[0, 4:] = wrong_class[0, [5, 6, 4]]  # the class scores rolled
    assert right < unsure and right < float(loss(t, shifted)) and right < float(loss(t, wrong_class))
    assert right < 0.2


def test_an_image_without_objects_costs_only_its_false_scores():
    from edgecnn.train.detection import DetectionLoss

    t = np.zeros((1, len(_points()), 5), np.float32)
    t[..., 4] = -1
    quiet, loud = _decoded(t[0], 2, 0.0), _decoded(t[0], 2, 0.0)
    loud[0, 4:] = 0.9
    # 336 anchors x 2 classes at 0.001: -log(0.999) each, summed over one "positive" (there are none)
    assert float(DetectionLoss()(t, quiet)) == pytest.approx(672 * -np.log(0.999), rel=1e-3)
    assert np.isfinite(float(DetectionLoss()(t, loud))) and float(DetectionLoss()(t, loud)) > 1000


def test_anchor_decode_puts_each_cell_at_its_anchor_point():
    import keras

    from edgecnn._keras_layers import AnchorDecode

    levels = [np.zeros((1, 128 // s, 128 // s, 6), np.float32) for s in (8, 16, 32)]
    out = np.asarray(AnchorDecode((8, 16, 32))([keras.ops.convert_to_tensor(v) for v in levels]))
    pts = _points()
    assert out.shape == (1, 6, len(pts))
    np.testing.assert_allclose(out[0, :2].T, pts[:, :2], atol=1e-4)
    np.testing.assert_allclose(out[0, 2], 2 * np.log(2) * pts[:, 2], rtol=1e-5)  # softplus(0) strides each side
    np.testing.assert_allclose(out[0, 4:], 0.5)


# ---------------------------------------------------------------------------------- augmentation

@pytest.mark.parametrize("seed", range(8))
def test_paired_augmentation_moves_mask_and_box_with_the_pixels(seed):
    from edgecnn.train.paired import PairedAugment, augment_pair

    img = np.zeros((64, 80, 3), np.uint8)
    img[10:30, 20:40] = 255
    mask = np.zeros((64, 80), np.uint8)
    mask[10:30, 20:40] = 2
    boxes = np.array([[2, 20, 10, 40, 30]], np.float32)
    out, m, b = augment_pair(img, np.random.default_rng(seed), PairedAugment(translate=0.05), mask=mask, boxes=boxes)
    ys, xs = np.nonzero(m == 2)
    yi, xi = np.nonzero(out[..., 0] > 128)
    assert set(np.unique(m)) <= {0, 2, 255}  # nearest: no class invented between 0 and 2; 255 the uncovered border
    np.testing.assert_allclose(b[0, 1:], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1.5)
    np.testing.assert_allclose(b[0, 1:], [xi.min(), yi.min(), xi.max() + 1, yi.max() + 1], atol=1.5)


def test_a_box_pushed_mostly_out_of_the_image_is_dropped():
    from edgecnn.train.paired import PairedAugment, augment_pair

    img = np.zeros((64, 64, 3), np.uint8)
    boxes = np.array([[0, 0, 0, 10, 10], [1, 20, 20, 44, 44]], np.float32)
    kept = [augment_pair(img, np.random.default_rng(s), PairedAugment(flip=False, scale=(1.0, 1.0), translate=0.3),
                         boxes=boxes)[2] for s in range(20)]
    assert any(len(k) == 1 and k[0, 0] == 1 for k in kept)  # the corner box left, the centre one stayed
    assert all(1 in k[:, 0] for k in kept)


def test_pixels_marked_255_count_for_nothing_in_the_scores():
    from edgecnn.train.task_eval import segmentation_metrics

    truth = np.array([[0, 1], [255, 255]], np.uint8)
    right = np.array([[0, 1], [1, 0]], np.uint8)  # wrong only where the truth says "ignore"
    m = segmentation_metrics([right], [truth], ["background", "thing"])
    assert m["miou"] == 1.0 and m["pixel_accuracy"] == 1.0


def test_a_voc_style_mask_with_255_borders_loads_and_trains(tmp_path):
    """Pascal VOC marks object borders 255: not a class index out of range, but pixels to ignore."""
    from PIL import Image

    from edgecnn.task_data import load_segmentation_folder

    for sub in ("images", "masks"):
        (tmp_path / "voc" / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(10):
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "voc" / "images" / f"{i}.png")
        mask = np.zeros((32, 32), np.uint8)
        mask[8:24, 8:24] = 1
        mask[7, 7:25] = 255
        Image.fromarray(mask).save(tmp_path / "voc" / "masks" / f"{i}.png")
    (tmp_path / "voc" / "classes.txt").write_text("background\nthing\n")
    data = load_segmentation_folder(tmp_path / "voc")
    assert data.class_names == ("background", "thing") and 255 in data.train.masks
    r = _cli("train", "--task", "segment", "--model", "unet_tiny", "--data", tmp_path / "voc", "--input-size", "32",
             "--epochs", "1", "--batch-size", "4", "--out", tmp_path / "run", "--quiet")
    assert r.exit_code == 0, r.output
    assert np.isfinite(json.loads((tmp_path / "run" / "history.json").read_text())["loss"][0])


def test_the_mobilenet_v2_segmenter_trains_its_encoder_from_scratch_and_freezes_given_weights(tmp_path):
    import keras

    from edgecnn.train.tasks import build_transfer_segmenter

    scratch, pre = build_transfer_segmenter("mobilenet_v2", 4, input_size=(64, 64), weights="none")
    encoder = scratch.get_layer("backbone")
    norms = [layer for layer in encoder.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert encoder.trainable and norms and {n.momentum for n in norms} == {0.9}  # follows a short run's weights
    assert scratch.output.shape[1:] == (64, 64, 4) and pre.mean == (127.5,) * 3  # MobileNetV2's own scaling
    weights = tmp_path / "mnv2_notop.weights.h5"
    keras.applications.MobileNetV2(input_shape=(64, 64, 3), include_top=False, weights=None).save_weights(weights)
    given, _ = build_transfer_segmenter("mobilenet_v2", 4, input_size=(64, 64), weights=str(weights))
    assert not given.get_layer("backbone").trainable


# ---------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from edgecnn.synthetic_scenes import make_scenes

    return make_scenes(tmp_path_factory.mktemp("scenes"), counts={"train": 48, "val": 8, "test": 12}, size=64, seed=3)


def _cli(*args: str):
    from edgecnn.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _train(scenes: Path, out: Path, task: str, model: str, epochs: int = 2, lr: float = 0.001):
    r = _cli("train", "--task", task, "--model", model, "--data", scenes / task, "--input-size", "64",
             "--epochs", epochs, "--batch-size", "8", "--lr", lr, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def seg_run(scenes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "unet"
    _train(scenes, out, "segment", "unet_tiny")
    return out


@pytest.fixture(scope="module")
def det_run(scenes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "det"
    _train(scenes, out, "detect", "anchorfree_tiny", epochs=12, lr=0.003)  # boxes over 0.25 to compare
    return out


def test_a_segmentation_run_has_a_segment_card_and_scores(seg_run):
    from edgecnn.card import ModelCard

    card = ModelCard.load(seg_run)
    assert card.task == "segment" and card.output_kind == "logits" and card.input_size == (64, 64)
    assert card.class_names == ("background", "circle", "square", "triangle")
    metrics = json.loads((seg_run / "metrics.json").read_text())
    assert 0 <= metrics["miou"] <= 1 and 0 <= metrics["pixel_accuracy"] <= 1 and metrics["epochs"] == 2
    assert set(metrics["class_iou"]) <= set(card.class_names) and metrics["images"] == 12
    assert (seg_run / "curves.png").is_file() and len(json.loads((seg_run / "history.json").read_text())["loss"]) == 2


def test_a_detection_run_has_a_yolov8_card_and_map(det_run):
    from edgecnn.card import ModelCard

    card = ModelCard.load(det_run)
    assert card.task == "detect" and card.output_kind == "yolov8" and card.class_names == ("circle", "square",
                                                                                           "triangle")
    metrics = json.loads((det_run / "metrics.json").read_text())
    assert 0 <= metrics["map50_95"] <= metrics["map50"] <= 1 and metrics["objects"] > 0 and metrics["epochs"] == 12


def test_evaluate_scores_the_run_and_its_onnx_export_alike(seg_run, det_run, scenes, tmp_path):
    for run, task, key in ((seg_run, "segment", "miou"), (det_run, "detect", "map50")):
        r = _cli("export", run, "--out", tmp_path / task)
        assert r.exit_code == 0, r.output
        keras_eval = _cli("evaluate", run, "--json")
        onnx_eval = _cli("evaluate", tmp_path / task / "model.onnx", "--data", scenes / task, "--json")
        assert keras_eval.exit_code == 0 and onnx_eval.exit_code == 0, keras_eval.output + onnx_eval.output
        a = json.loads(keras_eval.stdout[:keras_eval.stdout.rindex("}") + 1])
        b = json.loads(onnx_eval.stdout[:onnx_eval.stdout.rindex("}") + 1])
        assert a[key] == pytest.approx(b[key], abs=0.02), (task, a, b)


def test_int8_export_is_guarded_by_miou_and_map(seg_run, det_run, tmp_path):
    for run, task, what in ((seg_run, "segment", "mIoU"), (det_run, "detect", "mAP@0.5")):
        r = _cli("export", run, "-q", "int8", "--max-accuracy-drop", "100", "--out", tmp_path / task)
        assert r.exit_code == 0, r.output
        report = (tmp_path / task / "export_report.md").read_text()
        assert what in report, report[:2000]


def test_predict_save_draws_the_mask_with_a_legend_and_the_boxes(seg_run, det_run, scenes, tmp_path):
    image = sorted((scenes / "segment" / "test" / "images").iterdir())[0]
    for run, task in ((seg_run, "segment"), (det_run, "detect")):
        r = _cli("export", run, "--out", tmp_path / task)
        assert r.exit_code == 0, r.output
        r = _cli("predict", tmp_path / task / "model.onnx", image, "--save", tmp_path / f"{task}_out", "--json")
        assert r.exit_code == 0, r.output
        saved = list((tmp_path / f"{task}_out").iterdir())
        assert len(saved) == 1 and saved[0].suffix == ".png"


def test_errors_are_one_line(scenes, tmp_path):
    cases = [
        (["train", "--task", "detect", "--model", "unet_tiny", "--data", scenes / "detect"], "is a segment model"),
        (["train", "--task", "segment", "--model", "unet_tiny", "--data", tmp_path / "none"], "--data DIR"),
        (["train", "--task", "detect", "--model", "anchorfree_tiny", "--data", scenes / "segment"], "no labels/"),
        (["train", "--task", "detect", "--backbone", "mobilenet_v2", "--data", scenes / "detect"], "detectors train"),
        (["train", "--task", "segment", "--model", "unet_tiny", "--input-size", "62", "--data", scenes / "segment"],
         "multiples of 4"),
    ]
    for args, needle in cases:
        r = _cli(*args, "--out", tmp_path / "run", "--epochs", "1")
        assert r.exit_code != 0 and needle in r.output, (args, r.output)
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not (tmp_path / "run").exists()


def test_serve_answers_with_the_boxes_and_masks_predict_gives(seg_run, det_run, scenes, tmp_path):
    """A model trained here, exported, and deployed through `edgecnn serve` answers as `edgecnn predict`."""
    import base64
    import io

    import httpx
    from PIL import Image

    from edgecnn.runtime import Segmenter
    from tests.serve.conftest import running_server

    images = sorted((scenes / "detect" / "test" / "images").iterdir())[:6]
    for run, task in ((seg_run, "segment"), (det_run, "detect")):
        model = tmp_path / task / "model.onnx"
        assert _cli("export", run, "--out", model.parent).exit_code == 0
        r = _cli("predict", model, *images, "--json")
        assert r.exit_code == 0, r.output
        local = json.loads(r.stdout[:r.stdout.rindex("}") + 1])["predictions"]
        if task == "detect":
            assert sum(len(p["detections"]) for p in local) > 0
        with running_server(model) as srv, httpx.Client(base_url=srv.url) as c:
            served = [c.post(f"/v1/models/{model.stem}:predict", content=f.read_bytes(), params={"mask": "true"},
                             headers={"Content-Type": "image/png"}).json()["predictions"][0] for f in images]
        for mine, theirs, f in zip(local, served, images):
            if task == "detect":
                assert [d["label"] for d in theirs["detections"]] == [d["label"] for d in mine["detections"]]
                for a, b in zip(theirs["detections"], mine["detections"]):
                    np.testing.assert_allclose(a["box"], b["box"], atol=0.01)
                    assert a["score"] == pytest.approx(b["score"], abs=1e-5)
            else:
                assert theirs["segmentation"]["classes"] == mine["segmentation"]["classes"]
                mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(theirs["segmentation"]["mask_png"]))))
                np.testing.assert_array_equal(mask, Segmenter(model).predict([f])[0].mask)


def test_a_killed_detection_run_resumes_at_the_next_epoch(scenes, tmp_path):
    import subprocess
    import sys

    from tests.train.killing import ENV, kill_after_first_epoch, shorten_to

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgecnn.cli", "train", "--task", "detect", "--model", "anchorfree_tiny", "--data",
           str(scenes / "detect"), "--input-size", "64", "--epochs", "200", "--batch-size", "8", "--out", str(run),
           "--quiet"]
    done = kill_after_first_epoch(cmd, run)
    assert 1 <= done < 200, "the process was killed mid-training"
    shorten_to(run, done + 1)
    out = subprocess.run([sys.executable, "-m", "edgecnn.cli", "train", "--resume", str(run), "--quiet"],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((run / "history.json").read_text())["epoch"] == list(range(1, done + 2))
    assert f"Epoch {done + 1}/{done + 1}" in out.stdout and "mAP@0.5" in out.stdout
    assert json.loads((run / "card.json").read_text())["task"] == "detect"
