"""The model card: everything a later stage needs to use a model, in stdlib-only JSON.

A card travels in ``runs/<name>/card.json`` and, after export, in the ONNX file's
``metadata_props`` under :data:`ONNX_METADATA_KEY`. The runtime preprocesses from the card
alone: resize to ``input_size`` (Pillow bilinear, as training did), reorder channels to
``channel_order``, then ``(pixel - mean) / std`` on the 0-255 scale, in ``layout``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgecnn.errors import ArtifactError

__all__ = ["ModelCard", "ONNX_METADATA_KEY", "CARD_SCHEMA_VERSION", "atomic_write_text"]

ONNX_METADATA_KEY = "edgecnn.card"
CARD_SCHEMA_VERSION = 1
_LAYOUTS = ("nhwc", "nchw")
_ORDERS = ("RGB", "BGR")
_OUTPUTS = ("probabilities", "logits")


@dataclass
class ModelCard:
    """Model card of a trained or exported classifier.

    ``mean`` and ``std`` are per channel, in ``channel_order``, on the 0-255 pixel scale:
    plain 1/255 scaling is ``mean=(0, 0, 0), std=(255, 255, 255)``.
    """

    name: str
    architecture: str
    class_names: list[str]
    input_size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (255.0, 255.0, 255.0)
    channel_order: str = "RGB"
    channels: int = 3
    layout: str = "nhwc"
    input_name: str = "images"
    input_dtype: str = "float32"
    output_name: str = "probabilities"
    output_kind: str = "probabilities"
    resize: str = "bilinear"
    normalization: str = "scale"  # how mean/std were chosen: scale, dataset, backbone:<name>
    precision: str = "fp32"
    dataset: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    schema_version: int = CARD_SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)  # type: ignore[assignment]
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        self.class_names = [str(c) for c in self.class_names]
        problems = []
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
        if self.output_kind not in _OUTPUTS:
            problems.append(f"output_kind must be one of {_OUTPUTS}, got {self.output_kind!r}")
        if not self.class_names:
            problems.append("class_names is empty")
        if problems:
            raise ArtifactError("Invalid model card: " + "; ".join(problems) + ".")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def input_shape(self, batch: int | None = None) -> tuple[int | None, ...]:
        """Shape of the model input tensor in the card's layout."""
        h, w = self.input_size
        if self.layout == "nchw":
            return (batch, self.channels, h, w)
        return (batch, h, w, self.channels)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
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
        missing = [k for k in ("name", "architecture", "class_names", "input_size") if k not in data]
        if missing:
            raise ArtifactError(f"Invalid model card: missing {', '.join(missing)}.")
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
