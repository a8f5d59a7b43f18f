"""Parameter and multiply-add counts of the zoo, served from a cached table when possible.

Building a Keras model only to count it costs TensorFlow's start-up (seconds) plus the build,
so ``edgecnn models`` reads ``edgecnn/assets/model_counts.json`` instead; the table is written by
``tools/make_model_counts.py`` and every row of it is checked against the freshly built model by
tests/train/test_counts.py (the full-size rows among its slow tests, which CI runs), so a stale
table fails CI. Combinations not in the table (another input size, class count or
width) are counted by building the model, which needs the ``[train]`` extra.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from edgecnn.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)

__all__ = ["COUNTS_FILE", "CountsKey", "ModelCounts", "load_counts", "measure_counts", "model_counts",
           "counts_json"]

COUNTS_FILE = Path(__file__).resolve().parents[1] / "assets" / "model_counts.json"
SCHEMA = "edgecnn.model_counts/1"
_REGENERATE = "regenerate it with `python tools/make_model_counts.py`"


@dataclass(frozen=True)
class CountsKey:
    """One counted combination: a zoo model at an input size, class count and width.

    ``width`` None means the architecture's default width multiplier.
    """

    model: str
    input_size: tuple[int, int]
    num_classes: int
    width: float | None = None


@dataclass(frozen=True)
class ModelCounts:
    """Parameters and multiply-accumulates of one forward pass at batch 1."""

    params: int
    macs: int

    @property
    def mflops(self) -> float:
        """MFLOPs as the zoo table prints them: 2 x multiply-adds / 1e6."""
        return 2 * self.macs / 1e6


def _key_of(entry: dict) -> CountsKey:
    width = entry["width"]
    return CountsKey(str(entry["model"]), (int(entry["input_size"][0]), int(entry["input_size"][1])),
                     int(entry["num_classes"]), None if width is None else float(width))


@lru_cache(maxsize=4)
def load_counts(path: Path = COUNTS_FILE) -> dict[CountsKey, ModelCounts]:
    """The cached table (empty when the file is absent).

    Raises:
        ArtifactError: if the file exists but is not a counts table of this schema.
    """
    if not path.is_file():
        log.debug("No model counts table at %s; counts are measured by building the models.", path)
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}, expected {SCHEMA!r}")
        return {_key_of(e): ModelCounts(int(e["params"]), int(e["macs"])) for e in data["entries"]}
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise ArtifactError(f"The model counts table {path} is unreadable ({err}); {_REGENERATE}.") from err


def measure_counts(key: CountsKey) -> ModelCounts:
    """Build the model (needs TensorFlow) and count it.

    Raises:
        ConfigError: if the model cannot be built at that size, class count or width.
    """
    from edgecnn.train.flops import count_macs
    from edgecnn.train.registry import build_model

    kwargs = {} if key.width is None else {"width": key.width}
    try:
        model = build_model(key.model, key.num_classes, input_size=key.input_size, **kwargs)
    except TypeError as err:
        raise ConfigError(f"Model {key.model} does not take a width multiplier ({err}).") from err
    except ValueError as err:
        h, w = key.input_size
        raise ConfigError(f"Cannot build {key.model} for {h}x{w} inputs, {key.num_classes} classes: {err}") from err
    return ModelCounts(int(model.count_params()), count_macs(model))


def model_counts(key: CountsKey, *, path: Path = COUNTS_FILE) -> tuple[ModelCounts, bool]:
    """The counts of ``key``: from the table, else measured by building the model.

    Returns:
        The counts, and whether they came from the table.

    Raises:
        ConfigError: if the combination is not in the table and cannot be built.
        ArtifactError: if the table is unreadable.
    """
    cached = load_counts(path).get(key)
    if cached is not None:
        return cached, True
    return measure_counts(key), False


def counts_json(keys: Iterable[CountsKey], *, versions: dict[str, str]) -> str:
    """The table for ``keys``, measured now, as the JSON text :func:`load_counts` reads."""
    entries = []
    for key in keys:
        c = measure_counts(key)
        entries.append({"model": key.model, "input_size": list(key.input_size), "num_classes": key.num_classes,
                        "width": key.width, "params": c.params, "macs": c.macs})
    head = {"schema": SCHEMA, "written_by": "tools/make_model_counts.py", "versions": versions}
    # One entry per line: a regenerated table reads as a small diff.
    body = ",\n  ".join(json.dumps(e) for e in entries)
    return json.dumps(head, indent=1)[:-2] + ',\n "entries": [\n  ' + body + "\n ]\n}\n"
