"""HTTP errors of the server: every one is a JSON body ``{"error": {"status", "code", "message"}}``.

:class:`ServeError` is an :class:`~edgecnn.errors.EdgecnnError` that carries its HTTP status;
runtime errors are mapped by :func:`from_edgecnn_error`, so a client mistake is always a 4xx.
"""

from __future__ import annotations

import json

from edgecnn.errors import EdgecnnError, InputError, ModelNotFoundError

__all__ = ["ServeError", "error_body", "from_edgecnn_error"]


class ServeError(EdgecnnError):
    """A request the server refuses, with its HTTP status, a stable code and headers."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_body(status: int, code: str, message: str, *, v2: bool = False) -> bytes:
    """``{"error": {"status", "code", "message"}}``; under ``/v2`` the Open Inference Protocol's
    ``{"error": "<message>"}``, which Triton clients read."""
    if v2:
        return json.dumps({"error": message}).encode()
    return json.dumps({"error": {"status": status, "code": code, "message": message}}).encode()


def from_edgecnn_error(err: EdgecnnError, *, code: str = "invalid_input", status: int = 400) -> ServeError:
    """The ServeError a library error becomes (input problems are the client's: 4xx)."""
    if isinstance(err, ServeError):
        return err
    if isinstance(err, ModelNotFoundError):
        return ServeError(404, "model_not_found", str(err))
    if isinstance(err, InputError):
        return ServeError(status, code, str(err))
    # Anything else (a model that outputs the wrong class count, ...) is the server's fault.
    return ServeError(500, "internal_error", f"{type(err).__name__}: {err}")

