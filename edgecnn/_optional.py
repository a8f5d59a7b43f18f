"""Lazy imports of optional dependencies with an actionable message."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType

from edgecnn.errors import MissingDependencyError

__all__ = ["require", "import_tensorflow_quietly", "quiet_stderr", "pyplot", "EXTRA_OF", "missing_module_message"]

# Which extra installs a module edgecnn imports lazily (the CLI names it when one is missing).
EXTRA_OF = {"tensorflow": "train", "keras": "train", "yaml": "train", "ai_edge_litert": "litert",
            "matplotlib": "plot", "tf2onnx": "export", "onnx": "export", "onnxslim": "export", "sympy": "export",
            "fastapi": "serve", "uvicorn": "serve", "prometheus_client": "serve", "python_multipart": "serve",
            "orjson": "serve", "httptools": "serve", "openvino": "openvino", "pyarrow": "batch", "ray": "ray"}

_TF_MODULES = ("tensorflow", "keras", "tf2onnx")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow once with its C++ start-up lines kept off the terminal.

    TensorFlow 2.21 writes oneDNN/CUDA-stub lines from C++ before its log level applies, so
    stderr is muted for the import alone; ``EDGECNN_TF_LOGS=1`` shows them. Without an NVIDIA
    driver its C++ log level is raised too, or every run logs "failed call to cuInit" as an
    error; its real errors still reach Python as exceptions.
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if not os.path.exists("/dev/nvidiactl") and sys.platform.startswith("linux"):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or os.environ.get("EDGECNN_TF_LOGS"):
        return
    try:
        with quiet_stderr():
            import tensorflow  # noqa: F401
    except ImportError:
        pass  # the real import, with its message, happens where TensorFlow is used


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """File descriptor 2 on /dev/null for the block: C++ libraries' start-up lines (TensorFlow's
    oneDNN notice, LiteRT's "Created TensorFlow Lite XNNPACK delegate") that no log level
    reaches; their errors still arrive as Python exceptions. ``EDGECNN_TF_LOGS=1`` keeps them."""
    if os.environ.get("EDGECNN_TF_LOGS"):
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def missing_module_message(module: str) -> str | None:
    """``keras is required here; install it with ...`` for a module of an extra, else None."""
    extra = EXTRA_OF.get(module.split(".")[0])
    return None if extra is None else (f"{module.split('.')[0]} is required here; install it with "
                                       f"`pip install 'edgecnn[{extra}]'`.")


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the file-only Agg backend (the ``plot`` extra).

    Raises:
        MissingDependencyError: if matplotlib is not installed.
    """
    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or say which extra installs it.

    Raises:
        MissingDependencyError: if the module cannot be imported.
    """
    if module.split(".")[0] in _TF_MODULES:
        import_tensorflow_quietly()
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{module} is required here; install it with `pip install 'edgecnn[{extra}]'`."
        ) from err
