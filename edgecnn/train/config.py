"""Typed, frozen training configuration; loaded from CLI flags or a recipe file (YAML/JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgecnn.errors import ConfigError

__all__ = ["TrainConfig", "AugmentConfig", "LookaheadConfig", "OPTIMIZERS", "SCHEDULES", "NORMALIZATIONS",
           "PRECISIONS", "DISTRIBUTE", "TTA_MODES", "load_recipe"]

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "step", "cosine", "onecycle", "triangle")
NORMALIZATIONS = ("scale", "dataset")
# fp32 by default: a run's numbers then do not depend on the machine it ran on; bf16/fp16/auto
# are asked for (edgecnn.train.precision says what each needs).
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DISTRIBUTE = ("none", "mirrored", "multi-worker")  # see edgecnn.train.distribute
TTA_MODES = ("none", "flip", "flip+shift")  # test-time augmentation: edgecnn.train.evaluate.tta_views


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation, run in the tf.data pipeline (never baked into the model)."""

    flip: bool | str = True  # True: random per image; "alternate": airbench's derandomized flip
    rotation_deg: float = 0.0
    translate: float = 0.125  # fraction of the side (Keras RandomTranslation: sub-pixel shifts, bilinear)
    translate_px: int = 0  # whole-pixel translation instead: reflect-pad N px + random crop (airbench: 2)
    fill_mode: str = "reflect"

    def __post_init__(self) -> None:
        if self.flip not in (True, False, "alternate"):
            raise ConfigError(f"flip must be true, false or alternate, got {self.flip!r}.")
        if self.translate_px < 0 or (self.translate_px and self.translate):
            raise ConfigError(f"translate_px must be >= 0 and is exclusive with translate, got translate_px "
                              f"{self.translate_px} with translate {self.translate}; set translate: 0.")
        if not 0 <= self.rotation_deg <= 180:
            raise ConfigError(f"rotation_deg must be in [0, 180], got {self.rotation_deg}.")
        if not 0 <= self.translate < 0.5:
            raise ConfigError(f"translate must be in [0, 0.5), got {self.translate}.")
        if self.fill_mode not in ("reflect", "constant", "nearest", "wrap"):
            raise ConfigError(f"fill_mode must be reflect, constant, nearest or wrap, got {self.fill_mode!r}.")

    @property
    def enabled(self) -> bool:
        return bool(self.flip) or self.rotation_deg > 0 or self.translate > 0 or self.translate_px > 0


@dataclass(frozen=True)
class LookaheadConfig:
    """airbench's Lookahead: every ``every`` steps from epoch ``start_epoch`` on, slow weights (batch-norm
    statistics included) move toward the fast ones by ``1 - rho`` and the fast weights jump back to
    them; ``rho = decay**every * (step / total_steps)**power`` grows over training (move fast, then
    average strongly). The fast weights take the slow ones at the end of every epoch, so a checkpoint
    holds the whole state."""

    every: int = 5
    start_epoch: int = 3
    decay: float = 0.95
    power: float = 3.0

    def __post_init__(self) -> None:
        if self.every < 1 or self.start_epoch < 0 or not 0 < self.decay < 1 or self.power < 0:
            raise ConfigError(f"lookahead needs every >= 1, start_epoch >= 0, decay in (0, 1) and power >= 0, got "
                              f"{self.every}, {self.start_epoch}, {self.decay}, {self.power}.")


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``edgecnn train`` does, as one value (every field is also a CLI flag)."""

    model: str = "seed_cnn"
    task: str | None = None  # classify, segment or detect; None: the model's own (classify for a backbone)
    data: str | None = None  # None: CIFAR-10 download, else the embedded sample
    out: str | None = None  # run directory; default runs/<model>
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    step_every: int = 30
    step_gamma: float = 0.1
    label_smoothing: float = 0.0
    dropout: float | None = None  # None: the architecture's default
    width: float | None = None  # width multiplier; None: the architecture's default
    early_stopping: int = 0  # patience in epochs on val_accuracy; 0 disables
    val_split: float = 0.1
    seed: int = 0
    normalization: str = "scale"
    input_size: tuple[int, int] | None = None
    classes: str | None = None  # subset such as "0-4" or "cat,dog"
    limit: int | None = None  # cap on training images (quick runs)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    lookahead: LookaheadConfig | None = None
    whiten_init: bool | None = None  # patch-whitening init of the "whiten" conv; None: if the model has one
    whiten_bias_epochs: int | None = None  # the whitening bias trains this many epochs, then stays; None: always
    tta: str = "none"  # also score the final model with test-time augmentation: flip or flip+shift
    # Transfer learning
    backbone: str | None = None  # keras.applications name or a run directory
    weights: str = "imagenet"  # imagenet | none | PATH (for keras.applications backbones)
    backbone_input_size: int | None = None  # resize inside the model; None: the backbone's own
    fine_tune_layers: int = 0
    fine_tune_epochs: int = 0
    fine_tune_lr: float | None = None  # None: lr / 10
    # Hardware
    precision: str = "fp32"  # fp32 | bf16 | fp16 | auto (see edgecnn.train.precision)
    distribute: str = "none"  # none | mirrored | multi-worker; batch_size is then the global batch
    worker_timeout: float = 300.0  # multi-worker: seconds to wait for every worker of TF_CONFIG

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(msg)

        if self.task not in (None, "classify", "segment", "detect"):
            bad(f"task must be classify, segment or detect, got {self.task!r}.")
        if self.epochs < 1:
            bad(f"epochs must be >= 1, got {self.epochs}.")
        if self.batch_size < 1:
            bad(f"batch_size must be >= 1, got {self.batch_size}.")
        if not self.lr > 0:
            bad(f"lr must be > 0, got {self.lr}.")
        if self.optimizer not in OPTIMIZERS:
            bad(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}.")
        if self.schedule not in SCHEDULES:
            bad(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}.")
        if self.precision not in PRECISIONS:
            bad(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")
        if self.distribute not in DISTRIBUTE:
            bad(f"distribute must be one of {', '.join(DISTRIBUTE)}, got {self.distribute!r}.")
        if not self.worker_timeout > 0:
            bad(f"worker_timeout must be > 0 seconds, got {self.worker_timeout}.")
        if self.normalization not in NORMALIZATIONS:
            bad(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}.")
        if not 0 <= self.momentum < 1:
            bad(f"momentum must be in [0, 1), got {self.momentum}.")
        if self.weight_decay < 0:
            bad(f"weight_decay must be >= 0, got {self.weight_decay}.")
        if self.whiten_bias_epochs is not None and self.whiten_bias_epochs < 0:
            bad(f"whiten_bias_epochs must be >= 0, got {self.whiten_bias_epochs}.")
        if not 0 <= self.label_smoothing < 1:
            bad(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            bad(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.width is not None and self.width <= 0:
            bad(f"width must be > 0, got {self.width}.")
        if not 0 <= self.val_split < 1:
            bad(f"val_split must be in [0, 1), got {self.val_split}.")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            bad(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}.")
        if self.step_every < 1 or not 0 < self.step_gamma <= 1:
            bad("step_every must be >= 1 and step_gamma in (0, 1].")
        if self.early_stopping < 0 or self.fine_tune_layers < 0 or self.fine_tune_epochs < 0:
            bad("early_stopping, fine_tune_layers and fine_tune_epochs must be >= 0.")
        if self.limit is not None and self.limit < 1:
            bad(f"limit must be >= 1, got {self.limit}.")
        if self.fine_tune_lr is not None and not self.fine_tune_lr > 0:
            bad(f"fine_tune_lr must be > 0, got {self.fine_tune_lr}.")
        if self.input_size is not None:
            size = tuple(int(v) for v in self.input_size)
            if len(size) != 2 or min(size) < 8:
                bad(f"input_size must be (height, width) >= 8, got {self.input_size}.")
            object.__setattr__(self, "input_size", size)
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", _build(AugmentConfig, self.augment, "augment"))
        if isinstance(self.lookahead, dict):
            object.__setattr__(self, "lookahead", _build(LookaheadConfig, self.lookahead, "lookahead"))
        if self.tta not in TTA_MODES:
            bad(f"tta must be one of {', '.join(TTA_MODES)}, got {self.tta!r}.")
        if self.fine_tune_epochs and not self.backbone:
            bad("fine_tune_epochs needs --backbone (it unfreezes the backbone's top layers).")
        if self.weights not in ("imagenet", "none") and not Path(self.weights).expanduser().exists():
            bad(f"weights must be imagenet, none or an existing file, got {self.weights!r}.")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.input_size is not None:
            data["input_size"] = list(self.input_size)
        return data

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict; an unknown key fails loudly.

        Raises:
            ConfigError: for unknown keys or invalid values.
        """
        return _build(cls, data, "recipe")


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"The {where} must be a mapping of option: value, got {type(data).__name__}.")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        import difflib

        hints = [f"{u} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(u, known, 1)) else u for u in unknown]
        raise ConfigError(f"Unknown {where} key(s): {', '.join(hints)}.")
    try:
        return cls(**data)
    except TypeError as err:
        raise ConfigError(f"Invalid {where}: {err}.") from err


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe (YAML or JSON) into a dict of TrainConfig fields.

    Raises:
        ConfigError: if the file is missing or not valid YAML/JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Recipe {path} does not exist; see models/*.yaml for examples.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # yaml.YAMLError / JSONDecodeError
        raise ConfigError(f"Cannot parse recipe {path}: {str(err).splitlines()[0]}.") from err
    if not isinstance(data, dict):
        raise ConfigError(f"Recipe {path} must be a mapping of option: value.")
    return data
