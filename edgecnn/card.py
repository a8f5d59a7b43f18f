"""The model card: everything a later stage needs to use a model, in stdlib-only JSON.

A card travels in ``runs/<name>/card.json`` and, after export, in the ONNX file's
``metadata_props`` under :data:`ONNX_METADATA_KEY`. The runtime preprocesses from the card
alone: decode to RGB (or gray for ``channels=1``, by the ``gray`` rule), fit to ``input_size``
(``resize``: ``stretch`` as training did; ``letterbox``: aspect kept, centred on ``pad_value``, as
YOLO detectors expect; ``keep-aspect``: aspect kept, padded right and bottom, as YOLOX expects;
``fit-height``: height filled, width by the aspect ratio, padded right, as OCR text-line models
expect; ``center-crop``: shorter side to ``shorter_side``, then the centre (``paddle-crop``: with
PaddleClas's rounding); each with Pillow's
``resample`` filter; ``stretch-crop``: stretched to that side, then the centre), reorder channels
to ``channel_order``, then ``(pixel - mean) / std`` on the 0-255 scale,
in ``layout``.

The card is a frozen, typed contract with a ``schema_version``: cards of version 1 (edgecnn
0.1, classifiers only) load as ``task="classify"``, version 2's ``resize="bilinear"`` is
``stretch``; a card from a newer edgecnn is refused
with a message instead of being half-understood. Change a card with :meth:`ModelCard.replace`.

Required keys: ``name``, ``input_size`` ([height, width]) and, for ``classify`` and
``detect``, ``class_names``. A hand-written card for a 224x224 ImageNet-normalized classifier
(the README has the full key table)::

    {"schema_version": 4, "name": "mine", "task": "classify", "input_size": [224, 224],
     "class_names": ["cat", "dog"], "mean": [123.675, 116.28, 103.53],
     "std": [58.395, 57.12, 57.375], "layout": "nchw", "output_kind": "logits",
     "resize": "center-crop", "shorter_side": 256}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgecnn._files import atomic_write_text
from edgecnn.errors import ArtifactError

__all__ = ["ModelCard", "ONNX_METADATA_KEY", "CARD_SCHEMA_VERSION", "TASKS", "OUTPUT_KINDS",
           "RESIZE_MODES", "CROP_MODES", "RESAMPLE_FILTERS", "GRAY_RULES"]

ONNX_METADATA_KEY = "edgecnn.card"
CARD_SCHEMA_VERSION = 4  # 3: resize policies, resample filter, gray rule; 4: self-contained files, class maps
TASKS = ("classify", "detect", "segment", "raw")
_LAYOUTS = ("nhwc", "nchw")
_ORDERS = ("RGB", "BGR")
RESIZE_MODES = ("stretch", "letterbox", "keep-aspect", "fit-height", "center-crop", "paddle-crop", "stretch-crop",
                "pad-resize")
CROP_MODES = ("center-crop", "paddle-crop", "stretch-crop")  # the ones that resize to shorter_side, then crop
# Pillow's filters (antialiased on a downscale), and OpenCV's cv2.resize INTER_LINEAR/CUBIC/LANCZOS4
# (edgecnn.runtime.cvresize: for models trained on OpenCV's pixels)
RESAMPLE_FILTERS = ("bilinear", "bicubic", "lanczos", "nearest", "cv2-linear", "cv2-cubic", "cv2-lanczos4")
GRAY_RULES = ("luma", "average")  # ITU-R 601-2 (Pillow's "L", OpenCV's BGR2GRAY), or (R + G + B) / 3
_LEGACY_RESIZE = {"bilinear": "stretch"}  # schema 2 named the plain resize after its filter
# What the (first) output holds, per task. Detection: "yolov8" is [N, 4 + C, A] (v8/v11: cx, cy,
# w, h then class scores), "yolov5" is [N, A, 5 + C] (cx, cy, w, h, objectness, class scores),
# "yolox" is [N, A, 5 + C] before its grid decoding (offsets and log sizes per cell of strides 8, 16, 32).
# Detectors with NMS in the graph (edgecnn.nms_layouts): their class count is not in the outputs.
OUTPUT_KINDS: dict[str, tuple[str, ...]] = {
    "classify": ("probabilities", "logits"),
    "detect": ("yolov8", "yolov5", "yolox",
               "end2end",  # [N, K, 6]: x1, y1, x2, y2, score, class; zero rows pad (Ultralytics nms=True, YOLOv10/26)
               # boxes [N, K, 4] x1, y1, x2, y2 + scores, classes [N, K] (+ count): ONNX NonMaxSuppression
               "boxes-xyxy",
               "boxes-yxyx"),  # the same, boxes ymin, xmin, ymax, xmax: TensorFlow's NMS, TFLite_Detection_PostProcess
    "segment": ("logits", "probabilities", "class-map"),  # class-map: [N, H, W] class indices (argmax in the graph)
    "raw": ("raw",),
}
_INDEXED_CLASSES = OUTPUT_KINDS["detect"][3:]  # layouts whose outputs name classes by index: labels optional
_TASK_DEFAULT_OUTPUT = {"classify": "probabilities", "detect": "yolov8", "segment": "logits", "raw": "raw"}


@dataclass(frozen=True)
class ModelCard:
    """Model card of a trained, exported or imported image model.

    ``mean`` and ``std`` are per channel, in ``channel_order``, on the 0-255 pixel scale:
    plain 1/255 scaling is ``mean=(0, 0, 0), std=(255, 255, 255)``. ``output_kind`` says what
    the first output holds (see :data:`OUTPUT_KINDS`); ``""`` picks the task's default.
    """

    name: str
    architecture: str = "unknown"
    class_names: tuple[str, ...] = ()
    input_size: tuple[int, int] = (0, 0)  # (height, width)
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (255.0, 255.0, 255.0)
    channel_order: str = "RGB"
    channels: int = 3
    layout: str = "nhwc"
    input_name: str = "images"
    input_dtype: str = "float32"
    output_name: str = "probabilities"
    output_kind: str = ""
    resize: str = "stretch"  # see RESIZE_MODES
    pad_value: int = 114  # letterbox / keep-aspect border, 0-255 (Ultralytics' grey)
    resample: str = "bilinear"  # Pillow's filter for every resize
    shorter_side: int | None = None  # center-crop: the shorter side before the crop (None: input side / 0.875)
    gray: str = "luma"  # 1-channel models: how RGB becomes gray
    # how mean/std were chosen: scale, dataset, backbone:<name> (training); given, preset:<name>, assumed,
    # ultralytics (models from elsewhere)
    normalization: str = "scale"
    precision: str = "fp32"
    task: str = "classify"
    stride: int | None = None  # detectors: the largest feature stride (input sides are multiples of it)
    batch_axis: int | None = None  # the outputs' image axis when not 0 (time-major [T, N, C] sequences: 1)
    # the file takes uint8 RGB NHWC pixels at input_size and answers in the task's terms
    # (edgecnn.export.self_contained): mapping and post-processing in the graph; mean 0, std 1, nhwc, RGB, uint8
    self_contained: bool = False
    dataset: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    schema_version: int = CARD_SCHEMA_VERSION

    def __post_init__(self) -> None:
        try:
            norm = {"input_size": tuple(int(v) for v in self.input_size),
                    "mean": tuple(float(v) for v in self.mean), "std": tuple(float(v) for v in self.std),
                    "class_names": tuple(str(c) for c in self.class_names), "channels": int(self.channels),
                    "pad_value": int(self.pad_value), "stride": None if self.stride is None else int(self.stride),
                    "shorter_side": None if self.shorter_side is None else int(self.shorter_side),
                    "batch_axis": None if self.batch_axis is None else int(self.batch_axis),
                    "resize": _LEGACY_RESIZE.get(self.resize, self.resize),
                    "schema_version": int(self.schema_version)}
        except (TypeError, ValueError) as err:
            raise ArtifactError(f"Invalid model card: {err}.") from err
        if not self.output_kind and self.task in _TASK_DEFAULT_OUTPUT:
            norm["output_kind"] = _TASK_DEFAULT_OUTPUT[self.task]
        for key, value in norm.items():
            object.__setattr__(self, key, value)
        problems = []
        if self.task not in TASKS:
            problems.append(f"task must be one of {TASKS}, got {self.task!r}")
        elif self.output_kind not in OUTPUT_KINDS[self.task]:
            problems.append(f"output_kind of a {self.task} model must be one of {OUTPUT_KINDS[self.task]}, "
                            f"got {self.output_kind!r}")
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, got {self.channels}")
        if self.resize not in RESIZE_MODES:
            problems.append(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.batch_axis is not None and not 0 <= self.batch_axis <= 7:
            problems.append(f"batch_axis must be an output axis 0-7, got {self.batch_axis}")
        if self.resample not in RESAMPLE_FILTERS:
            problems.append(f"resample must be one of {RESAMPLE_FILTERS}, got {self.resample!r}")
        if self.gray not in GRAY_RULES:
            problems.append(f"gray must be one of {GRAY_RULES}, got {self.gray!r}")
        if self.shorter_side is not None and (self.resize not in CROP_MODES
                                              or self.shorter_side < max(self.input_size)):
            problems.append(f"shorter_side {self.shorter_side} goes with resize {'/'.join(CROP_MODES)} and at "
                            f"least the input size {max(self.input_size)}")
        if not 0 <= self.pad_value <= 255:
            problems.append(f"pad_value must be in 0-255, got {self.pad_value}")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            problems.append(f"input_size must be (height, width) > 0, got {self.input_size}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            problems.append(f"mean/std need {self.channels} values, got {self.mean} / {self.std}")
        if any(s <= 0 for s in self.std):
            problems.append(f"std must be positive, got {self.std}")
        if self.layout not in _LAYOUTS:
            problems.append(f"layout must be one of {_LAYOUTS}, got {self.layout!r}")
        if self.channel_order not in _ORDERS:
            problems.append(f"channel_order must be one of {_ORDERS}, got {self.channel_order!r}")
        if self.self_contained and (self.input_dtype != "uint8" or self.layout != "nhwc" or self.channel_order != "RGB"
                                    or any(self.mean) or any(s != 1 for s in self.std)):
            problems.append("a self-contained file takes uint8 RGB NHWC pixels as they are (input_dtype uint8, "
                            "layout nhwc, channel_order RGB, mean 0, std 1)")
        if not self.class_names and self.task in ("classify", "detect") and self.output_kind not in _INDEXED_CLASSES:
            problems.append(f"class_names is empty (a {self.task} model needs its labels)")
        if self.schema_version > CARD_SCHEMA_VERSION:
            problems.append(f"schema_version {self.schema_version} comes from a newer edgecnn (this one reads up to "
                            f"{CARD_SCHEMA_VERSION}); upgrade edgecnn")
        if problems:
            raise ArtifactError("Invalid model card: " + "; ".join(problems) + ".")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def replace(self, **changes: Any) -> ModelCard:
        """A copy with ``changes`` applied, validated like a new card.

        Raises:
            ArtifactError: if the result is not a valid card.
        """
        if "output_kind" not in changes and "task" in changes and changes["task"] != self.task:
            changes["output_kind"] = ""  # the new task's default
        try:
            return replace(self, **changes)
        except TypeError as err:
            raise ArtifactError(f"Invalid model card change: {err}.") from err

    def describe_preprocessing(self) -> str:
        """One line: what the runtime does to an image before the model sees it."""
        if self.mean == tuple(0.0 for _ in self.mean) and self.std == tuple(255.0 for _ in self.std):
            norm = "/255"
        else:
            norm = f"(x - {_fmt_floats(self.mean)}) / {_fmt_floats(self.std)} (0-255 scale)"
        color = ("gray" if self.gray == "luma" else f"gray ({self.gray})") if self.channels == 1 else self.channel_order
        h, w = self.input_size
        fit = {"letterbox": f"letterbox (pad {self.pad_value})",
               "keep-aspect": f"keep-aspect (pad {self.pad_value} right/bottom)",
               "fit-height": f"fit-height (pad {self.pad_value} right)",
               "pad-resize": f"pad-resize (pad {self.pad_value} centred, then resized)",
               "center-crop": f"shorter side {self.crop_shorter_side()}, center-crop",
               "paddle-crop": f"shorter side {self.crop_shorter_side()} (PaddleClas rounding), center-crop",
               "stretch-crop": f"stretch to side {self.crop_shorter_side()}, center-crop"}.get(self.resize, self.resize)
        return f"{fit} {h}x{w} {self.resample} {color}, {norm}, {self.layout.upper()}"

    def crop_shorter_side(self) -> int:
        """center-crop, stretch-crop: the shorter side the image is resized to before the crop (``shorter_side``,
        else the input's longer side / 0.875: 256 for 224, as torchvision's ImageNet recipe)."""
        return self.shorter_side or int(round(max(self.input_size) / 0.875))

    def input_shape(self, batch: int | None = None) -> tuple[int | None, ...]:
        """Shape of the model input tensor in the card's layout."""
        h, w = self.input_size
        if self.layout == "nchw":
            return (batch, self.channels, h, w)
        return (batch, h, w, self.channels)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("input_size", "mean", "std", "class_names"):
            data[key] = list(data[key])
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Build a card from a dict; unknown keys are kept out, missing required ones fail.

        Raises:
            ArtifactError: if required keys are missing or values are invalid.
        """
        if not isinstance(data, dict):
            raise ArtifactError(f"Invalid model card: expected a JSON object, got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version < 1:
            raise ArtifactError(f"Invalid model card: schema_version must be an integer >= 1, got {version!r}.")
        if version == 1:  # edgecnn 0.1: classifiers only, no task key
            data = {**data, "task": "classify"}
        if version < CARD_SCHEMA_VERSION:  # older cards name nothing newer: the defaults are what they meant
            data = {**data, "schema_version": CARD_SCHEMA_VERSION}
        task = data.get("task", "classify")
        labelled = task == "classify" or task == "detect" and data.get("output_kind") not in _INDEXED_CLASSES
        required = ["name", "input_size"] + (["class_names"] if labelled else [])
        missing = [k for k in required if k not in data]
        if missing:
            raise ArtifactError(f"Invalid model card: missing {', '.join(missing)} (see the README's model card "
                                "section for the keys).")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as err:
            if isinstance(err, ArtifactError):
                raise
            raise ArtifactError(f"Invalid model card: {err}.") from err

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArtifactError(f"Invalid model card: not JSON ({err}).") from err
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write the card as JSON, atomically."""
        return atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        """Read ``card.json`` (or the card of a run directory).

        Raises:
            ArtifactError: if the file is missing or not a valid card.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "card.json"
        if not path.is_file():
            raise ArtifactError(f"No model card at {path}; pass a run directory made by `edgecnn train`.")
        return cls.from_json(path.read_text(encoding="utf-8"))


def _fmt_floats(values: tuple[float, ...]) -> str:
    return "[" + ",".join(f"{v:g}" for v in values) + "]"
