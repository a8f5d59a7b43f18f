"""The embeddable predictor: ONNX file + model card -> top-k labels with probabilities."""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from edgecnn.card import ONNX_METADATA_KEY, ModelCard
from edgecnn.errors import ArtifactError, ConfigError, InputError
from edgecnn.runtime.preprocess import DEFAULT_MAX_PIXELS, ImageLike, check_pixels, load_image, normalize_batch
from edgecnn.runtime.session import CudaOptions, NodePlacement, create_session, node_placement

log = logging.getLogger(__name__)

__all__ = ["Classifier", "Prediction", "default_model_path", "read_card", "DEFAULT_MODEL"]

DEFAULT_MODEL = "seed_cnn_cifar10.onnx"
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


@dataclass(frozen=True)
class Prediction:
    """One of the top-k classes of an image."""

    label: str
    index: int
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_model_path() -> Path:
    """The reference model packaged with edgecnn (``edgecnn/assets/models/seed_cnn_cifar10.onnx``).

    Raises:
        ArtifactError: if this checkout or install does not contain it yet.
    """
    path = Path(str(resources.files("edgecnn") / "assets" / "models" / DEFAULT_MODEL))
    if not path.is_file():
        raise ArtifactError(
            f"The reference model {path} is missing. Make it with `edgecnn train --model seed_cnn "
            "--data cifar10 --out runs/seed_cnn` then `edgecnn export runs/seed_cnn --quantize int8` and copy "
            f"the exported ONNX to {path}, or pass a MODEL path explicitly."
        )
    return path


def read_card(session: ort.InferenceSession) -> ModelCard | None:
    """The model card stored in the ONNX ``metadata_props``, or None when there is none.

    Raises:
        ArtifactError: if a card is present but is not a valid one.
    """
    meta = session.get_modelmeta().custom_metadata_map
    text = meta.get(ONNX_METADATA_KEY)
    return None if text is None else ModelCard.from_json(text)


class Classifier:
    """Image classifier over an ONNX model, preprocessing exactly as training did.

    Args:
        model_path: the ``.onnx`` file (its model card is read from the metadata).
        provider: ``cpu``, ``cuda``, ``tensorrt`` or ``auto``.
        threads: intra-op threads (None: onnxruntime's default, one per physical core).
        allow_fallback: run on the CPU with a warning when the requested provider is unusable,
            instead of raising :class:`~edgecnn.errors.ProviderError`.
        mean, std, layout, labels, input_size: override the card, or describe an ONNX without one
            (``mean``/``std`` per RGB channel on the 0-255 scale, ``input_size`` = (height, width)).
        output_kind: ``probabilities`` or ``logits`` (for an ONNX without a card; default
            probabilities).
        max_pixels: images with more pixels are refused before decoding.
        cuda: options of the CUDA provider (cuDNN algorithm search, CUDA graphs, NHWC kernels,
            device); see :class:`~edgecnn.runtime.session.CudaOptions`.
        io_binding: run through IO binding with input and output buffers on the session's device,
            reused (refilled in place) while the input shape stays the same. None: on for a GPU
            session, off on the CPU. CUDA graphs always use it, and then accept only the shape of
            the first call (or the model's static shape).

    A float16 model input (an fp16 export without float32 I/O) gets the preprocessed float32
    batch cast to float16; outputs come back as the model makes them (``predict_proba`` returns
    float32).

    Raises:
        ArtifactError: for a missing or corrupt file, or a card that does not match the model.
        ProviderError: when the requested provider is not the one running the session.
        ConfigError: for CUDA graphs without a CUDA provider or without IO binding.
    """

    def __init__(
        self,
        model_path: str | Path,
        provider: str = "cpu",
        threads: int | None = None,
        allow_fallback: bool = False,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        layout: str | None = None,
        labels: Sequence[str] | None = None,
        input_size: tuple[int, int] | None = None,
        output_kind: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cuda: CudaOptions | None = None,
        io_binding: bool | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        if cuda is not None and cuda.cuda_graph:
            if provider == "cpu":
                raise ConfigError("CUDA graphs (cuda_graph=True, --cuda-graph) need provider='cuda' (--provider cuda).")
            if io_binding is False:
                raise ConfigError("CUDA graphs replay fixed device buffers: they need IO binding (drop --no-io-binding).")
        self.cuda = cuda
        self.allow_fallback = allow_fallback
        self.session, self.info = create_session(
            self.model_path, provider=provider, threads=threads, allow_fallback=allow_fallback, cuda=cuda
        )
        overrides = {"mean": mean, "std": std, "layout": layout, "class_names": labels,
                     "input_size": input_size, "output_kind": output_kind}
        self.card = self._make_card(read_card(self.session), {k: v for k, v in overrides.items() if v is not None})
        self._input = self._check_io()
        self.input_name = self._input.name
        self.input_dtype = _ORT_DTYPES.get(self._input.type, np.float32)
        self.output_name = self._output_name()
        self.max_pixels = max_pixels
        on_gpu = self.info.device == "cuda"
        self.cuda_graph = bool(on_gpu and cuda is not None and cuda.cuda_graph)
        self._use_io_binding = self.cuda_graph or (on_gpu if io_binding is None else bool(io_binding))
        self._binder = _DeviceBinder(self.session, self.input_name, self.output_name,
                                     device="cuda" if on_gpu else "cpu", device_id=cuda.device_id if cuda else 0,
                                     fixed_shape=self.cuda_graph)

    # ------------------------------------------------------------------------------ properties
    @property
    def providers(self) -> list[str]:
        """The providers the session actually runs on (``session.get_providers()``)."""
        return list(self.session.get_providers())

    @property
    def io_binding(self) -> bool:
        """Whether :meth:`run` goes through IO binding with reused device buffers."""
        return self._use_io_binding

    @property
    def labels(self) -> list[str]:
        return list(self.card.class_names)

    def __repr__(self) -> str:
        return (f"Classifier({str(self.model_path)!r}, model={self.card.name!r}, precision={self.card.precision!r}, "
                f"providers={self.providers})")

    # ---------------------------------------------------------------------------- construction
    def _make_card(self, card: ModelCard | None, overrides: dict[str, Any]) -> ModelCard:
        if card is not None:
            return ModelCard.from_dict({**card.to_dict(), **overrides}) if overrides else card
        inp = self.session.get_inputs()[0]
        shape = list(inp.shape)
        layout = overrides.get("layout") or _guess_layout(shape)
        if "input_size" not in overrides:
            hw = shape[2:4] if layout == "nchw" else shape[1:3]
            if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in hw):
                raise ArtifactError(
                    f"{self.model_path} has no model card and its input {inp.name!r} has shape {shape}; "
                    "pass input_size=(height, width) (and mean, std, labels)."
                )
            overrides["input_size"] = tuple(hw)
        if "class_names" not in overrides:
            n = self.session.get_outputs()[0].shape[-1]
            if not isinstance(n, int):
                raise ArtifactError(f"{self.model_path} has no model card and no static class count; pass labels=[...].")
            overrides["class_names"] = [str(i) for i in range(n)]
        log.info("%s has no model card; using %s.", self.model_path, overrides)
        try:
            return ModelCard(name=self.model_path.stem, architecture="unknown", layout=layout,
                             input_name=inp.name, output_name=self.session.get_outputs()[0].name,
                             **{k: v for k, v in overrides.items() if k != "layout"})
        except TypeError as err:
            raise ArtifactError(f"Invalid override for {self.model_path}: {err}.") from err

    def _check_io(self) -> Any:
        inputs = {i.name: i for i in self.session.get_inputs()}
        inp = inputs.get(self.card.input_name) or (next(iter(inputs.values())) if len(inputs) == 1 else None)
        if inp is None:
            raise ArtifactError(f"{self.model_path}: the card names input {self.card.input_name!r}, the model has {list(inputs)}.")
        expected = self.card.input_shape()
        if len(inp.shape) != 4 or any(isinstance(a, int) and b is not None and a != b
                                      for a, b in zip(inp.shape, expected)):
            raise ArtifactError(
                f"{self.model_path}: the model input {inp.name!r} has shape {inp.shape} but the card "
                f"({self.card.layout}, {self.card.input_size}) expects {list(expected)}."
            )
        if inp.type not in _ORT_DTYPES:
            raise ArtifactError(f"{self.model_path}: input {inp.name!r} is {inp.type}; edgecnn needs a float input.")
        return inp

    def _output_name(self) -> str:
        names = [o.name for o in self.session.get_outputs()]
        return self.card.output_name if self.card.output_name in names else names[0]

    # --------------------------------------------------------------------------------- inputs
    def load_image(self, image: ImageLike) -> np.ndarray:
        """Decode one image to uint8 HxWx3 RGB at the card's input size (see :func:`load_image`)."""
        return load_image(image, self.card.input_size, max_pixels=self.max_pixels)

    def to_pixels(self, images: ImageLike | Sequence[ImageLike] | np.ndarray) -> np.ndarray:
        """Images, or an NHWC 0-255 batch already at the input size, -> (N, H, W, 3) pixel batch.

        Raises:
            InputError: for a wrong shape or dtype, NaN, or an unreadable image.
        """
        h, w = self.card.input_size
        if isinstance(images, np.ndarray) and images.ndim == 4:
            if images.shape[1:] != (h, w, 3):
                raise InputError(
                    f"Expected a batch of shape (N, {h}, {w}, 3) (NHWC RGB pixels 0-255); got {images.shape}. "
                    "Pass a list of images to have them converted and resized."
                )
            return check_pixels(images, "The image batch")
        if isinstance(images, (list, tuple)):
            if not images:
                raise InputError("No images given.")
            return np.stack([self.load_image(im) for im in images])
        return self.load_image(images)[None]  # type: ignore[arg-type]

    def preprocess(self, images: ImageLike | Sequence[ImageLike] | np.ndarray) -> np.ndarray:
        """Images or a pixel batch -> the model input (float32, card layout, normalized)."""
        return normalize_batch(self.to_pixels(images), self.card)

    # ------------------------------------------------------------------------------ inference
    def run(self, x: np.ndarray) -> np.ndarray:
        """Run the model on an already preprocessed input tensor; returns its raw output.

        Raises:
            InputError: for a wrong shape, dtype or NaN values.
        """
        x = self._check_tensor(x)
        if self._use_io_binding:
            return self._run_io_binding(x)
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def _check_tensor(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
            got = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
            raise InputError(f"The model input must be a float32 array; got {got}.")
        expected = self.card.input_shape()
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(expected[1:]) or x.shape[0] == 0:
            raise InputError(f"The model input must have shape (N, {', '.join(map(str, expected[1:]))}) "
                             f"({self.card.layout}); got {x.shape}.")
        if not np.isfinite(x).all():
            raise InputError("The model input contains NaN or infinite values.")
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    def _run_io_binding(self, x: np.ndarray) -> np.ndarray:
        # One host-to-device copy into a reused input buffer and one device-to-host copy of the
        # output per call, nothing else (see _DeviceBinder).
        return self._binder.run(x)

    def node_placement(self) -> NodePlacement:
        """Where each node of this model runs with this classifier's provider and CUDA options
        (one profiled run of a separate session; see :func:`~edgecnn.runtime.session.node_placement`)."""
        return node_placement(self.model_path, provider=self.info.requested, cuda=self.cuda,
                              allow_fallback=self.allow_fallback)

    def predict_proba(self, images: ImageLike | Sequence[ImageLike] | np.ndarray) -> np.ndarray:
        """Class probabilities, (N, num_classes) float32 (softmax applied to logits models)."""
        out = np.asarray(self.run(self.preprocess(images)), dtype=np.float32)
        out = out.reshape(out.shape[0], -1)
        if out.shape[1] != self.card.num_classes:
            raise ArtifactError(f"{self.model_path} outputs {out.shape[1]} values per image but the card has "
                                f"{self.card.num_classes} labels.")
        if self.card.output_kind == "logits":
            out = _softmax(out)
        return out

    def predict(self, images: ImageLike | Sequence[ImageLike] | np.ndarray, top_k: int = 5) -> list[list[Prediction]]:
        """Top-k predictions per image, most probable first.

        Raises:
            InputError: for bad images or ``top_k`` < 1.
        """
        if top_k < 1:
            raise InputError(f"top_k must be >= 1, got {top_k}.")
        proba = self.predict_proba(images)
        k = min(top_k, proba.shape[1])
        order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
        labels = self.card.class_names
        return [[Prediction(labels[i], int(i), float(row[i])) for i in idx] for row, idx in zip(proba, order)]

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: model, card essentials and session providers."""
        return {"model": str(self.model_path), "name": self.card.name, "precision": self.card.precision,
                "input": {"name": self.input_name, "shape": list(self.card.input_shape()), "layout": self.card.layout},
                "labels": self.labels, "providers": self.providers, "session_creation_s": self.info.creation_s,
                "io_binding": self.io_binding, "cuda_graph": self.cuda_graph,
                "cuda": None if self.cuda is None else self.cuda.provider_options()}


class _DeviceBinder:
    """IO binding over input/output buffers allocated on the session's device and reused.

    Per input shape, one input OrtValue and one output OrtValue are allocated on the device and
    bound once; each call refills the input in place (``update_inplace``: one host-to-device
    copy), runs, and copies the output back. CUDA graphs need exactly this: onnxruntime captures
    the kernels with the bound addresses on the first runs and replays them later, so the
    addresses must never change. With ``fixed_shape`` (CUDA graphs) the first shape is the only
    one accepted; otherwise up to ``_MAX_SHAPES`` shapes keep their buffers (the server's
    micro-batches come in a few sizes). Calls are serialized: the buffers are shared.
    """

    _MAX_SHAPES = 8

    def __init__(self, session: ort.InferenceSession, input_name: str, output_name: str, *, device: str,
                 device_id: int, fixed_shape: bool) -> None:
        self.session, self.input_name, self.output_name = session, input_name, output_name
        self.device, self.device_id, self.fixed_shape = device, device_id, fixed_shape
        out = next(o for o in session.get_outputs() if o.name == output_name)
        self._out_shape, self._out_dtype = list(out.shape), _ORT_DTYPES.get(out.type, np.float32)
        self._bound: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}
        self._lock = threading.Lock()

    def run(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            entry = self._bound.get(x.shape)
            if entry is None:
                entry = self._bind(x)
            else:
                entry[1].update_inplace(x)
            self.session.run_with_iobinding(entry[0])
            # A copy that owns its memory: on the CPU the output buffer is reused by the next call.
            return np.array(entry[0].copy_outputs_to_cpu()[0], copy=True)

    def _bind(self, x: np.ndarray) -> tuple[Any, Any, Any]:
        if self.fixed_shape and self._bound:
            (shape,) = self._bound
            raise InputError(
                f"This classifier runs a CUDA graph captured for input shape {shape}; got {x.shape}. A CUDA graph "
                "replays fixed buffers: pad the batch to that shape, or make a Classifier without cuda_graph for "
                "varying batch sizes."
            )
        if len(self._bound) >= self._MAX_SHAPES:
            self._bound.pop(next(iter(self._bound)))
        binding = self.session.io_binding()
        inp = ort.OrtValue.ortvalue_from_shape_and_type(list(x.shape), x.dtype, self.device, self.device_id)
        inp.update_inplace(x)
        binding.bind_ortvalue_input(self.input_name, inp)
        shape = [x.shape[0] if i == 0 else d for i, d in enumerate(self._out_shape)]
        out = None
        if all(isinstance(d, int) and d > 0 for d in shape):
            out = ort.OrtValue.ortvalue_from_shape_and_type(shape, self._out_dtype, self.device, self.device_id)
            binding.bind_ortvalue_output(self.output_name, out)
        elif self.fixed_shape:
            raise ArtifactError(f"Output {self.output_name!r} has shape {self._out_shape}: a CUDA graph needs an output "
                                "whose size is known from the batch; run without cuda_graph.")
        else:  # an output size only the run knows: onnxruntime allocates it on the device
            binding.bind_output(self.output_name, self.device, self.device_id)
        self._bound[x.shape] = (binding, inp, out)
        return self._bound[x.shape]


def _guess_layout(shape: list[Any]) -> str:
    if len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3):
        return "nchw"
    return "nhwc"


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
