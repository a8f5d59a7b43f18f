"""HTTP inference server (the ``[serve]`` extra) on the runtime core: any model the runtime opens,
answered by its task's head (classification, detection, segmentation, raw outputs), on any of its
backends, over edgecnn's ``/v1`` API and the Open Inference Protocol (``/v2``), with a page to try
a model at ``/``.

>>> from edgecnn.serve import ServeConfig, serve
>>> serve("models/", ServeConfig(port=8000, max_batch=32, max_delay_ms=5))

Imports FastAPI, uvicorn and prometheus-client; never TensorFlow.
"""

from __future__ import annotations

from edgecnn._optional import require

for _module in ("fastapi", "uvicorn", "prometheus_client", "python_multipart", "orjson"):
    require(_module, "serve")

from edgecnn.serve.app import create_app  # noqa: E402
from edgecnn.serve.config import TOKEN_ENV, ServeConfig  # noqa: E402
from edgecnn.serve.errors import ServeError  # noqa: E402
from edgecnn.serve.models import ServedModel, load_models  # noqa: E402
from edgecnn.serve.server import build_server, serve  # noqa: E402

__all__ = ["ServeConfig", "ServeError", "ServedModel", "TOKEN_ENV", "build_server", "create_app", "load_models",
           "serve"]
