"""Keras model files: the one loader of a ``.keras`` (or legacy ``.h5``) file in edgecnn.

Training (a run's model and checkpoints), export (a run or a user's Keras file) and the ``bench
--compare`` baselines all load Keras files. It lives outside :mod:`edgecnn.train` and
:mod:`edgecnn.export`, which never import each other, beside :mod:`edgecnn._keras_layers`, whose
custom layers (the zoo's ShuffleNet channel ops, the QAT layers, the triangle schedule) must be
registered before a file that uses them can load. Keras-only and imported inside the functions that
need it; the runtime and serve stages never import it (an import contract in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecnn._optional import require
from edgecnn.errors import ArtifactError

__all__ = ["load_keras_model"]


def load_keras_model(path: str | Path, *, compile: bool = False) -> Any:
    """The Keras model saved at ``path``, edgecnn's custom layers registered first.

    Args:
        path: a file written by ``keras.Model.save``.
        compile: restore the training configuration too (loss, metrics, the optimizer and its
            state): a checkpoint to resume from. Off for inference and export.

    Raises:
        ArtifactError: for a missing file, or one that does not deserialize (corrupt, not saved by
            ``keras.Model.save``, or a layer Keras does not know).
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"No Keras model at {path}.")
    import edgecnn._keras_layers  # noqa: F401  (TensorFlow quietly, then the custom layers' registration)

    keras = require("keras", "train")
    try:
        return keras.models.load_model(path, compile=compile)
    except Exception as err:  # zipfile, h5py, json and deserialization errors all mean: this file does not load
        cause = " ".join(str(err).split())[:200]
        raise ArtifactError(f"Cannot load {path} ({type(err).__name__}: {cause}); the file is corrupt or was not "
                            "saved by keras.Model.save.") from err
