"""Run the app under uvicorn: bind (loopback by default), serve, stop gracefully on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

from edgecnn.serve.app import create_app
from edgecnn.serve.batcher import retry_after
from edgecnn.serve.config import ServeConfig, is_loopback
from edgecnn.serve.models import load_models

log = logging.getLogger(__name__)

__all__ = ["build_server", "serve"]


def build_server(source: str | Path | None, config: ServeConfig) -> Any:
    """A ``uvicorn.Server`` serving the model(s) of ``source`` (None: the packaged reference model).

    Models are loaded here, before anything binds, so a bad model fails the start.

    Raises:
        ArtifactError, ProviderError: when a model cannot be served as asked.
    """
    import uvicorn

    if not is_loopback(config.host):
        log.warning("Listening on %s: reachable from other machines%s.", config.host,
                    "" if config.token else " WITHOUT a token (pass --token or set EDGECNN_TOKEN)")
    app = create_app(load_models(source, config), config)
    uv_config = uvicorn.Config(
        app, host=config.host, port=config.port, lifespan="on", access_log=False, log_config=None,
        # uvicorn stops accepting, waits for in-flight requests this long, then runs the app's
        # shutdown, which drains the batch queues.
        timeout_graceful_shutdown=int(config.shutdown_timeout_s), server_header=False,
        http=_protocol(config, app),
        # Longer than any Retry-After we send: a polite client that waits as told finds its
        # connection still open instead of paying a new handshake (and a race with the close).
        timeout_keep_alive=max(5, retry_after(config.timeout_s) + 10),
    )
    return uvicorn.Server(uv_config)


def _protocol(config: ServeConfig, app: Any) -> Any:
    """The HTTP protocol with header limits (httptools), or uvicorn's choice where httptools is missing."""
    try:
        from edgecnn.serve._protocol import protocol_class
    except ImportError:  # pragma: no cover - httptools is part of the [serve] extra
        log.warning("httptools is not installed: request headers are not size- or time-limited.")
        return "auto"
    errors = app.fastapi.state.metrics.errors
    return protocol_class(max_header_bytes=config.max_header_bytes, header_timeout_s=config.header_timeout_s,
                          on_reject=lambda status, code: errors.labels(str(status), code).inc())


def serve(source: str | Path | None, config: ServeConfig, *, sock: socket.socket | None = None) -> None:
    """Serve until interrupted (SIGINT/SIGTERM finish in-flight requests first)."""
    server = build_server(source, config)
    server.run(sockets=[sock] if sock is not None else None)
