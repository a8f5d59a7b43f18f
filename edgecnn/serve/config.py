"""Settings of ``edgecnn serve``: one frozen dataclass, validated on construction."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from edgecnn.errors import ConfigError
from edgecnn.presets import ModelOverrides
from edgecnn.runtime.options import RuntimeOptions

__all__ = ["ServeConfig", "TOKEN_ENV", "is_loopback"]

TOKEN_ENV = "EDGECNN_TOKEN"  # the bearer token, when not given with --token


@dataclass(frozen=True)
class ServeConfig:
    """How the server binds, batches, queues and limits requests.

    Args:
        host: interface to bind; loopback unless told otherwise.
        port: TCP port (0: any free port).
        token: bearer token required on every endpoint but ``/healthz``, ``/readyz`` and the page
            (None: open).
        max_batch: most images per batched session call (1 turns batching off).
        max_delay_ms: longest a request waits for others to join its batch.
        queue_size: most requests admitted per model at once (queued, decoding or running);
            beyond it the server answers 503 with ``Retry-After``.
        timeout_s: a request not answered within this many seconds gets 503.
        max_body_bytes: larger request bodies get 413 before they are read.
        max_pixels: larger images get 400 from their header, before decoding.
        max_instances: most tensors in one JSON request.
        runtime: how the models run (:class:`~edgecnn.runtime.options.RuntimeOptions`: backend,
            provider, OpenVINO's device and precision, threads, allow_fallback), holding what was
            asked for: a served export directory's ``deploy.json`` supplies the rest, field by field,
            else onnxruntime on the CPU. ``threads`` unset means every core but one (see
            :func:`edgecnn.serve.models.server_threads`).
        default_top_k: classes returned when the request does not say.
        shutdown_timeout_s: how long a stopping server waits for in-flight requests.
        body_timeout_s: a request body that has not fully arrived after this long gets 408 (it holds
            no queue place meanwhile: requests are admitted once their body is complete).
        decode_workers: threads decoding images and parsing JSON, one request each at a time.
        workers: server processes sharing the listening socket (each with its own models).
        max_header_bytes: a request line plus headers over this many bytes gets 431 and a close.
        header_timeout_s: a connection whose request headers are not complete this long after they
            began gets 408 and is closed (slowloris); one that never sends anything is closed.
        max_inflight_bytes: request bodies held at once per worker, in bytes (announced or
            received); a request that would pass it gets 503 with Retry-After before its body is read.
        max_connections: open connections per worker at most (None: the open-files limit, raised to
            its hard limit at start, less a reserve for models and logs). Past it, the connection
            idle the longest is closed for the new one; with none idle, the new one gets 503.
        overrides: what the model flags say (``--task``, ``--input-size``, ``--preprocess``, ...;
            :func:`edgecnn.presets.parse_overrides`), for models without a card or to override theirs.
        page: serve the page to try a model at ``/`` (its files under ``/page/``), public even with a
            token (it holds no secret: the user types the token into it); False leaves ``/`` a 404.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_batch: int = 32
    max_delay_ms: float = 5.0
    queue_size: int = 256
    timeout_s: float = 10.0
    max_body_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 25_000_000
    max_instances: int = 256
    runtime: RuntimeOptions = RuntimeOptions()
    default_top_k: int = 5
    shutdown_timeout_s: float = 30.0
    body_timeout_s: float = 10.0
    workers: int = 1
    max_header_bytes: int = 16 * 1024
    header_timeout_s: float = 10.0
    decode_workers: int = max(2, os.cpu_count() or 2)
    max_connections: int | None = None
    max_inflight_bytes: int = 256 * 1024 * 1024
    overrides: ModelOverrides | None = None
    page: bool = True

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_batch", "queue_size", "max_body_bytes", "max_pixels", "max_instances", "default_top_k",
                     "decode_workers", "max_header_bytes", "workers", "max_connections", "max_inflight_bytes"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("timeout_s", "shutdown_timeout_s", "body_timeout_s", "header_timeout_s"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.max_delay_ms <= 10_000:
            problems.append(f"max_delay_ms must be in 0..10000, got {self.max_delay_ms}")
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be in 0..65535, got {self.port}")
        if self.token is not None and (len(self.token) < 8 or not self.token.isprintable() or " " in self.token):
            problems.append("token must be at least 8 printable characters without spaces")
        if problems:
            raise ConfigError("Invalid serve settings: " + "; ".join(problems) + ".")

    @property
    def batching(self) -> bool:
        return self.max_batch > 1


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
