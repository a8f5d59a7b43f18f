"""What a model file does not say about itself, as the command line says it: preprocessing
presets and the model flags (``--input-size``, ``--channels``, ``--layout``, ``--mean``/``--std``/
``--preprocess``, ``--labels``, ``--task``, the image-fitting flags, ``--output-layout``,
``--batch-axis``), stdlib only.

Every command that takes a model (export, predict, bench, evaluate, serve, gradcam) parses the
same flags with :func:`parse_overrides` into :class:`ModelOverrides`; a model without a card gets
one from :func:`edgecnn.card_inference.infer_card`, which applies them.

Mean and std are always per channel on the 0-255 pixel scale, as in :class:`edgecnn.card.ModelCard`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecnn.card import CROP_MODES, GRAY_RULES, OUTPUT_KINDS, RESAMPLE_FILTERS, RESIZE_MODES, TASKS, ModelCard
from edgecnn.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["Preset", "PREPROCESS_PRESETS", "LAYOUTS", "TASKS", "ModelOverrides", "TensorInfo", "parse_overrides",
           "parse_input_size", "parse_floats", "parse_labels", "short_list", "PREPROCESSING_FLAGS"]

LAYOUTS = ("nchw", "nhwc")
PREPROCESSING_FLAGS = "--preprocess/--mean/--std/--layout/--channels"


@dataclass(frozen=True)
class Preset:
    """Per-channel RGB mean and std on the 0-255 scale, and what uses them."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str

    def for_channels(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Mean and std for ``channels`` (a gray model gets the average of the RGB values)."""
        if channels == 3:
            return self.mean, self.std
        return (round(sum(self.mean) / 3, 4),), (round(sum(self.std) / 3, 4),)


PREPROCESS_PRESETS: dict[str, Preset] = {
    "unit": Preset((0.0, 0.0, 0.0), (255.0, 255.0, 255.0), "x / 255 (Ultralytics, most Keras models)"),
    "imagenet": Preset((123.675, 116.28, 103.53), (58.395, 57.12, 57.375),
                       "ImageNet mean/std (torchvision, timm, PaddlePaddle)"),
    "tf": Preset((127.5, 127.5, 127.5), (127.5, 127.5, 127.5),
                 "(x - 127.5) / 127.5 (keras.applications MobileNet/EfficientNetV2, TF Hub)"),
    "none": Preset((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "raw 0-255 pixels (models that normalize inside)"),
}


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (an int per fixed axis, None or a name for dynamic ones) and element type."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class ModelOverrides:
    """Card values given on the command line; None means "not given"."""

    input_size: tuple[int, int] | None = None
    channels: int | None = None
    layout: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    preprocess: str | None = None
    class_names: tuple[str, ...] | None = None
    task: str | None = None
    channel_order: str | None = None  # RGB or BGR: the order the model's channels are in
    resize: str | None = None  # how an image is fitted (RESIZE_MODES), with the four below
    resample: str | None = None
    pad_value: int | None = None
    shorter_side: int | None = None
    gray: str | None = None
    batch_axis: int | None = None  # the outputs' image axis (time-major sequences: 1)
    output_kind: str | None = None  # --output-layout: what the first output holds (OUTPUT_KINDS of the task)

    def __post_init__(self) -> None:
        if self.preprocess is not None and self.preprocess not in PREPROCESS_PRESETS:
            raise ConfigError(f"--preprocess must be one of {', '.join(PREPROCESS_PRESETS)}, got {self.preprocess!r}.")
        if self.preprocess is not None and (self.mean is not None or self.std is not None):
            raise ConfigError("Pass either --preprocess or --mean/--std, not both.")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("--mean and --std go together: pass both (0-255 scale), or --preprocess "
                              f"{'|'.join(PREPROCESS_PRESETS)}.")
        if self.channels is not None and self.channels not in (1, 3):
            raise ConfigError(f"--channels must be 1 or 3, got {self.channels}.")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ConfigError(f"--layout must be nchw or nhwc, got {self.layout!r}.")
        if self.channel_order is not None and self.channel_order not in ("RGB", "BGR"):
            raise ConfigError(f"--channels-order must be rgb or bgr, got {self.channel_order!r}.")
        if self.resize is not None and self.resize not in RESIZE_MODES:
            raise ConfigError(f"--resize must be one of {'|'.join(RESIZE_MODES)}, got {self.resize!r}.")
        if self.resample is not None and self.resample not in RESAMPLE_FILTERS:
            raise ConfigError(f"--resample must be one of {'|'.join(RESAMPLE_FILTERS)}, got {self.resample!r}.")
        if self.gray is not None and self.gray not in GRAY_RULES:
            raise ConfigError(f"--gray must be one of {'|'.join(GRAY_RULES)}, got {self.gray!r}.")
        if self.pad_value is not None and not 0 <= self.pad_value <= 255:
            raise ConfigError(f"--pad-value must be a pixel value in 0-255, got {self.pad_value}.")
        if self.shorter_side is not None:
            if self.resize not in (None, *CROP_MODES):
                raise ConfigError(f"--shorter-side goes with --resize {'|'.join(CROP_MODES)}, not --resize "
                                  f"{self.resize}.")
            if self.shorter_side < 1:
                raise ConfigError(f"--shorter-side must be a positive side in pixels, got {self.shorter_side}.")
        if self.batch_axis is not None and not 0 <= self.batch_axis <= 7:
            raise ConfigError(f"--batch-axis must be an output axis 0-7, got {self.batch_axis}.")
        kinds = sorted({k for v in OUTPUT_KINDS.values() for k in v})
        if self.output_kind is not None and self.output_kind not in kinds:
            raise ConfigError(f"--output-layout must be one of {'|'.join(kinds)}, got {self.output_kind!r}.")
        if self.output_kind is not None and self.task is not None and self.output_kind not in OUTPUT_KINDS[self.task]:
            raise ConfigError(f"--output-layout {self.output_kind} is not a {self.task} layout; a {self.task} model's "
                              f"output is {'|'.join(OUTPUT_KINDS[self.task])}.")
        if self.task is not None and self.task not in TASKS:
            raise ConfigError(f"--task must be one of {'|'.join(TASKS)}, got {self.task!r}.")
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
                raise ConfigError(f"--mean and --std need 1 or 3 values each, got {len(self.mean)} and "
                                  f"{len(self.std)}.")
            if self.channels is not None and len(self.mean) != self.channels:
                raise ConfigError(f"--mean/--std have {len(self.mean)} values but --channels is {self.channels}.")
            if any(s <= 0 for s in self.std):
                raise ConfigError(f"--std must be positive, got {','.join(f'{s:g}' for s in self.std)}.")
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 1):
            raise ConfigError(f"--input-size must be HxW with positive sides, got {self.input_size}.")

    @property
    def normalization_given(self) -> bool:
        return self.preprocess is not None or self.mean is not None

    def normalization(self, channels: int) -> dict[str, Any]:
        """``mean``, ``std`` and ``normalization`` card values for ``channels``; {} if none given.

        Raises:
            ConfigError: if the given --mean/--std do not have ``channels`` values.
        """
        if self.preprocess is not None:
            mean, std = PREPROCESS_PRESETS[self.preprocess].for_channels(channels)
            return {"mean": mean, "std": std, "normalization": f"preset:{self.preprocess}"}
        if self.mean is not None and self.std is not None:
            if len(self.mean) != channels:
                raise ConfigError(f"--mean/--std have {len(self.mean)} values but the model takes {channels} "
                                  f"channel{'s' if channels > 1 else ''}; pass {channels}.")
            return {"mean": self.mean, "std": self.std, "normalization": "given"}
        return {}

    def apply(self, card: ModelCard) -> ModelCard:
        """``card`` with every given value replacing its own (a card that is already complete).

        Raises:
            ArtifactError: if the result is not a valid card (e.g. a label count it cannot have).
            ConfigError: for --mean/--std of the wrong length.
        """
        changes: dict[str, Any] = {}
        channels = self.channels or card.channels
        if self.channels is not None and self.channels != card.channels:
            changes.update(channels=channels, mean=card.mean[:1] * channels, std=card.std[:1] * channels)
        changes.update(self.normalization(channels))
        for key in ("input_size", "layout", "class_names", "task", "channel_order", "batch_axis", "output_kind",
                    *_FITTING_FLAGS):
            value = getattr(self, key)
            if value is not None:
                changes[key] = value
        if self.shorter_side is not None and changes.get("resize", card.resize) not in CROP_MODES:
            changes["resize"] = "center-crop"
        elif (changes.get("resize", card.resize) not in CROP_MODES
              or "input_size" in changes and self.shorter_side is None):
            changes.setdefault("shorter_side", None)  # a crop side belongs to the crop it was given for
        changes = {k: v for k, v in changes.items() if getattr(card, k) != v}
        return card.replace(**changes) if changes else card

    def fitting(self) -> dict[str, Any]:
        """The given image-fitting values (resize, resample, pad_value, shorter_side, gray) as card keys."""
        values = {k: getattr(self, k) for k in _FITTING_FLAGS if getattr(self, k) is not None}
        if self.shorter_side is not None and self.resize is None:
            values["resize"] = "center-crop"
        return values


_FITTING_FLAGS = ("resize", "resample", "pad_value", "shorter_side", "gray")


def parse_input_size(text: str | None) -> tuple[int, int] | None:
    """``"224"``, ``"224x224"`` or ``"480,640"`` -> (height, width).

    Raises:
        ConfigError: for anything else.
    """
    if text is None or text == "":
        return None
    parts = [p.strip() for p in str(text).lower().replace("x", ",").split(",")]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) not in (1, 2) or min(nums) < 1:
        raise ConfigError(f"--input-size expects N or HxW (e.g. 224 or 480x640), got {text!r}.")
    return (nums[0], nums[-1])


def parse_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    """``"123.7,116.3,103.5"`` -> a tuple of 1 or 3 floats; warns when a std looks like 0-1 units.

    Raises:
        ConfigError: for anything but 1 or 3 comma-separated numbers.
    """
    if text is None or text == "":
        return None
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) not in (1, 3):
        raise ConfigError(f"{flag} expects 1 or 3 comma-separated numbers on the 0-255 scale (R,G,B), got {text!r}.")
    if flag == "--std" and all(v > 0 for v in values) and min(values) < 1:
        log.warning("--std %s is below 1 on the 0-255 scale: 0-1 units were probably passed (ImageNet's std is "
                    "58.395,57.12,57.375, not 0.229,0.224,0.225); multiply by 255 or use --preprocess.", text)
    return values


_LABEL_FILE_SUFFIXES = (".txt", ".names", ".csv", ".json", ".yaml", ".yml", ".labels")


def parse_labels(text: str | None) -> tuple[str, ...] | None:
    """``--labels``: a text file with one class name per line, ``a,b,c``, or one name (``char``).

    A single word that looks like a path (a slash, or a label-file suffix such as ``.txt``) and
    is not a file is an error, not a class called ``labels.txt``.

    Raises:
        ConfigError: for a value that is neither an existing file nor a comma-separated list.
    """
    if text is None or text == "":
        return None
    path = Path(str(text)).expanduser()
    if path.is_file():
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"Cannot read --labels file {path} ({type(err).__name__}); pass a UTF-8 text file "
                              "with one class name per line, or a,b,c.") from err
        if not names:
            raise ConfigError(f"--labels file {path} holds no class names (one per line).")
        return tuple(names)
    if "," not in str(text):
        if "/" in str(text) or "\\" in str(text) or path.suffix.lower() in _LABEL_FILE_SUFFIXES:
            raise ConfigError(f"--labels {text!r} is not a file; pass a text file with one class name per line, or "
                              "comma-separated names like cat,dog.")
        return (str(text).strip(),)  # one class: a detector of a single thing (--labels char)
    names = [n.strip() for n in str(text).split(",")]
    if any(not n for n in names):
        raise ConfigError(f"--labels {text!r} has an empty class name.")
    return tuple(names)


def parse_overrides(*, input_size: str | None = None, channels: int | str | None = None, layout: str | None = None,
                    mean: str | None = None, std: str | None = None, preprocess: str | None = None,
                    labels: str | None = None, task: str | None = None,
                    channels_order: str | None = None, resize: str | None = None, resample: str | None = None,
                    pad_value: int | str | None = None, shorter_side: int | str | None = None,
                    gray: str | None = None, batch_axis: int | str | None = None,
                    output_layout: str | None = None) -> ModelOverrides:
    """The model flags as given on any command -> :class:`ModelOverrides`.

    Raises:
        ConfigError: for a malformed or contradictory value (the flag is named).
    """
    return ModelOverrides(
        input_size=parse_input_size(input_size), channels=None if channels in (None, "") else int(channels),
        layout=layout.lower() if layout else None, mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"),
        preprocess=preprocess or None, class_names=parse_labels(labels), task=task or None,
        channel_order=channels_order.upper() if channels_order else None, resize=resize or None,
        resample=resample or None, pad_value=_int_flag(pad_value, "--pad-value"),
        shorter_side=_int_flag(shorter_side, "--shorter-side"), gray=gray or None,
        batch_axis=_int_flag(batch_axis, "--batch-axis"), output_kind=output_layout or None)


def _int_flag(value: int | str | None, flag: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} expects a whole number, got {value!r}.") from None


def short_list(names: Sequence[str], limit: int = 5) -> str:
    """``a, b, c, ... (1000 classes)``: info lines never list hundreds of names."""
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])}, ... ({len(names)} classes)"
