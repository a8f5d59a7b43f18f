"""The Open Inference Protocol (KServe v2 REST, as Triton, KServe and Seldon speak it) beside ``/v1``.

Routes: ``GET /v2`` (server metadata), ``/v2/health/live``, ``/v2/health/ready``,
``/v2/models/{name}[/versions/{version}]`` (model metadata), ``.../ready`` and
``POST .../infer``. Inference requests carry tensors as JSON ``data`` or, with the binary tensor
data extension, as raw bytes after a JSON header of ``Inference-Header-Content-Length`` bytes;
answers come back the same way (``binary_data`` per output, ``binary_data_output`` per request).
The classification extension (``"parameters": {"classification": k}`` on an output) returns the
top-k classes as ``"score:index:label"`` strings.

The one input takes what a Triton client sends an image model:

- ``FP32``/``FP16``/``FP64``: model inputs, shape ``[N, *input shape]`` (normalized, card layout);
- ``UINT8``: raw pixels ``[N, H, W, C]`` at the input size, mapped by the card inside the backend (the
  cheapest input: a quarter of FP32's bytes, no numpy pass);
- ``BYTES``: ``[N]`` (or ``[N, 1]``) encoded images (PNG, JPEG, ...), decoded and fitted as ``/v1`` does.

Requests run through the same micro-batcher as ``/v1``; outputs are the model's own tensors. v2
errors are ``{"error": "<message>"}`` with a 4xx status, as the protocol specifies.
"""

from __future__ import annotations

import asyncio
import math
import struct
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

from edgecnn import __version__
from edgecnn.errors import InputError
from edgecnn.runtime.backends import get_backend
from edgecnn.runtime.backends.base import v2_datatype, v2_numpy
from edgecnn.runtime.heads.classify import Classifier
from edgecnn.serve._bigjson import LARGE_JSON_BYTES
from edgecnn.serve._decode import DecodePools
from edgecnn.serve._http import dump_json, parse_json, read_body
from edgecnn.serve._schemas import (
    V2_INFER_BODY,
    V2Error,
    V2InferResponse,
    V2Live,
    V2ModelConfig,
    V2ModelMetadata,
    V2Ready,
    V2ServerMetadata,
)
from edgecnn.serve.batcher import MicroBatcher, retry_after
from edgecnn.serve.config import ServeConfig
from edgecnn.serve.errors import ServeError
from edgecnn.serve.models import ServedModel, lookup

__all__ = ["add_v2_routes", "HEADER_LENGTH", "parse_infer_request", "encode_infer_response"]

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "classification"]
_NP = v2_numpy()  # the datatypes with a numpy dtype (BYTES has none)


def _bad(message: str, status: int = 400) -> ServeError:
    return ServeError(status, "invalid_inference_request", message)


# ------------------------------------------------------------------------------------ requests

def parse_infer_request(model: ServedModel, body: bytes, header_length: str | None,
                        max_instances: int, parsed: Any = None) -> tuple[np.ndarray, list[Any], dict[str, Any]]:
    """A v2 inference request -> (model input, fit info per row, what the answer should hold).

    ``parsed``: the JSON header already parsed elsewhere (a large one, in a worker process).

    Raises:
        ServeError: 400 for a malformed request, 413 for more than ``max_instances`` rows, 422 for a
            tensor of the wrong name, datatype, shape or values.
    """
    head, binary = _split(body, header_length)
    if isinstance(parsed, tuple):  # the worker's (status, one-line error)
        status, message = parsed
        raise _bad(message) if status == 400 else ServeError(status, "invalid_tensor", message)
    if parsed is not None:
        request = parsed
    else:
        try:
            request = parse_json(head)
        except (ValueError, RecursionError) as err:
            raise _bad(f"The request header is not valid JSON ({str(err)[:200]}).") from err
    _check_request(request)
    inputs = request["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise _bad(f"Model {model.name!r} takes one input ({model.model.input_name!r}); got {len(inputs)} inputs.")
    declared = inputs[0]["shape"][0]
    if declared > max_instances:  # refused on what it declares, before a byte of its data is read
        raise ServeError(413, "too_many_instances", f"{declared} rows in one request; the limit is {max_instances}.")
    tensor, used = _tensor(inputs[0], binary, 0)
    if used != len(binary):
        raise _bad(f"The request carries {len(binary) - used} binary bytes that no input claims.")
    name = inputs[0].get("name")
    if name != model.model.input_name:
        raise ServeError(422, "invalid_tensor", f"Model {model.name!r} has the input {model.model.input_name!r}, "
                         f"not {str(name)[:100]!r}.")
    rows = int(tensor.shape[0]) if tensor.ndim else 0
    if rows == 0:
        raise _bad(f"The input {name!r} has no rows (shape {list(tensor.shape)}); send at least one.")
    if rows > max_instances:
        raise ServeError(413, "too_many_instances", f"{rows} rows in one request; the limit is {max_instances}.")
    x, fits = _to_input(model, tensor, inputs[0]["datatype"])
    answer = {"id": request.get("id"), "outputs": _requested(model, request)}
    return x, fits, answer


def json_head(body: bytes, header_length: str | None) -> bytes:
    """The JSON part of a request (all of it without ``Inference-Header-Content-Length``)."""
    if header_length is not None and header_length.isascii() and header_length.isdigit():
        return body[:int(header_length)]
    return body


_MAX_DIM = 2 ** 31 - 1  # Triton's int64 dims, bounded to what a request can carry


def _check_request(request: Any) -> None:
    """The request's structure and types, checked before any of it is used: every malformed field
    is one 400 naming it (issue 21: a list where an object belongs, a shape of 10**400 or of
    booleans, raised inside the parser as a 500)."""
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise _bad('The request must be a JSON object with an "inputs" list.')
    if "id" in request and not isinstance(request["id"], str):
        raise _bad('"id" must be a string.')
    _check_parameters(request.get("parameters"), "the request's parameters")
    for i, spec in enumerate(request["inputs"]):
        if not isinstance(spec, dict):
            raise _bad(f"inputs[{i}] must be an object with name, datatype, shape and data.")
        if not isinstance(spec.get("name"), str) or not isinstance(spec.get("datatype"), str):
            raise _bad(f"inputs[{i}] needs a string name and datatype.")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not shape or len(shape) > 8 or not all(
                type(d) is int and 0 <= d <= _MAX_DIM for d in shape):
            raise _bad(f"inputs[{i}].shape must be a list of 1 to 8 integers in 0..{_MAX_DIM}; got {str(shape)[:100]}.")
        if math.prod(shape) > _MAX_DIM:
            raise _bad(f"inputs[{i}].shape {shape} holds {math.prod(shape):,} elements, more than any request carries.")
        _check_parameters(spec.get("parameters"), f"inputs[{i}].parameters")
    outputs = request.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                    for o in outputs):
            raise _bad('"outputs" must be a list of {"name": ..., "parameters": {...}} objects.')
        for i, o in enumerate(outputs):
            _check_parameters(o.get("parameters"), f"outputs[{i}].parameters")


def _check_parameters(params: Any, where: str) -> None:
    if params is None:
        return
    if not isinstance(params, dict):
        raise _bad(f"{where} must be an object of named parameters; got {type(params).__name__}.")
    for key, kind in (("binary_data_size", int), ("classification", int), ("binary_data", bool),
                      ("binary_data_output", bool)):
        if key in params and (type(params[key]) is not kind or (kind is int and params[key] < 0)):
            raise _bad(f"{where}.{key} must be a{' non-negative integer' if kind is int else ' boolean'}; got "
                       f"{str(params[key])[:40]}.")


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    n = int(header_length) if header_length.isascii() and header_length.isdigit() else -1  # no " 12 ", 1_2, +3
    if not 0 <= n <= len(body):
        raise _bad(f"{HEADER_LENGTH} must be the length of the JSON header (0 to {len(body)}); got "
                   f"{header_length[:40]!r}.")
    return body[:n], body[n:]


def _tensor(spec: dict[str, Any], binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    """One input tensor from its JSON ``data`` or its share of the binary data; and the bytes used."""
    datatype, shape = spec.get("datatype"), spec.get("shape")
    if datatype not in (*_NP, "BYTES"):
        raise ServeError(422, "invalid_tensor", f"Unsupported datatype {str(datatype)[:20]!r}; send FP32 model "
                         "inputs, UINT8 pixels or BYTES encoded images.")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise _bad(f"The input's shape must be a non-empty list of non-negative integers; got {str(shape)[:100]}.")
    count = math.prod(shape)
    params = spec.get("parameters") or {}
    size = params.get("binary_data_size")
    if size is not None:
        if offset + size > len(binary):
            raise _bad(f"binary_data_size {str(size)[:20]} does not fit the {len(binary) - offset} binary bytes sent.")
        raw = binary[offset:offset + size]
        if datatype == "BYTES":
            values = _unpack_bytes(raw)
            if len(values) != count:
                raise _bad(f"The BYTES input holds {len(values)} elements; its shape {shape} says {count}.")
            return np.array(values, dtype=object).reshape(shape), offset + size
        itemsize = np.dtype(_NP[datatype]).itemsize
        if size != count * itemsize:
            raise _bad(f"{size} binary bytes for a {datatype} tensor of shape {shape} (needs {count * itemsize}).")
        return np.frombuffer(raw, dtype=_NP[datatype]).reshape(shape), offset + size
    if "data" not in spec:
        raise _bad('The input has neither "data" nor a binary_data_size parameter.')
    data = spec["data"]
    if datatype == "BYTES":
        flat = list(_flatten(data))
        if not all(isinstance(v, str) for v in flat) or len(flat) != count:
            raise _bad(f"BYTES data must be {count} strings for shape {shape}; send images as binary data "
                       "(binary_data_size) or base64-free strings.")
        try:
            encoded = [v.encode("latin-1") for v in flat]
        except UnicodeEncodeError as err:
            raise _bad(f"BYTES data strings carry bytes as latin-1 characters (0-255); element {err.object[:20]!r} "
                       "is not one: send images as binary data (binary_data_size).") from None
        return np.array(encoded, dtype=object).reshape(shape), offset
    if isinstance(data, np.ndarray) and datatype == "UINT8":  # parsed in the worker process, as float64
        if not (np.isfinite(data).all() and (data == np.round(data)).all() and data.min(initial=0) >= 0
                and data.max(initial=0) <= 255):
            raise ServeError(422, "invalid_tensor", "The input data is not an array of UINT8 (0-255 integers).")
    try:
        arr = np.asarray(data, dtype=_NP[datatype])
    except (ValueError, TypeError, OverflowError, RecursionError) as err:
        raise ServeError(422, "invalid_tensor", f"The input data is not an array of {datatype} ({str(err)[:200]}).") \
            from err
    if arr.size != count:
        raise ServeError(422, "invalid_tensor", f"The input has {arr.size} values; its shape {shape} needs {count}.")
    return arr.reshape(shape), offset


def _flatten(data: Any) -> Any:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _unpack_bytes(raw: bytes) -> list[bytes]:
    """Triton's BYTES serialization: each element is a little-endian uint32 length, then the bytes."""
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise _bad("Truncated BYTES tensor: a length prefix is cut off.")
        (n,) = struct.unpack_from("<I", raw, i)
        if i + 4 + n > len(raw):
            raise _bad("Truncated BYTES tensor: an element is shorter than its length prefix.")
        out.append(raw[i + 4:i + 4 + n])
        i += 4 + n
    return out


def _pack_bytes(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def _to_input(model: ServedModel, tensor: np.ndarray, datatype: str) -> tuple[np.ndarray, list[Any]]:
    """The model input for an FP (tensor), UINT8 (pixels) or BYTES (images) input."""
    card = model.card
    if datatype == "BYTES":
        images = list(tensor.reshape(-1)) if tensor.ndim == 1 or (tensor.ndim == 2 and tensor.shape[1] == 1) else None
        if not images:
            raise ServeError(422, "invalid_tensor", f"BYTES input must be [N] or [N, 1] encoded images; got shape "
                             f"{list(tensor.shape)}.")
        xs, fits = zip(*(model.prepare_image(bytes(im)) for im in images))
        return np.concatenate(xs), list(fits)
    if datatype == "UINT8":
        if tensor.ndim != 4 or tensor.shape[3] not in (1, 3, 4):
            raise ServeError(422, "invalid_tensor", f"UINT8 input is NHWC pixels [N, H, W, 1|3|4] (the model takes "
                             f"[N, {card.input_size[0]}, {card.input_size[1]}, {card.channels}]); got shape "
                             f"{list(tensor.shape)}.")
        try:
            return model.model.to_pixels(tensor), [model.tensor_fit()] * int(tensor.shape[0])
        except InputError as err:
            raise ServeError(422, "invalid_tensor", f"UINT8 input is read as NHWC pixels: {err}") from err
    want = tuple(card.input_shape()[1:])
    if datatype not in ("FP32", "FP16", "FP64") or tensor.ndim != 1 + len(want) or tuple(tensor.shape[1:]) != want:
        raise ServeError(422, "invalid_tensor", f"Model {model.name!r} takes FP32 [N, {', '.join(map(str, want))}] "
                         f"({card.layout}, normalized), UINT8 pixels [N, {card.input_size[0]}, {card.input_size[1]}, "
                         f"{card.channels}] or BYTES images [N]; got {datatype} {list(tensor.shape)}.")
    with np.errstate(over="ignore"):
        x = tensor.astype(np.float32)
    if not np.isfinite(x).all():
        raise ServeError(422, "invalid_tensor", "The input contains NaN, infinite or out-of-float32-range values.")
    return x, [model.tensor_fit()] * int(x.shape[0])


def _requested(model: ServedModel, request: dict[str, Any]) -> list[dict[str, Any]]:
    """The outputs to return: ``[{"name", "binary", "classification"}]``."""
    params = request.get("parameters") or {}
    default_binary = params.get("binary_data_output", False)
    names = model.model.output_names
    asked = request.get("outputs")
    if asked is None:
        return [{"name": n, "binary": default_binary, "classification": 0} for n in names]
    out = []
    for o in asked:
        if o.get("name") not in names:
            raise ServeError(422, "invalid_tensor", f"Model {model.name!r} has no output {str(o.get('name'))[:100]!r}; "
                             f"its outputs are {names}.")
        p = o.get("parameters") or {}
        k = p.get("classification", 0)
        if k and model.card.task != "classify":
            raise _bad(f"classification must be a positive integer on a classifier's output; got {str(k)[:20]}.")
        out.append({"name": o["name"], "binary": p.get("binary_data", default_binary), "classification": k})
    return out


# ----------------------------------------------------------------------------------- answers

def encode_infer_response(model: ServedModel, outputs: list[np.ndarray],
                          answer: dict[str, Any]) -> tuple[bytes, int | None]:
    """The v2 answer body, and the JSON header's length when binary data follows it."""
    by_name = dict(zip(model.model.output_names, outputs))
    tensors, chunks = [], []
    for want in answer["outputs"]:
        arr = by_name[want["name"]]
        if want["classification"]:
            arr = _classification(model, arr, want["classification"])
        arr = np.asarray(arr)
        datatype = "BYTES" if arr.dtype == object else v2_datatype(arr.dtype)
        entry: dict[str, Any] = {"name": want["name"], "datatype": datatype, "shape": list(arr.shape)}
        if want["binary"]:
            raw = _pack_bytes(list(arr.reshape(-1))) if datatype == "BYTES" else np.ascontiguousarray(arr).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            flat = arr.reshape(-1)
            entry["data"] = [v.decode("utf-8", "replace") for v in flat] if datatype == "BYTES" else flat.tolist()
        tensors.append(entry)
    head = {"model_name": model.name, "model_version": model.version, "outputs": tensors}
    if answer.get("id") is not None:
        head["id"] = answer["id"]
    text = dump_json(head)
    return (text + b"".join(chunks), len(text)) if chunks else (text, None)


def _classification(model: ServedModel, out: np.ndarray, k: int) -> np.ndarray:
    """Triton's classification extension: ``[N, k]`` strings ``"score:index:label"``."""
    clf = model.model
    assert isinstance(clf, Classifier), "_requested asks a classifier's output only"
    proba = clf.probabilities(out)
    return np.array([[f"{p.probability:f}:{p.index}:{p.label}".encode() for p in row] for row in clf.top_k(proba, k)],
                    dtype=object)


def _metadata(model: ServedModel) -> dict[str, Any]:
    core = model.model

    def tensor(t: Any) -> dict[str, Any]:
        return {"name": t.name, "datatype": v2_datatype(t.type),
                "shape": [d if isinstance(d, int) and d > 0 else -1 for d in t.shape]}

    return {"name": model.name, "versions": [model.version], "platform": get_backend(core.backend).platform,
            "inputs": [tensor(t) for t in core.graph_inputs], "outputs": [tensor(t) for t in core.graph_outputs],
            "parameters": {"task": model.card.task, "labels": len(model.card.class_names)}}


def _config(model: ServedModel) -> dict[str, Any]:
    """Triton's model configuration (``GET /v2/models/{name}/config``, the model repository
    extension tritonclient's ``get_model_config`` reads): dims without the batch axis, which
    ``max_batch_size`` stands for."""
    meta = _metadata(model)

    def tensor(t: dict[str, Any]) -> dict[str, Any]:
        return {"name": t["name"], "data_type": f"TYPE_{t['datatype']}", "dims": t["shape"][1:]}

    return {"name": model.name, "platform": meta["platform"], "backend": meta["platform"].split("_")[0],
            "max_batch_size": model.max_batch, "version_policy": {"latest": {"num_versions": 1}},
            "input": [tensor(t) for t in meta["inputs"]], "output": [tensor(t) for t in meta["outputs"]],
            "parameters": {k: {"string_value": str(v)} for k, v in meta["parameters"].items()}}


# ------------------------------------------------------------------------------------- routes

def add_v2_routes(app: FastAPI, models: dict[str, ServedModel], batchers: dict[str, MicroBatcher],
                  config: ServeConfig, state: dict[str, bool], decode_pool: DecodePools) -> None:
    """Register the Open Inference Protocol routes on ``app``: metadata and health, then inference."""
    _add_metadata_routes(app, models, state)
    _add_infer_routes(app, models, batchers, config, decode_pool)


def _json(data: Any) -> Response:
    return Response(dump_json(data), media_type="application/json")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": V2Error, "description": "An Open Inference Protocol error."} for c in codes}


def _model(models: dict[str, ServedModel], name: str, version: str | None) -> ServedModel:
    model = lookup(models, name)
    if version is not None and version != model.version:
        raise ServeError(404, "unknown_version", f"Model {name!r} has version {model.version!r}, not "
                         f"{version[:40]!r}.")
    return model


def _add_metadata_routes(app: FastAPI, models: dict[str, ServedModel], state: dict[str, bool]) -> None:
    """Server and model metadata, configuration, liveness and readiness."""

    @app.get("/v2", tags=["v2"], response_model=V2ServerMetadata, responses=_errors(401),
             summary="Server metadata (Open Inference Protocol).")
    async def server_metadata() -> Response:
        return _json({"name": "edgecnn", "version": __version__, "extensions": EXTENSIONS})

    @app.get("/v2/health/live", tags=["v2"], response_model=V2Live, summary="Liveness (Open Inference Protocol).")
    async def live() -> Response:
        return _json({"live": True})

    @app.get("/v2/health/ready", tags=["v2"], response_model=V2Ready, responses=_errors(503),
             summary="Readiness (Open Inference Protocol).")
    async def ready() -> Response:
        if not state["ready"]:
            raise ServeError(503, "not_ready", "The models are not loaded yet, or the server is stopping.")
        return _json({"ready": True})

    @app.get("/v2/models/{name}", tags=["v2"], response_model=V2ModelMetadata, responses=_errors(401, 404),
             summary="Model metadata (Open Inference Protocol).")
    async def model_metadata(name: str) -> Response:
        return _json(_metadata(_model(models, name, None)))

    @app.get("/v2/models/{name}/config", tags=["v2"], response_model=V2ModelConfig, responses=_errors(401, 404),
             summary="Model configuration (Triton's, as tritonclient's get_model_config reads it).")
    async def model_config(name: str) -> Response:
        return _json(_config(_model(models, name, None)))

    @app.get("/v2/models/{name}/versions/{version}/config", tags=["v2"], response_model=V2ModelConfig,
             responses=_errors(401, 404),
             summary="Model configuration of one version.")
    async def model_version_config(name: str, version: str) -> Response:
        return _json(_config(_model(models, name, version)))

    @app.get("/v2/models/{name}/versions/{version}", tags=["v2"], response_model=V2ModelMetadata,
             responses=_errors(401, 404), summary="Model metadata of one version.")
    async def model_version_metadata(name: str, version: str) -> Response:
        return _json(_metadata(_model(models, name, version)))

    @app.get("/v2/models/{name}/ready", tags=["v2"], response_model=V2Ready, responses=_errors(401, 404, 503),
             summary="Model readiness (Open Inference Protocol).")
    async def model_ready(name: str) -> Response:
        _model(models, name, None)
        if not state["ready"]:
            raise ServeError(503, "not_ready", "The models are not loaded yet, or the server is stopping.")
        return _json({"name": name, "ready": True})

    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"], response_model=V2Ready,
             responses=_errors(401, 404, 503), summary="Model version readiness.")
    async def model_version_ready(name: str, version: str) -> Response:
        _model(models, name, version)
        return await model_ready(name)


def _add_infer_routes(app: FastAPI, models: dict[str, ServedModel], batchers: dict[str, MicroBatcher],
                      config: ServeConfig, decode_pool: DecodePools) -> None:
    """``POST .../infer``, of the model and of one version: through the model's micro-batcher."""

    async def infer(name: str, version: str | None, request: Request) -> Response:
        model = _model(models, name, version)
        batcher = batchers[name]
        batcher.check_capacity()
        body = await read_body(request, config.body_timeout_s)
        header = request.headers.get(HEADER_LENGTH)
        try:
            async with asyncio.timeout(config.timeout_s), batcher.admit():
                head = json_head(body, header)
                parsed = await decode_pool.large_json(head) if len(head) > LARGE_JSON_BYTES else None
                x, fits, answer = await decode_pool.call(parse_infer_request, model, body, header, config.max_instances,
                                                         parsed)
                outputs = await batcher.submit(x, fits, top_k=0, raw=True)
        except TimeoutError:
            raise ServeError(503, "timeout", f"No answer within {config.timeout_s:g} s; the server is busy.",
                             {"Retry-After": str(retry_after(config.timeout_s))}) from None
        payload, head_length = encode_infer_response(model, outputs, answer)
        if head_length is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream", headers={HEADER_LENGTH: str(head_length)})

    responses = _errors(400, 401, 404, 408, 413, 422, 503)
    body = {"requestBody": V2_INFER_BODY}

    @app.post("/v2/models/{name}/infer", tags=["v2"], response_model=V2InferResponse, responses=responses,
              openapi_extra=body, summary="Inference (Open Inference Protocol, JSON or binary).")
    async def model_infer(name: str, request: Request) -> Response:
        return await infer(name, None, request)

    @app.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"], response_model=V2InferResponse,
              responses=responses, openapi_extra=body, summary="Inference on one version.")
    async def model_version_infer(name: str, version: str, request: Request) -> Response:
        return await infer(name, version, request)
