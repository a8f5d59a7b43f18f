"""Large JSON request bodies, parsed in a low-priority process instead of under the server's GIL.

orjson holds the GIL for the whole parse: a 6 MB body of three million zeros took the event loop
and the model's thread with it, twice a second per attacking client (issue 21 §1.3). Bodies over
:data:`LARGE_JSON_BYTES` are parsed here, in one worker process at nice +10, and their tensors'
``data`` come back as numpy arrays (a memory copy, not three million Python floats). This module
imports only the standard library, numpy and orjson: the worker starts in a second.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

__all__ = ["LARGE_JSON_BYTES", "parse_large", "lower_priority"]

LARGE_JSON_BYTES = 1 << 20  # 1 MiB: far above a batch of small images' tensors in JSON
_NP = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "UINT8": np.float64}


def lower_priority() -> None:
    """The worker's initializer: nice +10, so the server's own threads go first on a busy CPU."""
    try:
        os.nice(10)
    except OSError:
        pass


def parse_large(head: bytes) -> Any:
    """``head`` parsed as JSON, every input's numeric ``data`` turned into a flat float array (the
    parser then checks its values as for any other). What fails comes back as ``(status,
    message)``: not JSON (400), or a flat ``data`` whose length is not its shape's (422: checked
    here, so a body of millions of values for a small shape never crosses back)."""
    try:
        import orjson

        request = orjson.loads(head)
    except Exception:  # noqa: BLE001 - orjson refuses what json may still read (NaN, huge ints)
        try:
            request = json.loads(head)
        except (ValueError, RecursionError) as err:
            return 400, f"The request header is not valid JSON ({str(err)[:200]})."
    inputs = request.get("inputs") if isinstance(request, dict) else None
    for spec in inputs if isinstance(inputs, list) else ():
        if isinstance(spec, dict) and spec.get("datatype") in _NP and isinstance(spec.get("data"), list):
            shape, data = spec.get("shape"), spec["data"]
            flat = not data or not isinstance(data[0], list)
            if flat and isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape) \
                    and len(data) != math.prod(shape):
                return 422, f"The input has {len(data)} values; its shape {shape} needs {math.prod(shape)}."
            try:
                spec["data"] = np.asarray(spec["data"], dtype=np.float64).reshape(-1)
            except (ValueError, TypeError, OverflowError, RecursionError):
                pass  # left as it came: the parser says what is wrong with it
    return request
