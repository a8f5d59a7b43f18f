"""Detection head: YOLO outputs -> boxes on the original image, in numpy (the outputs of a
detector with NMS in its graph are read by :mod:`edgecnn.runtime.heads.graph_nms`).

Two output layouts are decoded (the card's ``output_kind``):

- ``yolov8``: ``[N, 4 + C, A]``, as YOLOv8/YOLO11 export it: per anchor ``cx, cy, w, h`` then
  one score per class (already sigmoid-activated);
- ``yolov5``: ``[N, A, 5 + C]``: ``cx, cy, w, h``, an objectness score, then class scores; the
  score of a class is objectness x class score;
- ``yolox``: ``[N, A, 5 + C]`` as YOLOX exports it (``decode_in_inference=False``): per cell of
  the stride-8, 16 and 32 grids (row by row, finest first), the centre as an offset in cells and
  the size as a log in strides, then objectness and class scores (sigmoid-activated); decoded as
  YOLOX's ``demo_postprocess`` does (``(xy + grid) * stride``, ``exp(wh) * stride``).

Boxes are in model-input pixels (a letterboxed image); Ultralytics' TensorFlow-family exports
give them normalized to 0-1 instead, which :func:`postprocess_yolo` recognises and scales. Each
anchor keeps its best class (as Ultralytics does by default), anchors at or under ``conf`` are
dropped, the rest go through class-aware NMS, and the kept boxes are mapped back to the original
image through the letterbox's :class:`~edgecnn.runtime.preprocess.FitInfo`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from edgecnn.errors import ArtifactError, InputError
from edgecnn.nms_layouts import NMS_KINDS, NmsOutputs
from edgecnn.runtime.core import InferenceModel
from edgecnn.runtime.heads.boxes import nms, xywh_to_xyxy
from edgecnn.runtime.preprocess import FitInfo, ImageLike, decode_image

log = logging.getLogger(__name__)

__all__ = ["Detection", "Detections", "Detector", "box_of", "decode_yolo", "yolo_layout", "output_layout",
           "select_boxes", "postprocess_yolo", "MAX_NMS"]

_YOLOX_STRIDES = (8, 16, 32)
MAX_NMS = 30_000  # candidates going into NMS at most (the best-scoring ones), as Ultralytics caps them


@dataclass(frozen=True)
class Detection:
    """One detected object; ``box`` is ``(x1, y1, x2, y2)`` in pixels of the original image."""

    label: str
    index: int
    score: float
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "score": self.score,  # by hand: asdict is slow
                "box": [round(v, 2) for v in self.box]}


def box_of(row: Sequence[Any]) -> tuple[float, float, float, float]:
    """One ``(x1, y1, x2, y2)`` box row (numpy values) as a :class:`Detection`'s four floats."""
    x1, y1, x2, y2 = (float(v) for v in row)
    return x1, y1, x2, y2


@dataclass(frozen=True)
class Detections:
    """The detections of one image, best score first; iterates, indexes and counts like a list."""

    detections: tuple[Detection, ...]
    width: int  # the original image's size
    height: int

    def __iter__(self) -> Iterator[Detection]:
        return iter(self.detections)

    def __len__(self) -> int:
        return len(self.detections)

    def __getitem__(self, i: int) -> Detection:
        return self.detections[i]

    def to_dict(self) -> dict[str, Any]:
        return {"detections": [d.to_dict() for d in self.detections], "image_size": [self.width, self.height]}


def yolo_layout(shape: Sequence[Any], num_classes: int) -> str | None:
    """``yolov8`` or ``yolov5`` when an output ``shape`` fits exactly one of them for ``num_classes``
    (a yolox output has yolov5's shape: only its card, or the anchor count when the card is
    inferred, tells it apart; see :func:`output_layout`)."""
    if len(shape) != 3 or num_classes < 1:
        return None
    fits = [kind for kind, dim, extra in (("yolov8", shape[1], 4), ("yolov5", shape[2], 5))
            if isinstance(dim, int) and dim == num_classes + extra]
    return fits[0] if len(fits) == 1 else None


def output_layout(card_kind: str, shape: Sequence[Any], num_classes: int) -> str:
    """The layout to decode an output of ``shape`` with: ``yolox`` or a layout with NMS in the graph
    when the card says so (a yolox output has yolov5's shape, an end2end one may too), else the layout
    the shape fits, else the card's."""
    if card_kind == "yolox" or card_kind in NMS_KINDS:
        return card_kind
    return yolo_layout(shape, num_classes) or card_kind


def _yolox_grid(anchors: int, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """YOLOX's cell offsets (A, 2) and strides (A, 1) for ``input_size``, finest grid first."""
    h, w = input_size
    grids, strides = [], []
    for s in _YOLOX_STRIDES:
        ys, xs = np.meshgrid(np.arange(h // s), np.arange(w // s), indexing="ij")
        grids.append(np.stack([xs, ys], axis=-1).reshape(-1, 2))
        strides.append(np.full((grids[-1].shape[0], 1), s))
    grid, stride = np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)
    if len(grid) != anchors:
        raise ArtifactError(f"A yolox output with {anchors} predictions does not fit a {h}x{w} input ({len(grid)} grid "
                            f"cells at strides {', '.join(map(str, _YOLOX_STRIDES))}); pass the --input-size it was "
                            "exported at.")
    return grid, stride


def decode_yolo(output: np.ndarray, kind: str,
                input_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A YOLO output batch -> ``x1, y1, x2, y2`` boxes (N, A, 4) and class scores (N, A, C).

    ``input_size`` (height, width) is needed for ``yolox``, whose grids it sets.

    Raises:
        ArtifactError: when the output is not 3-D or has no class scores in that layout.
    """
    out = np.asarray(output, dtype=np.float32)
    if kind not in ("yolov8", "yolov5", "yolox"):
        raise ArtifactError(f"Unknown detection output kind {kind!r}; expected yolov8, yolov5 or yolox.")
    extra = 4 if kind == "yolov8" else 5
    if out.ndim != 3 or (out.shape[1] if kind == "yolov8" else out.shape[2]) <= extra:
        want = "[N, 4 + classes, anchors]" if kind == "yolov8" else "[N, anchors, 5 + classes]"
        raise ArtifactError(f"A {kind} detector output has shape {want}; got {list(out.shape)}.")
    if kind == "yolov8":
        out = out.transpose(0, 2, 1)
        return xywh_to_xyxy(out[..., :4]), out[..., 4:]
    scores = out[..., 5:] * out[..., 4:5]
    if kind == "yolox":
        if input_size is None:
            raise ArtifactError("Decoding a yolox output needs the model's input size.")
        grid, stride = _yolox_grid(out.shape[1], input_size)
        with np.errstate(over="ignore"):  # a huge log size is an infinite box, dropped as not finite
            xywh = np.concatenate([(out[..., :2] + grid) * stride, np.exp(out[..., 2:4]) * stride], axis=-1)
        return xywh_to_xyxy(xywh), scores
    return xywh_to_xyxy(out[..., :4]), scores


def select_boxes(boxes: np.ndarray, scores: np.ndarray, *, conf: float, iou: float, max_det: int,
                 max_nms: int = MAX_NMS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's (A, 4) boxes and (A, C) scores -> kept boxes, scores and class indices.

    Each anchor takes its best class; anchors scoring at or under ``conf`` (or not finite) are
    dropped; at most ``max_nms`` best go into class-aware NMS; at most ``max_det`` come out.
    """
    cls = scores.argmax(axis=1)
    best = np.take_along_axis(scores, cls[:, None], axis=1)[:, 0]
    ok = (best > conf) & np.isfinite(best) & np.isfinite(boxes).all(axis=1)
    boxes, best, cls = boxes[ok], best[ok], cls[ok]
    if len(best) > max_nms:
        top = np.argsort(-best, kind="stable")[:max_nms]
        boxes, best, cls = boxes[top], best[top], cls[top]
    keep = nms(boxes, best, iou, cls, max_keep=max_det)
    return boxes[keep], best[keep], cls[keep]


def postprocess_yolo(output: np.ndarray, kind: str, fits: Sequence[FitInfo], class_names: Sequence[str], *,
                     input_size: tuple[int, int], conf: float = 0.25, iou: float = 0.45,
                     max_det: int = 300) -> list[Detections]:
    """A YOLO output batch -> the :class:`Detections` of each image, on the original images.

    Args:
        output: the model's detection output, (N, 4 + C, A) or (N, A, 5 + C).
        kind: ``yolov8``, ``yolov5`` or ``yolox``.
        fits: how each image was fitted to the model input (letterbox scale and padding).
        class_names: C labels.
        input_size: the model input's (height, width), to scale normalized (0-1) boxes.
        conf, iou, max_det: see :func:`select_boxes`.

    Raises:
        ArtifactError: for an output whose class count does not match ``class_names``.
        InputError: for ``conf`` or ``iou`` outside 0-1, or ``max_det`` < 1.
    """
    check_thresholds(conf, iou, max_det)
    boxes, scores = decode_yolo(output, kind, input_size)
    if scores.shape[2] != len(class_names):
        raise ArtifactError(f"The {kind} detector output {list(np.shape(output))} has {scores.shape[2]} classes but "
                            f"the card has {len(class_names)} labels; check --labels (or the output layout).")
    if len(fits) != boxes.shape[0]:
        raise InputError(f"{boxes.shape[0]} outputs for {len(fits)} images.")
    h, w = input_size
    results = []
    for img_boxes, img_scores, fit in zip(boxes, scores, fits):
        if kind != "yolox" and img_boxes.size and np.nanmax(np.abs(img_boxes)) <= 1.5:  # normalized (0-1)
            img_boxes = img_boxes * np.asarray([w, h, w, h], dtype=np.float32)
        kept, score, cls = select_boxes(img_boxes, img_scores, conf=conf, iou=iou, max_det=max_det)
        mapped = fit.to_original(kept)
        results.append(Detections(tuple(
            Detection(class_names[c], int(c), float(s), box_of(b))
            for b, s, c in zip(mapped, score, cls)), fit.width, fit.height))
    return results


def check_thresholds(conf: float, iou: float, max_det: int) -> None:
    """Raises InputError unless 0 <= conf <= 1, 0 <= iou <= 1 and max_det >= 1."""
    if not 0.0 <= conf <= 1.0:
        raise InputError(f"conf (--conf) must be in 0-1, got {conf}.")
    if not 0.0 <= iou <= 1.0:
        raise InputError(f"iou (--iou) must be in 0-1, got {iou}.")
    if int(max_det) != max_det or max_det < 1:
        raise InputError(f"max_det (--max-det) must be an integer >= 1, got {max_det}.")


class Detector(InferenceModel):
    """Object detector over a YOLO-style ONNX model: images -> labelled boxes on each image.

    The constructor is :class:`~edgecnn.runtime.core.InferenceModel`'s (model path, runtime
    options, card overrides, max_pixels). A file
    exported by Ultralytics works without an edgecnn card: its ``imgsz``, ``names`` and
    ``stride`` metadata give the card, preprocessing is Ultralytics' (letterbox, grey 114,
    pixels / 255, NCHW RGB), and the output layout is read off the output shape.

    >>> det = Detector("yolov8n.onnx")
    >>> for d in det.predict("street.jpg", conf=0.4)[0]:
    ...     print(d.label, d.score, d.box)

    Raises:
        ArtifactError: for a missing or corrupt file, a card that does not match the model, or a
            model whose card says it is not a detector.
        ProviderError: when the requested provider is not the one running the session.
    """

    output_kind: str
    graph_nms: NmsOutputs | None = None  # the outputs of each role, for a layout with NMS in the graph

    def _check_task(self) -> None:
        if self.card.task != "detect":
            raise ArtifactError(f"{self.model_path.name} is a {self.card.task} model, not a detector; use "
                                "edgecnn.runtime.load_model() (or `edgecnn predict`), which picks the right head.")
        self.output_kind = self._layout()
        if self.output_kind in NMS_KINDS:
            from edgecnn.runtime.heads.graph_nms import graph_nms_outputs

            self.graph_nms = graph_nms_outputs(self.output_kind, self.output_names,
                                               [o.shape for o in self.graph_outputs], self.model_path.name)

    def _layout(self) -> str:
        """The card's layout; for a file without an edgecnn card, the one its output shape fits."""
        shape = next(o.shape for o in self.session.get_outputs() if o.name == self.output_name)
        seen = output_layout(self.card.output_kind, shape, self.card.num_classes)
        if self.has_card or seen == self.card.output_kind:
            return self.card.output_kind
        if seen != self.card.output_kind:
            log.info("%s: output %s fits the %s layout for %d classes; decoding it so.", self.model_path.name,
                     shape, seen, self.card.num_classes)
        return seen

    def predict(self, images: ImageLike | Sequence[ImageLike] | np.ndarray, conf: float = 0.25, iou: float = 0.45,
                max_det: int = 300) -> list[Detections]:
        """The :class:`Detections` of each image (boxes in its own pixels), best score first.

        Args:
            images: a path, bytes, PIL image or array, a list of them, or an NHWC pixel batch
                already at the input size.
            conf: keep boxes scoring above this (0-1).
            iou: NMS overlap above which the lower-scoring box of a class is dropped (0-1).
            max_det: at most this many boxes per image.

        Raises:
            InputError: for unreadable images or thresholds out of range.
        """
        check_thresholds(conf, iou, max_det)
        return self._predict(images, conf=conf, iou=iou, max_det=max_det)

    def postprocess(self, outputs: list[np.ndarray], fits: Sequence[FitInfo], *, conf: float = 0.25,
                    iou: float = 0.45, max_det: int = 300, **other: Any) -> list[Detections]:
        """Raw outputs of a batch -> :class:`Detections` per image (``other`` task heads'
        parameters, such as ``top_k``, are ignored, so that one call serves every head)."""
        del other
        if self.graph_nms is not None:  # the graph did the NMS: iou is its own
            from edgecnn.runtime.heads.graph_nms import postprocess_graph_nms

            return postprocess_graph_nms(outputs, self.graph_nms, fits, self.card.class_names,
                                         input_size=self.card.input_size, conf=conf, max_det=max_det)
        out = outputs[self.output_names.index(self.output_name)]
        return postprocess_yolo(out, self.output_kind, fits, self.card.class_names, input_size=self.card.input_size,
                                conf=conf, iou=iou, max_det=max_det)

    def result_dict(self, result: Detections) -> dict[str, Any]:
        """One image's result as in ``predict --json`` and the server's answers:
        ``{"detections": [{label, index, score, box}], "image_size": [width, height]}``."""
        return result.to_dict()

    def annotate(self, image: ImageLike, result: Detections | Sequence[Detection]) -> Image.Image:
        """The image (RGB, original size) with each box drawn and labelled with its class and score.

        Raises:
            InputError: for an unreadable image.
        """
        from edgecnn.runtime.heads.draw import draw_detections

        img, _ = decode_image(image, max_pixels=self.max_pixels, mode="RGB")
        return draw_detections(img, list(result))
