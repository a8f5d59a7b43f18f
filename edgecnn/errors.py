"""One error hierarchy for everything a user can get wrong.

The CLI turns every :class:`EdgecnnError` into a one-line message and exit code 1.
"""

from __future__ import annotations

__all__ = [
    "EdgecnnError",
    "ConfigError",
    "DataError",
    "ModelNotFoundError",
    "ArtifactError",
    "MissingDependencyError",
    "ProviderError",
    "InputError",
    "AccuracyDropError",
    "WorkerError",
]


class EdgecnnError(Exception):
    """Base class of every error edgecnn raises on purpose."""


class ConfigError(EdgecnnError, ValueError):
    """An option or recipe value is impossible (0 epochs, negative LR, unknown key)."""


class DataError(EdgecnnError, ValueError):
    """A dataset is missing, empty, unreadable or of the wrong layout."""


class ModelNotFoundError(EdgecnnError, LookupError):
    """An unknown model, backbone or served model name."""


class ArtifactError(EdgecnnError, ValueError):
    """A run directory, .keras or .onnx file is missing or corrupt."""


class MissingDependencyError(EdgecnnError, ImportError):
    """An optional dependency (an extra) is not installed."""


class ProviderError(EdgecnnError, RuntimeError):
    """An execution provider was asked for but is not the one running the session."""


class InputError(EdgecnnError, ValueError):
    """An image or tensor given for inference cannot be used."""


class AccuracyDropError(EdgecnnError, RuntimeError):
    """A quantized variant lost more accuracy than allowed."""


class WorkerError(EdgecnnError, RuntimeError):
    """A worker of a multi-worker training run never answered, or stopped answering."""
