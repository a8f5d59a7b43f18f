"""Run the app under uvicorn: bind (loopback by default), serve, stop gracefully on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from edgecnn.errors import EdgecnnError
from edgecnn.serve.app import create_app
from edgecnn.serve.batcher import retry_after
from edgecnn.serve.config import ServeConfig, is_loopback
from edgecnn.serve.errors import ServeError
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
                          max_connections=config.max_connections or _connection_budget(config),
                          on_reject=lambda status, code: errors.labels(str(status), code).inc())


_FD_RESERVE = 128  # open files a worker needs besides its connections: models, logs, pools, pipes


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (said in one line); returns
    the soft limit now in force. Idle connections past the usual 1024 made every request fail."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("Raised the open-files limit from %d to %d.", soft, target)
            soft = target
        except (ValueError, OSError) as err:
            log.warning("Cannot raise the open-files limit from %d (%s).", soft, err)
    return soft


def _connection_budget(config: ServeConfig) -> int:
    """Connections per worker when --max-connections is not given: the open-files limit, less a
    reserve, shared by the workers."""
    return max(16, (raise_open_files_limit() - _FD_RESERVE) // config.workers)


def serve(source: str | Path | None, config: ServeConfig, *, sock: socket.socket | None = None) -> None:
    """Serve until interrupted (SIGINT/SIGTERM finish in-flight requests first).

    With ``config.workers`` > 1, that many processes share one listening socket (the kernel hands
    each new connection to one of them), each with its own copy of the models, batcher and
    metrics: one Python process parses HTTP under one GIL, and for a model of microseconds that,
    not the model, caps the requests per second.

    Raises:
        ArtifactError, ProviderError: when a model cannot be served as asked.
        ServeError: when a worker process fails.
    """
    if config.workers == 1:
        # the port first: one in use is a one-line error before any model loads or "Ready" is said
        listener = sock if sock is not None else _bind(config.host, config.port)
        try:
            server = build_server(source, config)
            host, port = listener.getsockname()[:2]
            log.info("Listening on http://%s:%d (Ctrl+C stops, finishing in-flight requests).",
                     f"[{host}]" if ":" in host else host, port)
            server.run(sockets=[listener])
        finally:
            listener.close()
        return
    if sock is None and hasattr(socket, "SO_REUSEPORT"):
        # Each worker listens on its own socket of one SO_REUSEPORT group: the kernel spreads
        # connections over them evenly (one shared socket lets whichever worker wakes first take
        # a burst of new connections). This socket only holds the port, it never listens.
        holder = _bind(config.host, config.port, reuse_port=True)
        _serve_workers(source, config, holder, own_sockets=True)
    else:
        listener = sock or _bind(config.host, config.port)
        listener.listen(2048)
        _serve_workers(source, config, listener, own_sockets=False)


def _bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ServeError(500, "bind_failed", f"Cannot listen on {host}:{port} ({err.strerror}); pick another "
                         "--port or --host.") from None
    return sock


def _worker(source: str | Path | None, config: ServeConfig, sock: socket.socket, own_socket: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        if own_socket:
            sock = _bind(config.host, sock.getsockname()[1], reuse_port=True)
            sock.listen(2048)
        build_server(source, config).run(sockets=[sock])
    except EdgecnnError as err:
        log.error("%s", err)
        sys.exit(1)


_RESTART_WINDOW_S = 60.0  # more than _MAX_RESTARTS restarts within it: workers die in a loop
_MAX_RESTARTS = 5


def _serve_workers(source: str | Path | None, config: ServeConfig, sock: socket.socket, *, own_sockets: bool) -> None:
    """Start ``config.workers`` processes and supervise them: one that dies (a kill -9, a crash) is
    replaced after a backoff while the others keep serving, with one log line; a worker that exits
    with status 1 (it could not load a model: its message is logged) stops the server, and so do
    more than five deaths a minute."""
    # fork: this process has loaded no model (onnxruntime's threads must not cross a fork); each
    # worker loads its own after it.
    ctx = multiprocessing.get_context("fork")

    def start(i: int) -> Any:
        proc = ctx.Process(target=_worker, args=(source, config, sock, own_sockets), name=f"edgecnn-worker-{i}",
                           daemon=False)
        proc.start()
        return proc

    procs = [start(i) for i in range(config.workers)]
    log.info("%d worker processes share %s:%d.", len(procs), config.host, sock.getsockname()[1])
    stopping = False
    deaths: list[float] = []
    due: dict[int, float] = {}  # slot -> when its replacement starts

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while any(p.is_alive() for p in procs) or (due and not stopping):
            for i, p in enumerate(procs):
                p.join(0.1)
                now = time.monotonic()
                if i in due and now >= due[i] and not stopping:
                    del due[i]
                    procs[i] = start(i)
                    continue
                if stopping or i in due or p.exitcode in (None, 0, -signal.SIGTERM):
                    continue
                if p.exitcode == 1:  # it could not start: the same would happen again
                    _fail(procs, config, f"{p.name} exited with status 1 (its message is above); the server stopped.")
                deaths = [t for t in deaths if now - t < _RESTART_WINDOW_S] + [now]
                if len(deaths) > _MAX_RESTARTS:
                    _fail(procs, config, f"{len(deaths)} workers died within {_RESTART_WINDOW_S:g} s (the last, "
                                         f"{p.name}, with status {p.exitcode}); the server stopped.")
                delay = min(30.0, 0.5 * 2 ** (len(deaths) - 1))
                due[i] = now + delay
                log.warning("%s exited with status %s; the other workers keep serving, a new one starts in %.1f s.",
                            p.name, p.exitcode, delay)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sock.close()


def _fail(procs: list[Any], config: ServeConfig, message: str) -> None:
    for p in procs:
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        p.join(config.shutdown_timeout_s)
    raise ServeError(500, "worker_failed", message)
