"""Segmentation head: per-pixel class scores -> a class map of the original image, in numpy.

Accepted outputs: ``[N, C, H, W]`` or ``[N, H, W, C]`` logits or probabilities (the class axis is
the one of size C when the card has labels, else the smaller of axes 1 and 3), ``[N, 1, H, W]``
(or ``[N, H, W, 1]``) single-channel foreground scores, and ``[N, H, W]`` maps of class indices
(models with the argmax inside). The map is cut to the part that shows the image (a letterbox's
border dropped), then resized to the original image with nearest-neighbour sampling, so every
pixel keeps a class the model gave.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from edgecnn.errors import ArtifactError, InputError
from edgecnn.runtime.core import InferenceModel
from edgecnn.runtime.preprocess import FitInfo, ImageLike, decode_image

log = logging.getLogger(__name__)

__all__ = ["SegmentationResult", "Segmenter", "class_maps", "class_axis", "to_original", "class_fractions",
           "postprocess_segmentation"]


@dataclass(frozen=True, eq=False)
class SegmentationResult:
    """The class map of one image.

    ``mask`` is (height, width) of the original image, read-only, each pixel a class index into
    ``classes``; ``fractions[i]`` is the share of pixels of class ``i``.
    """

    mask: np.ndarray
    classes: tuple[str, ...]
    fractions: tuple[float, ...]

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    @property
    def height(self) -> int:
        return int(self.mask.shape[0])

    def present(self) -> list[tuple[str, int, float]]:
        """``(label, index, fraction)`` of every class in the mask, largest share first."""
        order = sorted((i for i, f in enumerate(self.fractions) if f > 0), key=lambda i: -self.fractions[i])
        return [(self.classes[i], i, self.fractions[i]) for i in order]

    def to_dict(self, include_mask: bool = False) -> dict[str, Any]:
        """JSON-able: ``{"segmentation": {width, height, classes: [{label, index, fraction}]}}``,
        the classes present largest share first (and the ``mask`` itself as nested lists when asked)."""
        out: dict[str, Any] = {"width": self.width, "height": self.height, "classes": [
            {"label": label, "index": index, "fraction": round(frac, 6)} for label, index, frac in self.present()]}
        if include_mask:
            out["mask"] = self.mask.tolist()
        return {"segmentation": out}


def class_axis(shape: Sequence[int], num_classes: int, layout: str) -> int | None:
    """The class axis of a 4-D output (1 or 3), or None for a 3-D class-index map.

    With ``num_classes`` > 0 the axis of that size wins; otherwise the smaller of axes 1 and 3
    (classes are far fewer than pixels); a tie follows the input ``layout``.

    Raises:
        ArtifactError: for an output that is neither 3-D nor 4-D.
    """
    if len(shape) == 3:
        return None
    if len(shape) != 4:
        raise ArtifactError(f"A segmentation output is [N, C, H, W], [N, H, W, C] or [N, H, W]; got {list(shape)}.")
    if num_classes > 0:
        hits = [ax for ax in (1, 3) if shape[ax] == num_classes]
        if len(hits) == 1:
            return hits[0]
    if shape[1] != shape[3]:
        return 1 if shape[1] < shape[3] else 3
    return 1 if layout == "nchw" else 3


def class_maps(output: np.ndarray, *, axis: int | None, output_kind: str = "logits") -> np.ndarray:
    """A batch of scores -> (N, h, w) class indices (int64), at the output's resolution.

    One channel is a foreground score: class 1 above 0 (logits) or 0.5 (probabilities).
    """
    out = np.asarray(output)
    if axis is None:
        if out.dtype.kind == "f" and not np.array_equal(out, np.round(out)):
            raise ArtifactError(f"A 3-D segmentation output {list(out.shape)} must hold class indices; got "
                                "fractional values (a [N, C, H, W] output needs its class axis).")
        return out.astype(np.int64)
    scores = np.moveaxis(out, axis, 1)
    if scores.shape[1] == 1:
        threshold = 0.0 if output_kind == "logits" else 0.5
        return (scores[:, 0] > threshold).astype(np.int64)
    return scores.argmax(axis=1)


def to_original(class_map: np.ndarray, fit: FitInfo, input_size: tuple[int, int]) -> np.ndarray:
    """One (h, w) class map on the model input's grid -> the original image's (height, width).

    The part of the input that shows the image (inside a letterbox's padding) is cut out at the
    output's resolution and resized with nearest-neighbour sampling. Where the model saw only part
    of the image (a center-crop), the edges the model did not see take the class at the nearest
    edge of its map.
    """
    dtype = np.uint8 if class_map.max(initial=0) < 256 else np.int32
    return _resize_to_original(class_map.astype(dtype), fit, input_size, Image.Resampling.NEAREST).astype(dtype)


def scores_to_original(score: np.ndarray, fit: FitInfo, input_size: tuple[int, int]) -> np.ndarray:
    """One (h, w) float score map -> the original image's (height, width), resized bilinearly (a
    one-channel model's probabilities or logits, thresholded after: as MediaPipe's segmenters do)."""
    return _resize_to_original(np.asarray(score, dtype=np.float32), fit, input_size, Image.Resampling.BILINEAR)


def _resize_to_original(values: np.ndarray, fit: FitInfo, input_size: tuple[int, int],
                        resample: Image.Resampling) -> np.ndarray:
    in_h, in_w = input_size
    out_h, out_w = values.shape
    sx, sy = out_w / in_w, out_h / in_h
    box = (fit.pad_x * sx, fit.pad_y * sy, (fit.pad_x + fit.width * fit.scale_x) * sx,
           (fit.pad_y + fit.height * fit.scale_y) * sy)
    grow = [int(np.ceil(max(0.0, v))) for v in (-box[0], -box[1], box[2] - out_w, box[3] - out_h)]
    if any(grow):  # the image extends beyond what the model saw
        values = np.pad(values, ((grow[1], grow[3]), (grow[0], grow[2])), mode="edge")
        box = (box[0] + grow[0], box[1] + grow[1], box[2] + grow[0], box[3] + grow[1])
    img = Image.fromarray(values, mode="F") if values.dtype == np.float32 else Image.fromarray(values)
    return np.asarray(img.resize((fit.width, fit.height), resample, box=box))


def class_fractions(mask: np.ndarray, num_classes: int) -> tuple[float, ...]:
    """Share of the pixels of each class 0..num_classes-1 (and of any higher index found)."""
    counts = np.bincount(mask.ravel().astype(np.int64), minlength=num_classes)
    return tuple(float(c) / max(mask.size, 1) for c in counts)


def postprocess_segmentation(output: np.ndarray, fits: Sequence[FitInfo], class_names: Sequence[str], *,
                             input_size: tuple[int, int], layout: str = "nchw",
                             output_kind: str = "logits") -> list[SegmentationResult]:
    """A segmentation output batch -> the :class:`SegmentationResult` of each original image.

    Args:
        output: logits or probabilities, (N, C, h, w) or (N, h, w, C), or (N, h, w) class indices.
        fits: how each image was fitted to the model input.
        class_names: the labels, or empty (classes are then named by their index).
        input_size: the model input's (height, width).
        layout: the model input's layout (breaks a tie when C equals the map width).
        output_kind: ``logits`` or ``probabilities`` (matters for a one-channel output only).

    Raises:
        ArtifactError: for an output shape that is no segmentation map, or a class count that
            differs from the labels.
        InputError: when the batch and the images differ in number.
    """
    out = np.asarray(output)
    axis = class_axis(out.shape, len(class_names), layout)
    maps = class_maps(out, axis=axis, output_kind=output_kind)
    n_classes = 2 if axis is not None and out.shape[axis] == 1 else (out.shape[axis] if axis is not None else 0)
    if class_names and n_classes and n_classes != len(class_names) and not (n_classes == 2 and len(class_names) == 1):
        raise ArtifactError(f"The segmentation output {list(out.shape)} has {n_classes} classes but the card has "
                            f"{len(class_names)} labels; check --labels.")
    if len(fits) != maps.shape[0]:
        raise InputError(f"{maps.shape[0]} outputs for {len(fits)} images.")
    n_classes = max(n_classes, len(class_names), int(maps.max(initial=0)) + 1)
    names = _names(class_names, n_classes)
    results = []
    # a one-channel output: its scores are resized, then thresholded (smooth edges, no nearest-neighbour steps)
    score_axis = axis - 1 if axis is not None and out.shape[axis] == 1 else None  # the channel axis of one image
    threshold = 0.0 if output_kind == "logits" else 0.5
    for i, (cmap, fit) in enumerate(zip(maps, fits)):
        if score_axis is not None:
            score = np.take(out[i], 0, axis=score_axis)
            mask = (scores_to_original(score, fit, input_size) > threshold).astype(np.uint8)
        else:
            mask = to_original(cmap, fit, input_size)
        mask.setflags(write=False)
        results.append(SegmentationResult(mask, names, class_fractions(mask, len(names))[:len(names)]))
    return results


def _names(class_names: Sequence[str], n: int) -> tuple[str, ...]:
    if len(class_names) == n:
        return tuple(class_names)
    if n == 2 and len(class_names) == 1:  # a one-channel model named by its foreground
        return ("background", class_names[0])
    return tuple(class_names) + tuple(str(i) for i in range(len(class_names), n))


class Segmenter(InferenceModel):
    """Semantic segmenter over an ONNX model: images -> a class per pixel of each image.

    The constructor is :class:`~edgecnn.runtime.core.InferenceModel`'s (model path, runtime
    options, card overrides, max_pixels). A file without a card needs ``task="segment"``
    (``--task segment``) and usually ``mean``/``std`` in its overrides; labels are optional
    (classes are then named 0..C-1).

    >>> flags = ModelOverrides(task="segment", mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4))
    >>> seg = Segmenter("lraspp.onnx", overrides=flags)
    >>> result = seg.predict("street.jpg")[0]
    >>> result.mask.shape, result.present()[:3]

    Raises:
        ArtifactError: for a missing or corrupt file, a card that does not match the model, or a
            model whose card says it is not a segmenter.
        ProviderError: when the requested provider is not the one running the session.
    """

    def _check_task(self) -> None:
        if self.card.task != "segment":
            raise ArtifactError(f"{self.model_path.name} is a {self.card.task} model, not a segmenter; use "
                                "edgecnn.runtime.load_model() (or `edgecnn predict`), which picks the right head "
                                "(or pass --task segment for a file without a card).")
        shape = next(o.shape for o in self.session.get_outputs() if o.name == self.output_name)
        if len(shape) not in (3, 4):
            raise ArtifactError(f"{self.model_path.name}: output {self.output_name!r} has shape {shape}; a "
                                "segmentation output is [N, C, H, W], [N, H, W, C] or [N, H, W].")

    def predict(self, images: ImageLike | Sequence[ImageLike] | np.ndarray) -> list[SegmentationResult]:
        """The :class:`SegmentationResult` of each image, at the image's own size.

        Raises:
            InputError: for unreadable images.
        """
        return super().predict(images)

    def postprocess(self, outputs: list[np.ndarray], fits: Sequence[FitInfo], **other: Any
                    ) -> list[SegmentationResult]:
        """Raw outputs of a batch -> one :class:`SegmentationResult` per image (``other`` task
        heads' parameters, such as ``top_k``, are ignored, so that one call serves every head)."""
        del other
        out = outputs[self.output_names.index(self.output_name)]
        card = self.card
        return postprocess_segmentation(out, fits, card.class_names, input_size=card.input_size, layout=card.layout,
                                        output_kind=card.output_kind)

    def result_dict(self, result: SegmentationResult) -> dict[str, Any]:
        """One image's result as in ``predict --json`` and the server's answers (no pixel values)."""
        return result.to_dict()

    def annotate(self, image: ImageLike, result: SegmentationResult, alpha: float = 0.5) -> Image.Image:
        """The image (RGB, original size) with the class map overlaid in one colour per class.

        Raises:
            InputError: for an unreadable image, ``alpha`` outside 0-1, or a result of another size.
        """
        from edgecnn.runtime.heads.draw import overlay_mask

        img, _ = decode_image(image, max_pixels=self.max_pixels, mode="RGB")
        if img.size != (result.width, result.height):
            raise InputError(f"The image is {img.width}x{img.height} but the mask is {result.width}x{result.height}; "
                             "annotate the image the result was predicted from.")
        return overlay_mask(img, result, alpha=alpha)
