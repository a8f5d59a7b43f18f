"""``edgecnn serve``: models over HTTP (own API and the Open Inference Protocol)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgecnn.cli._app import main
from edgecnn.cli._options import model_options, runtime_options
from edgecnn.runtime.options import PROVIDERS

if TYPE_CHECKING:
    from edgecnn.presets import ModelOverrides
    from edgecnn.runtime.options import RuntimeOptions


_SERVE_EPILOG = """\b
Examples:
  edgecnn serve                                   # the packaged reference model; try it at http://127.0.0.1:8000/
  edgecnn serve runs/seed/export/model.onnx --max-batch 32 --max-delay-ms 5
  EDGECNN_TOKEN=s3cret-token edgecnn serve models/ --host 0.0.0.0 --port 8080
  curl -H 'Content-Type: image/png' --data-binary @cat.png localhost:8000/v1/models/model:predict
"""


@main.command(epilog=_SERVE_EPILOG)
@click.argument("model_or_dir", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0: every one).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--token", envvar="EDGECNN_TOKEN", default=None, show_envvar=True,
              help="Bearer token required on every endpoint but /healthz, /readyz and the page (visible in `ps`: "
                   "prefer the environment variable or --token-file).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Read the bearer token from this file (its first line).")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(min=1),
              help="Most images per batched session call (1: no batching).")
@click.option("--max-delay-ms", default=5.0, show_default=True, type=click.FloatRange(0, 10_000),
              help="Longest a request waits for others to join its batch.")
@click.option("--queue-size", default=256, show_default=True, type=click.IntRange(min=1),
              help="Requests admitted per model at once; more get 503 with Retry-After.")
@click.option("--timeout", "timeout_s", default=10.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds before an unanswered request gets 503.")
@click.option("--body-timeout", "body_timeout_s", default=10.0, show_default=True,
              type=click.FloatRange(0, min_open=True), help="Seconds a request body may take to arrive; then 408.")
@click.option("--header-timeout", "header_timeout_s", default=10.0, show_default=True,
              type=click.FloatRange(0, min_open=True),
              help="Seconds a request's headers may take to arrive (slowloris); then 408 and the connection closes.")
@click.option("--max-body-mb", default=8.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Largest request body (MiB); larger gets 413.")
@click.option("--max-inflight-mb", default=256.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Request bodies held at once per worker (MiB); past it a request gets 503 with Retry-After before "
                   "its body is read, so memory is bounded by bytes, not only by --queue-size.")
@click.option("--max-connections", type=click.IntRange(min=1), default=None,
              help="Open connections per worker (default: the open-files limit, raised to its hard limit, less a "
                   "reserve); past it the longest-idle keep-alive is closed, with none idle the new one gets 503.")
@click.option("--max-pixels", default=25_000_000, show_default=True, type=click.IntRange(min=1),
              help="Largest image (width x height) decoded; larger gets 400.")
@click.option("--page/--no-page", default=True, show_default=True,
              help="Serve the page to try a model at / (public even with a token: the user types the token into it).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes sharing the port (each loads the models; /metrics is per process); a dead "
                   "worker is replaced, more than five deaths a minute stop the server.")
@runtime_options(providers=PROVIDERS[:3],
                 threads_help="Intra-op threads per worker (default: all cores but one, which stays with HTTP and "
                              "decoding, shared by the workers).")
@model_options()
def serve(model_or_dir: Path | None, host: str, port: int, token: str | None, token_file: Path | None, max_batch: int,
          max_delay_ms: float, queue_size: int, timeout_s: float, body_timeout_s: float, header_timeout_s: float,
          max_body_mb: float, max_inflight_mb: float, max_connections: int | None,
          max_pixels: int, page: bool, workers: int, runtime: RuntimeOptions, overrides: ModelOverrides) -> None:
    """Serve MODEL_OR_DIR (an .onnx file, or every .onnx of a directory by name) over HTTP; an
    export directory with a deploy.json (`edgecnn tune`) serves the file and settings it names.

    Without MODEL_OR_DIR, serves the packaged reference model. Endpoints: POST /v1/models/NAME:predict,
    GET /v1/models, /healthz, /readyz, /metrics; the OpenAPI spec is at /openapi.json, a page to try
    the models at / (unless --no-page).
    """
    from edgecnn.serve import ServeConfig
    from edgecnn.serve import serve as run_server

    if token_file is not None:
        lines = token_file.read_text(encoding="utf-8", errors="replace").splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise click.BadParameter(f"{token_file} is empty; put the token on its first line.",
                                     param_hint="--token-file")
    config = ServeConfig(host=host, port=port, token=token or None, max_batch=max_batch, max_delay_ms=max_delay_ms,
                         queue_size=queue_size, timeout_s=timeout_s, body_timeout_s=body_timeout_s,
                         header_timeout_s=header_timeout_s, workers=workers, runtime=runtime,
                         max_body_bytes=int(max_body_mb * 1024 * 1024), max_connections=max_connections,
                         max_inflight_bytes=int(max_inflight_mb * 1024 * 1024), max_pixels=max_pixels,
                         overrides=overrides, page=page)
    run_server(model_or_dir, config)
