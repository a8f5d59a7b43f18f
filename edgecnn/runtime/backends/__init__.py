"""The backends that run a model file, by name: onnxruntime, OpenVINO and LiteRT.

Each row of :data:`REGISTRY` says what a backend reads, the package it needs, the platform name the
Open Inference Protocol's model metadata reports, and the module that opens a file with it. That
module offers three functions, imported on first use (so that this table costs nothing to import):

- ``check(options)``: refuse the :class:`~edgecnn.runtime.options.RuntimeOptions` it cannot honour;
- ``open_session(model, options, *, profile_dir=None)``: the model as a
  :class:`~edgecnn.runtime.backends.base.Session`, with a
  :class:`~edgecnn.runtime.backends.base.SessionInfo`;
- ``pixel_session(session, *, source, card, input_name, options)``: a session taking uint8 pixels
  with the card's mapping inside the backend (:mod:`edgecnn.runtime.pixels`), or None, and one
  line saying where the mapping runs.

Stdlib only: the CLI reads :data:`BACKENDS` for its choices.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecnn.errors import ProviderError

if TYPE_CHECKING:
    from types import ModuleType

    from edgecnn.card import ModelCard
    from edgecnn.runtime.backends.base import Session, SessionInfo
    from edgecnn.runtime.options import RuntimeOptions

__all__ = ["Backend", "REGISTRY", "BACKENDS", "get_backend"]


@dataclass(frozen=True, kw_only=True)
class Backend:
    """One backend: what it reads, what it needs, and its module (see the module docstring)."""

    name: str
    module: str
    suffix: str  # the model files it reads
    platform: str  # the Open Inference Protocol's model metadata "platform" (Triton's names: <runtime>_<format>)
    package: str | None = None  # the import package of the extra it needs (None: a base dependency)
    extra: str | None = None

    def installed(self) -> bool:
        """Whether its package can be imported here (without importing it)."""
        return self.package is None or importlib.util.find_spec(self.package) is not None

    def _impl(self) -> ModuleType:
        return importlib.import_module(self.module)

    def check_file(self, model: str | Path | bytes) -> None:
        """Refuse a file of the other kind (a ``.tflite`` file is LiteRT's, the rest ``.onnx``).

        Raises:
            ProviderError: naming the backend or file to pass instead.
        """
        tflite = not isinstance(model, bytes) and Path(model).suffix.lower() == ".tflite"
        if tflite == (self.suffix == ".tflite"):
            return
        if isinstance(model, bytes):
            raise ProviderError("LiteRT reads .tflite files; pass a path.")
        raise ProviderError(f"{Path(str(model)).name}: LiteRT runs .tflite files, {self.name} runs .onnx files; pass "
                            f"{'--backend litert' if tflite else 'a .tflite file (edgecnn export -q litert-int8)'}.")

    def check(self, options: RuntimeOptions) -> None:
        """Raises: ConfigError, ProviderError for options this backend cannot honour."""
        self._impl().check(options)

    def open(self, model: str | Path | bytes, options: RuntimeOptions, *,
             profile_dir: str | Path | None = None) -> tuple[Session, SessionInfo]:
        """The factory: ``model`` opened with ``options`` (checked first).

        Raises:
            ArtifactError, ProviderError, ConfigError, MissingDependencyError: as the backend's module.
        """
        self.check_file(model)
        impl = self._impl()
        impl.check(options)
        return impl.open_session(model, options, profile_dir=profile_dir)

    def pixel_session(self, session: Session, *, source: str | Path | bytes, card: ModelCard, input_name: str,
                      options: RuntimeOptions) -> tuple[Any, str]:
        """A session of ``source`` taking uint8 NHWC pixels, or None; and where the mapping runs."""
        return self._impl().pixel_session(session, source=source, card=card, input_name=input_name, options=options)


REGISTRY: dict[str, Backend] = {b.name: b for b in (
    Backend(name="onnxruntime", module="edgecnn.runtime.backends.onnxruntime", suffix=".onnx",
            platform="onnxruntime_onnx"),
    Backend(name="openvino", module="edgecnn.runtime.backends.openvino", suffix=".onnx", platform="openvino_onnx",
            package="openvino", extra="openvino"),
    Backend(name="litert", module="edgecnn.runtime.backends.litert", suffix=".tflite", platform="litert_tflite",
            package="ai_edge_litert", extra="litert"),
)}
BACKENDS = tuple(REGISTRY)


def get_backend(name: str) -> Backend:
    """The backend called ``name``.

    Raises:
        ProviderError: for an unknown name.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise ProviderError(f"Unknown backend {name!r}; choose {', '.join(BACKENDS)}.") from None
