"""The models a server holds: loaded once at start-up, looked up by name only.

Names are file stems checked against :data:`NAME_PATTERN`; a request names a model, never a
path, and the table of names is fixed before the first request, so nothing a client sends can
make the server open another file.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn._files import sha256_file
from edgecnn.errors import ArtifactError, InputError, ModelNotFoundError
from edgecnn.runtime import InferenceModel, default_model_path, load_model
from edgecnn.runtime.deploy import DEPLOY_FILE, FP32_FILE, resolve_dir
from edgecnn.runtime.heads.segment import SegmentationResult
from edgecnn.runtime.options import RuntimeOptions
from edgecnn.runtime.preprocess import FitInfo, declared_pixels, normalize_batch
from edgecnn.serve._decode import HeavyImage
from edgecnn.serve._http import parse_json
from edgecnn.serve.config import ServeConfig
from edgecnn.serve.errors import ServeError

log = logging.getLogger(__name__)

__all__ = ["ServedModel", "load_models", "lookup", "mask_png", "NAME_PATTERN"]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_INPUT_KINDS = ("tensor", "pixels")


@dataclass(frozen=True)
class ServedModel:
    """One served model: its runtime head (classifier, detector, segmenter or raw), version and batching."""

    name: str
    path: Path
    version: str  # first 12 hex digits of the file's SHA-256: changes whenever the model does
    model: InferenceModel
    max_batch: int

    @property
    def card(self) -> Any:
        return self.model.card

    @property
    def fixed_batch(self) -> int | None:
        """The model's static batch size, None for a dynamic batch axis."""
        return self.model.fixed_batch

    # ----------------------------------------------------------------------------- requests
    def prepare_image(self, data: bytes, light_pixels: int | None = None) -> tuple[np.ndarray, FitInfo]:
        """Encoded image bytes -> (1, H, W, C) uint8 pixels at the input size and how the image was
        fitted to them (:meth:`infer` runs the card's mapping, in the backend where it can).

        Args:
            data: the encoded image.
            light_pixels: raise :class:`~edgecnn.serve._decode.HeavyImage` before decoding when
                the header declares more pixels than this (the caller moves it to the heavy pool).

        Raises:
            ServeError: 400 for an empty, undecodable, truncated or oversized image.
        """
        if not data:
            raise ServeError(400, "empty_body", "The request has no image data; send PNG, JPEG, WebP, ... bytes.")
        if light_pixels is not None and declared_pixels(data) > light_pixels:
            raise HeavyImage
        try:
            pixels, info = self.model.fit(data)
        except InputError as err:
            raise ServeError(400, "invalid_image", str(err)) from err
        return pixels[None], info

    def prepare_json(self, data: bytes, max_instances: int = 256) -> np.ndarray:
        """A JSON body ``{"instances": [...], "input": "tensor" | "pixels"}`` -> an (N, ...) model input.

        ``tensor`` instances are model inputs (normalized, card layout); ``pixels`` instances are
        HxWx3 RGB values 0-255 at the model's input size, mapped by the card (inside the backend, see ``infer``).

        Raises:
            ServeError: 400 for malformed JSON, 413 for more than ``max_instances`` instances,
                422 for a wrong structure, shape, dtype or values.
        """
        try:
            body = parse_json(data)
        except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
            raise ServeError(400, "invalid_json", f"The body is not valid JSON ({str(err)[:200]}).") from err
        instances, kind = _parse_body(body)
        if len(instances) > max_instances:
            raise ServeError(413, "too_many_instances", f"{len(instances)} instances in one request; the limit is "
                             f"{max_instances}. Split the request.")
        try:
            arr = np.asarray(instances)
        except (ValueError, TypeError, RecursionError, OverflowError) as err:  # ragged, too deep, ...
            raise _invalid_tensor(f"`instances` is not a rectangular array of numbers ({str(err)[:200]}).") from err
        if arr.dtype.kind not in "iuf" or arr.ndim < 1:
            raise _invalid_tensor(f"`instances` must hold numbers only; got an array of {arr.dtype.name}.")
        if kind == "pixels":
            return self._pixels_to_input(arr)
        want = tuple(self.card.input_shape()[1:])
        if arr.ndim != 1 + len(want) or tuple(arr.shape[1:]) != want:
            raise _invalid_tensor(f"Each tensor instance must have shape {list(want)} ({self.card.layout}, "
                                  f"normalized); got instances of shape {list(arr.shape)}. Send \"input\": "
                                  "\"pixels\" for raw HxWx3 pixels, or the image itself.")
        with np.errstate(over="ignore"):  # too large for float32 becomes inf, refused just below
            x = arr.astype(np.float32)
        if not np.isfinite(x).all():
            raise _invalid_tensor("The tensors contain NaN, infinite or out-of-float32-range values.")
        return x

    def _pixels_to_input(self, arr: np.ndarray) -> np.ndarray:
        h, w = self.card.input_size
        if arr.ndim != 4 or arr.shape[1:] != (h, w, 3):
            raise _invalid_tensor(f"Each pixels instance must have shape [{h}, {w}, 3] (RGB, 0-255); "
                                  f"got instances of shape {list(arr.shape)}.")
        try:
            pixels = self.model.to_pixels(arr)
        except InputError as err:
            raise _invalid_tensor(str(err)) from err
        if np.issubdtype(pixels.dtype, np.integer):  # checked 0-255: exactly uint8
            return pixels.astype(np.uint8)
        return normalize_batch(pixels, self.card)  # fractional pixel values: numpy's mapping, as given

    def tensor_fit(self) -> FitInfo:
        """How a JSON tensor instance maps to the image: it *is* the model input."""
        h, w = self.card.input_size
        return FitInfo(w, h, 1.0, 1.0)

    # ---------------------------------------------------------------------------- inference
    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output of the model for a batch of uint8 pixels (images, pixel tensors) or of
        preprocessed float model inputs (tensor instances); the runtime core chunks and pads it."""
        return self.model.run_pixels(x) if x.dtype == np.uint8 else self.model.run_all(x)

    def results(self, outputs: list[np.ndarray], fits: list[FitInfo], top_k: int, *,
                mask: bool = False) -> list[dict[str, Any]]:
        """One JSON-able result per image, by the model's task: ``top_k`` classes, ``detections``,
        a ``segmentation`` summary (with ``mask``: and its class map, ``mask_png``), or each raw
        ``outputs`` entry."""
        answers = []
        for result in self.model.postprocess(outputs, fits, top_k=top_k):
            answer = self.model.result_dict(result)
            if mask and isinstance(result, SegmentationResult):
                answer["segmentation"]["mask_png"] = mask_png(result.mask)
            answers.append(answer)
        return answers

    def describe(self) -> dict[str, Any]:
        """The model's entry in ``GET /v1/models``: name, version, batching, providers and card."""
        return {"name": self.name, "version": self.version, "task": self.card.task, "max_batch": self.max_batch,
                "input": {"name": self.model.input_name, "shape": list(self.card.input_shape()),
                          "layout": self.card.layout},
                "providers": self.model.providers, "card": self.card.to_dict()}


def mask_png(mask: np.ndarray) -> str:
    """A class map as base64 PNG: 8-bit grey, each pixel its class index (16-bit for indices past 255)."""
    from PIL import Image

    values = mask.astype(np.uint8 if mask.max(initial=0) < 256 else np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _parse_body(body: Any) -> tuple[list[Any], str]:
    if not isinstance(body, dict) or "instances" not in body:
        raise _invalid_tensor('The JSON body must be an object {"instances": [...], "input": "tensor" | "pixels"}.')
    unknown = sorted(set(body) - {"instances", "input"})
    if unknown:
        raise _invalid_tensor(f"Unknown keys in the JSON body: {unknown}; expected instances and input.")
    instances, kind = body["instances"], body.get("input", "tensor")
    if kind not in _INPUT_KINDS:
        raise _invalid_tensor(f'"input" must be "tensor" or "pixels"; got {str(kind)[:50]!r}.')
    if not isinstance(instances, list) or not instances:
        raise _invalid_tensor("`instances` must be a non-empty list of tensors.")
    return instances, kind


def _invalid_tensor(message: str) -> ServeError:
    return ServeError(422, "invalid_tensor", message)


# -------------------------------------------------------------------------------------- loading
def load_models(source: str | Path | None, config: ServeConfig) -> dict[str, ServedModel]:
    """Open the model file, or every ``*.onnx`` directly inside a directory, by name (file stem).

    ``None`` serves the packaged reference model. An export directory with a current
    ``deploy.json`` (``edgecnn tune``) serves the one file it names, run as it says (backend,
    threads, ...; the options set in ``config.runtime`` win, field by field).

    Raises:
        ArtifactError: for a missing path, an empty directory or an unloadable model.
        ProviderError: when the requested provider cannot run a model.
    """
    path = default_model_path() if source is None else Path(source)
    if path.is_dir() and _is_export_dir(path):
        # an export directory serves one verified file: deploy.json's pick while it is current, else
        # model.onnx (never an unverified sibling), under the name the directory's model always had
        file, options, note = resolve_dir(path, config.runtime)
        name = Path(FP32_FILE).stem
        log.info("%s Serving it alone as %r (pass a file to serve another).", note, name)
        return {name: _open(file.resolve(), config, options, name=name)}
    if path.is_dir():
        root = path.resolve()
        files = []
        for f in sorted(path.glob("*.onnx")):
            if not f.is_file() or f.resolve().parent != root:  # a link leading out of the folder
                log.warning("Skipping %s: not a regular file inside %s.", f, root)
            elif not NAME_PATTERN.match(f.stem):
                log.warning("Skipping %s: %r is not a valid model name (%s).", f, f.stem, NAME_PATTERN.pattern)
            else:
                files.append(f.resolve())
        if not files:
            raise ArtifactError(f"No servable .onnx model in {path}; export one with `edgecnn export`.")
    elif path.is_file():
        if not NAME_PATTERN.match(path.stem):
            raise ArtifactError(f"{path.name}: {path.stem!r} is not a valid model name; rename the file "
                                f"(letters, digits, '.', '_', '-').")
        files = [path.resolve()]
    else:
        raise ArtifactError(f"{path} does not exist; pass an .onnx file or a directory of them.")
    return {f.stem: _open(f, config) for f in files}


def server_threads(config: ServeConfig) -> int:
    """Intra-op threads of a served model: as asked, else every core but one.

    The event loop (HTTP parsing, routing, JSON) and image decoding need a core of their own; on
    a 2-core box, letting onnxruntime spin on both cut seed_cnn's served throughput by a third
    and tripled its p99 (docs/benchmarks.md).
    """
    if config.runtime.threads is not None:
        return config.runtime.threads
    return max(1, ((os.cpu_count() or 2) - 1) // config.workers)


def _is_export_dir(path: Path) -> bool:
    """A folder ``edgecnn export`` wrote (its report, or a deploy.json), not a plain folder of models."""
    return any((path / name).exists() for name in (DEPLOY_FILE, "export_report.json"))


def _open(path: Path, config: ServeConfig, options: RuntimeOptions | None = None, *,
          name: str | None = None) -> ServedModel:
    """Open one served model (as ``name``, default its file's stem); ``options``: how to run it (an
    export's deploy.json merged with ``config.runtime``; default ``config.runtime``), every core but
    one when it sets no threads."""
    name = name or path.stem
    options = options or config.runtime
    if options.threads is None:
        options = replace(options, threads=server_threads(config))
    model = load_model(path, options, max_pixels=config.max_pixels, overrides=config.overrides)
    if model.assumptions():
        log.warning("%s", model.assumptions())
    fixed = model.fixed_batch
    max_batch = min(config.max_batch, fixed) if fixed else config.max_batch
    if fixed == 1 and config.max_batch > 1:
        log.warning("%s has a static batch size of 1: its requests are not batched.", path.name)
    digest = sha256_file(path)[:12]
    log.info("Serving %s (%s %s, %s) as %r, version %s, max batch %d.", path, model.card.task, model.card.name,
             model.card.precision, name, digest, max_batch)
    return ServedModel(name, path, digest, model, max_batch)


def lookup(models: dict[str, ServedModel], name: str) -> ServedModel:
    """The model served under ``name``.

    Raises:
        ModelNotFoundError: for any other name.
    """
    model = models.get(name)
    if model is None:
        raise ModelNotFoundError(f"No model named {name[:128]!r}; this server has {sorted(models)} (GET /v1/models).")
    return model

