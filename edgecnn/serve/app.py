"""The FastAPI application: routes, error handlers, lifespan (warm-up, drain) and middleware."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from python_multipart.multipart import parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgecnn import __version__
from edgecnn.errors import EdgecnnError
from edgecnn.serve._decode import DecodePools
from edgecnn.serve._http import PUBLIC_PATHS, AuthMiddleware, BodyLimitMiddleware, dump_json, multipart_file, read_body
from edgecnn.serve._memory import TrimMiddleware, fix_mmap_threshold
from edgecnn.serve._page import add_page_routes, load_page
from edgecnn.serve._schemas import PREDICT_REQUEST_BODY, ErrorResponse, Health, ModelInfo, ModelList, PredictResponse
from edgecnn.serve.batcher import MicroBatcher, retry_after
from edgecnn.serve.config import ServeConfig
from edgecnn.serve.errors import ServeError, error_body, from_edgecnn_error
from edgecnn.serve.metrics import Metrics, MetricsMiddleware
from edgecnn.serve.models import ServedModel, lookup
from edgecnn.serve.v2 import add_v2_routes

log = logging.getLogger(__name__)

__all__ = ["create_app"]

_IMAGE_TYPES = ("application/octet-stream", "image/")
_ERRORS = {400: "Undecodable, truncated, empty or oversized image; malformed JSON or multipart.",
           401: "Missing or wrong bearer token.", 404: "No model of that name.",
           408: "The request body did not fully arrive in time.",
           413: "Body over the size limit, or too many JSON instances.",
           415: "Unsupported Content-Type.", 422: "Wrong tensor shape, dtype or values, or a bad query parameter.",
           503: "Overloaded (queue full), timed out, not ready or shutting down; see Retry-After."}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": _ERRORS[code]} for code in codes}


def _track_queue(metrics: Metrics, name: str, batcher: MicroBatcher) -> None:
    """The queue depth and in-flight gauges of one model read its batcher when scraped."""
    metrics.track_model(name, lambda: batcher.queued, lambda: batcher.admitted)


def create_app(models: dict[str, ServedModel], config: ServeConfig) -> Any:
    """The ASGI app serving ``models`` (from :func:`edgecnn.serve.load_models`) under ``config``.

    Returns the FastAPI app wrapped in the metrics, token and body-limit middleware; the FastAPI
    object itself is its ``.fastapi`` attribute.
    """
    metrics = Metrics()
    wait = retry_after(config.timeout_s)
    batchers = {name: MicroBatcher(m, max_batch=m.max_batch, max_delay_s=config.max_delay_ms / 1000,
                                   queue_size=config.queue_size, retry_after_s=wait,
                                   on_batch=metrics.batch_observer(name))
                for name, m in models.items()}
    for name, b in batchers.items():
        _track_queue(metrics, name, b)
    state = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await asyncio.gather(*(b.start() for b in batchers.values()))
        # Everything loaded so far (models, FastAPI, the libraries) lives as long as the server:
        # out of the collector's sight, a full collection no longer walks it mid-request.
        gc.freeze()
        state["ready"] = True
        log.info("Ready: %s (max batch %d, max delay %g ms).", ", ".join(models), config.max_batch, config.max_delay_ms)
        yield
        state["ready"] = False  # uvicorn has already waited for in-flight requests; drain what is queued
        await asyncio.gather(*(b.stop(config.shutdown_timeout_s) for b in batchers.values()))
        app.state.decode_pool.shutdown()

    app = FastAPI(title="edgecnn serve", version=__version__, lifespan=lifespan,
                  description="Image models (classify, detect, segment) on onnxruntime, OpenVINO or LiteRT: "
                              "dynamic micro-batching, bounded queue, Prometheus metrics. "
                              "Every error is a JSON body `{\"error\": {status, code, message}}`.")
    app.state.metrics, app.state.batchers, app.state.models = metrics, batchers, models
    _add_error_handlers(app, metrics)
    # Decoding and JSON parsing, per request (Pillow and json release the GIL for the heavy parts).
    decode_pool = DecodePools(config.decode_workers)
    app.state.decode_pool = decode_pool
    _add_routes(app, models, batchers, metrics, config, state, decode_pool)
    add_v2_routes(app, models, batchers, config, state, decode_pool)
    page = load_page() if config.page else {}  # without it, / is a 404 like any unknown path
    if page:
        add_page_routes(app, page)
    _customize_openapi(app, config, sorted(models))

    asgi: Any = BodyLimitMiddleware(app, config.max_body_bytes, on_error=_count(metrics),
                                    max_in_flight=config.max_inflight_bytes)
    if config.token:
        asgi = AuthMiddleware(asgi, config.token, on_error=_count(metrics), public=PUBLIC_PATHS | set(page))
    fix_mmap_threshold()  # large bodies get their own mappings, returned when freed
    asgi = TrimMiddleware(MetricsMiddleware(asgi, metrics))
    asgi.fastapi = app
    return asgi


def _count(metrics: Metrics) -> Any:
    return lambda err: metrics.errors.labels(str(err.status), err.code).inc()


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dump_json(data), status_code=status, media_type="application/json", headers=headers)


class _RejectionLog:
    """One log line per rejected request, at most ``per_second`` a second; the rest are counted
    and said in one line when logging resumes (a flood must not become megabytes of log)."""

    def __init__(self, per_second: int = 10) -> None:
        self.per_second, self.window, self.logged, self.dropped = per_second, 0, 0, 0

    def __call__(self, request: Request, err: ServeError) -> None:
        now = int(time.monotonic())
        if now != self.window:
            if self.dropped:
                log.info("... and %d more rejected requests not logged.", self.dropped)
            self.window, self.logged, self.dropped = now, 0, 0
        if self.logged >= self.per_second:
            self.dropped += 1
            return
        self.logged += 1
        log.info("%d %s %s %s: %s", err.status, err.code, request.method, request.url.path[:200], err.message[:300])


def _add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    count = _count(metrics)
    rejected = _RejectionLog()

    def respond(request: Request, err: ServeError) -> Response:
        count(err)
        if err.status >= 500 and err.code == "internal_error":
            log.error("%s", err.message)
        elif 400 <= err.status < 500:
            rejected(request, err)
        body = error_body(err.status, err.code, err.message, v2=request.url.path.startswith("/v2"))
        return Response(body, status_code=err.status, media_type="application/json", headers=err.headers)

    @app.exception_handler(EdgecnnError)
    async def edgecnn_error(request: Request, err: EdgecnnError) -> Response:
        return respond(request, from_edgecnn_error(err))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> Response:
        where = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in err.errors()[:5])
        return respond(request, ServeError(422, "invalid_parameter", f"Invalid request parameter ({where})."))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return respond(request, ServeError(err.status_code, code, str(err.detail), dict(err.headers or {})))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> Response:  # a bug: logged with its traceback
        log.exception("Unhandled error")
        return respond(request, ServeError(500, "internal_error",
                                           f"Internal error ({type(err).__name__}); see the server log."))


def _media_kind(content_type: str | None) -> tuple[str, dict[bytes, bytes]]:
    ctype, params = parse_options_header(content_type or "")
    media = ctype.decode("latin-1").lower()
    if media == "application/json":
        return "json", params
    if media == "multipart/form-data":
        if not params.get(b"boundary"):
            raise ServeError(400, "invalid_multipart", "multipart/form-data without a boundary parameter.")
        return "multipart", params
    if media.startswith(_IMAGE_TYPES) and media != "image/svg+xml":
        return "image", params
    raise ServeError(415, "unsupported_media_type", f"Content-Type {media or '(none)'!r} is not accepted; send an "
                     "image as image/* or application/octet-stream, a multipart/form-data `file` upload, or "
                     "application/json tensors.")


def _parse_json(model: ServedModel, body: bytes, max_instances: int) -> tuple[Any, list[Any]]:
    x = model.prepare_json(body, max_instances)
    return x, [model.tensor_fit()] * int(x.shape[0])


async def _run(batcher: MicroBatcher, pools: DecodePools, kind: str, params: dict[bytes, bytes], body: bytes,
               top_k: int, max_instances: int, *, mask: bool = False) -> list[Any]:
    """Request body -> one result per image or tensor (a segmenter's with its class map when ``mask``).

    Each request is decoded (image) or parsed (JSON, multipart) on its own in the decode pools, so
    an image that is slow or fails to decode costs its own request, never the batch; the batcher
    only ever sees model inputs.
    """
    if kind == "json":
        x, fits = await pools.call(_parse_json, batcher.model, body, max_instances)
    else:
        image = await pools.call(multipart_file, body, params[b"boundary"]) if kind == "multipart" else body
        x, fit = await pools.image(batcher.model.prepare_image, image, batcher.aside)
        fits = [fit]
    return await batcher.submit(x, fits, top_k=top_k, mask=mask)


def _add_routes(app: FastAPI, models: dict[str, ServedModel], batchers: dict[str, MicroBatcher], metrics: Metrics,
                config: ServeConfig, state: dict[str, bool], decode_pool: DecodePools) -> None:
    wait = str(retry_after(config.timeout_s))

    # The busiest route first: Starlette tries routes in order.
    @app.post("/v1/models/{name}:predict", response_model=PredictResponse, tags=["models"],
              responses=_responses(400, 401, 404, 408, 413, 415, 422, 503),
              openapi_extra={"requestBody": PREDICT_REQUEST_BODY},
              summary="Classify an image (raw bytes or multipart upload) or a batch of JSON tensors.")
    async def predict(name: str, request: Request, top_k: int = Query(
            config.default_top_k, ge=1, le=1000, description="Classes per image."), mask: bool = Query(
            False, description="segment: add each image's class map as `mask_png` (base64 PNG, one class index "
                               "per pixel); other tasks ignore it.")) -> Response:
        model = lookup(models, name)
        kind, params = _media_kind(request.headers.get("content-type"))
        batcher = batchers[name]
        batcher.check_capacity()  # full: 503 before the upload is read
        body = await read_body(request, config.body_timeout_s)  # a queue place only for a complete body
        start = time.perf_counter()
        try:
            async with asyncio.timeout(config.timeout_s), batcher.admit():
                preds = await _run(batcher, decode_pool, kind, params, body, top_k, config.max_instances, mask=mask)
        except TimeoutError:
            raise ServeError(503, "timeout", f"No answer within {config.timeout_s:g} s; the server is busy, retry "
                             "later.", {"Retry-After": wait}) from None
        # From the complete body to the answer: decoding, queue and batch wait, inference, postprocessing.
        timing = f"predict;dur={(time.perf_counter() - start) * 1000:.2f}"
        return _json({"model": name, "version": model.version, "predictions": preds},
                     headers={"Server-Timing": timing})

    @app.get("/healthz", response_model=Health, tags=["health"], summary="Liveness: the process answers.")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", response_model=Health, tags=["health"], responses=_responses(503),
             summary="Readiness: every model is loaded and warmed up, and the server is not stopping.")
    async def readyz() -> Response:
        if not state["ready"]:
            raise ServeError(503, "not_ready", "The models are not loaded yet, or the server is stopping.",
                             {"Retry-After": wait})
        return _json({"status": "ready"})

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics.", responses=_responses(401),
             response_class=Response)
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelList, tags=["models"], responses=_responses(401),
             summary="The served models with their cards.")
    async def list_models() -> Response:
        return _json({"models": [m.describe() for m in models.values()]})

    @app.get("/v1/models/{name}", response_model=ModelInfo, tags=["models"], responses=_responses(401, 404),
             summary="One served model with its card.")
    async def get_model(name: str) -> Response:
        return _json(lookup(models, name).describe())

def _customize_openapi(app: FastAPI, config: ServeConfig, names: list[str]) -> None:
    """List the served model names in the spec, and document the bearer token when one is required."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for path, ops in schema["paths"].items():
                for op in ops.values():
                    for param in op.get("parameters", []):
                        if param["name"] == "name" and param["in"] == "path":
                            param["schema"] = {"type": "string", "enum": names, "title": "Name"}
                    if config.token and path not in PUBLIC_PATHS:
                        op["security"] = [{"bearer": []}]
            if config.token:
                bearer = {"type": "http", "scheme": "bearer"}
                schema.setdefault("components", {})["securitySchemes"] = {"bearer": bearer}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the schema
