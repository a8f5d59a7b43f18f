"""Prometheus metrics of one app, in its own registry (several apps can live in one process)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "MetricsMiddleware"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """Requests and errors by status code, latency and batch-size histograms, queue depth."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("edgecnn_http_requests", "HTTP requests by route, method and status code.",
                                ["route", "method", "code"], registry=self.registry)
        self.errors = Counter("edgecnn_http_errors", "Error responses by status and error code.",
                              ["code", "error"], registry=self.registry)
        self.latency = Histogram("edgecnn_http_request_duration_seconds", "Time from request to response.",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("edgecnn_batch_size", "Rows per batched session call.", ["model"],
                                    buckets=_BATCH_BUCKETS, registry=self.registry)
        self.inference = Histogram("edgecnn_inference_duration_seconds", "Time of one batched session call.",
                                   ["model"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("edgecnn_queue_depth", "Requests waiting for a batch.", ["model"],
                                 registry=self.registry)
        self.in_flight = Gauge("edgecnn_requests_in_flight", "Requests admitted and not yet answered.", ["model"],
                               registry=self.registry)

    def track_model(self, name: str, queued: Callable[[], float], admitted: Callable[[], float]) -> None:
        self.queue_depth.labels(name).set_function(queued)
        self.in_flight.labels(name).set_function(admitted)

    def batch_observer(self, model: str) -> Callable[[int, float], None]:
        """Records one batched session call of ``model``: its rows and its seconds."""
        sizes, times = self.batch_size.labels(model), self.inference.labels(model)

        def observe(rows: int, seconds: float) -> None:
            sizes.observe(rows)
            times.observe(seconds)

        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts every response by route template and status, and times it."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            # The route template, never the raw path: a client cannot grow the label set.
            label = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(label, method if method in _METHODS else "other", str(status[0])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)
