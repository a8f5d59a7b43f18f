"""The run directory: the files a training run writes, its typed training state, and loading its model.

One home for what a run is on disk, so that the training loop (which writes it), evaluate and
transfer (which read a finished run's model) and resume (which reads the state) share one
definition instead of importing each other. The module itself is stdlib-only: Keras loads
inside :func:`load_run_model`, so reading a run's state needs no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecnn._files import atomic_path, atomic_write_text
from edgecnn.errors import ArtifactError
from edgecnn.keras_io import load_keras_model

if TYPE_CHECKING:
    import keras

__all__ = ["RunFiles", "Preprocessing", "TrainState", "PHASES", "load_run_model", "is_run_model",
           "save_model_atomic", "write_json"]

PHASES = ("head", "finetune")  # a transfer run trains its new head first, then fine-tunes the backbone


class RunFiles:
    """Names of the files in a run directory.

    Checkpoints are ``checkpoint-eNNNN.keras``, one name per epoch, and ``state.json`` names the
    current one: a checkpoint only counts once the state file that names it has been written (an
    atomic replace), so a kill between the two leaves the previous epoch's pair intact instead of
    a new model with an old state (issue 11: a hidden extra epoch of optimizer steps).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.model = self.root / "model.keras"
        self.card = self.root / "card.json"
        self.config = self.root / "config.json"
        self.checkpoint = self.root / "checkpoint.keras"  # runs of edgecnn 0.1; read on resume only
        self.state = self.root / "state.json"
        self.history_json = self.root / "history.json"
        self.history_csv = self.root / "history.csv"
        self.curves = self.root / "curves.png"
        self.metrics = self.root / "metrics.json"

    def checkpoint_for(self, epoch: int) -> Path:
        return self.root / f"checkpoint-e{epoch:04d}.keras"

    def checkpoints(self) -> list[Path]:
        return sorted(self.root.glob("checkpoint-e*.keras")) + ([self.checkpoint] if self.checkpoint.exists() else [])

    def current_checkpoint(self, state: TrainState) -> Path:
        """The checkpoint ``state`` names (``checkpoint.keras`` for runs written before it named one)."""
        return self.root / state.checkpoint if state.checkpoint else self.checkpoint


def write_json(path: Path, data: Any) -> None:
    """A run's JSON files (config, state, metrics, history): sorted keys, written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")


def save_model_atomic(model: keras.Model, path: Path) -> None:
    """Save ``model`` to ``path`` through a temporary file: a kill leaves the old file or the new one."""
    with atomic_path(path) as tmp:  # keeps the .keras suffix Keras goes by
        model.save(tmp)


@dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """How a run normalizes its images, recorded in its state and then in its card.

    ``mean`` and ``std`` are per channel on the 0-255 scale, in ``channel_order``;
    ``normalization`` says how they were chosen: ``scale`` (1/255), ``dataset`` (the training
    split's statistics) or ``backbone:<name>`` (a transfer backbone's own preprocessing).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str = "RGB"
    normalization: str = "scale"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "channel_order": self.channel_order,
                "normalization": self.normalization}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Raises: TypeError for missing or unknown keys (:meth:`TrainState.from_dict` reports it)."""
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class TrainState:
    """Where a run stands: written to ``state.json`` after every epoch, read back on resume.

    Frozen: an epoch's end makes a new state (:meth:`after_epoch`), and its ``history`` lists
    are never changed in place. On disk it is the JSON the loop has always written (a run
    killed by an older edgecnn resumes), without a schema key: :meth:`from_dict` accepts the
    files of edgecnn 0.1, which name no ``checkpoint``.
    """

    phase: str = "head"
    epoch: int = 0  # finished epochs, both phases counted
    done: bool = False
    preprocessing: Preprocessing
    history: dict[str, list[Any]] = field(default_factory=dict)  # one list per metric, one entry per epoch
    dataset: dict[str, Any] = field(default_factory=dict)  # Dataset.describe()
    class_names: tuple[str, ...] = ()
    checkpoint: str | None = None  # the file name of the committed checkpoint

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(PHASES)}, got {self.phase!r}")
        if not isinstance(self.epoch, int) or isinstance(self.epoch, bool) or self.epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0, got {self.epoch!r}")
        if not isinstance(self.history, dict):
            raise ValueError(f"history must be a mapping, got {type(self.history).__name__}")
        object.__setattr__(self, "class_names", tuple(self.class_names))

    @property
    def train_time_s(self) -> float:
        """Seconds spent training so far (resumed runs count every session)."""
        return (self.history.get("time_s") or [0])[-1]

    def after_epoch(self, epoch: int, logs: dict[str, Any], *, time_s: float, checkpoint: str) -> TrainState:
        """The state once ``epoch`` (1-based) has ended with ``logs`` and been saved to ``checkpoint``."""
        history = {k: list(v) for k, v in self.history.items()}
        for key, value in logs.items():
            history.setdefault(key, []).append(float(value))
        history.setdefault("epoch", []).append(epoch)
        history.setdefault("phase", []).append(self.phase)
        history.setdefault("time_s", []).append(time_s)
        return self.replace(epoch=epoch, history=history, checkpoint=checkpoint)

    def replace(self, **changes: Any) -> TrainState:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = {"phase": self.phase, "epoch": self.epoch, "done": self.done,
               "preprocessing": self.preprocessing.to_dict(), "history": self.history, "dataset": self.dataset,
               "class_names": list(self.class_names)}
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint
        return out

    @classmethod
    def from_dict(cls, data: Any) -> TrainState:
        """Raises: ValueError (or TypeError) for anything but a state this module wrote."""
        if not isinstance(data, dict):
            raise ValueError(f"a JSON object expected, got {type(data).__name__}")
        if "history" not in data or "preprocessing" not in data:
            raise ValueError("no history or preprocessing")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown keys {unknown}")
        pre = data["preprocessing"]
        if not isinstance(pre, dict):
            raise ValueError(f"preprocessing must be a mapping, got {type(pre).__name__}")
        return cls(**{**data, "preprocessing": Preprocessing.from_dict(pre)})

    @classmethod
    def load(cls, path: Path) -> TrainState:
        """Read a run's ``state.json``.

        Raises:
            ArtifactError: if it is missing, corrupt or not a training state.
        """
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArtifactError(f"{path.parent} has no state.json: it is not a run that can be resumed.") from None
        except (ValueError, OSError) as err:
            raise ArtifactError(f"{path} is corrupt ({type(err).__name__}); the run cannot be resumed: start it "
                                "again with --overwrite.") from err
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as err:
            raise ArtifactError(f"{path} is not an edgecnn training state ({err}); start the run again with "
                                "--overwrite.") from err

    def save(self, path: Path) -> None:
        """Write the state atomically: for a checkpoint, the commit point of its epoch."""
        write_json(path, self.to_dict())


def is_run_model(path: Path) -> bool:
    """Whether ``path`` is a run directory or the ``model.keras`` of one (its card is beside it)."""
    return path.is_dir() or (path.name == "model.keras" and (path.parent / "card.json").is_file())


def load_run_model(run: str | Path, *, checkpoint: bool = False) -> keras.Model:
    """Load ``model.keras`` of a run directory (or a .keras file); with ``checkpoint``, the
    committed checkpoint instead, compiled, optimizer state included.

    Raises:
        ArtifactError: if it is missing or cannot be deserialized.
    """
    path = Path(run)
    if path.is_dir():
        files = RunFiles(path)
        path = files.current_checkpoint(TrainState.load(files.state)) if checkpoint else files.model
    if not path.is_file():
        raise ArtifactError(f"No model at {path}; train one with `edgecnn train --out {Path(run)}`.")
    return load_keras_model(path, compile=checkpoint)
