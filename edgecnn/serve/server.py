"""Run the app under uvicorn: bind (loopback by default), serve, stop gracefully on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

from edgecnn.serve.app import create_app
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
    )
    return uvicorn.Server(uv_config)


def serve(source: str | Path | None, config: ServeConfig, *, sock: socket.socket | None = None) -> None:
    """Serve until interrupted (SIGINT/SIGTERM finish in-flight requests first)."""
    server = build_server(source, config)
    server.run(sockets=[sock] if sock is not None else None)
