"""Lazy imports of optional dependencies with an actionable message."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgecnn.errors import MissingDependencyError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or say which extra installs it.

    Raises:
        MissingDependencyError: if the module cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{module} is required here; install it with `pip install 'edgecnn[{extra}]'`."
        ) from err
