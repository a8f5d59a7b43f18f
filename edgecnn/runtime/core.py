"""The one runtime core: a model's session, its card, preprocessing and batching.

Every inference in edgecnn goes through :class:`InferenceModel`: the task heads
(:class:`~edgecnn.runtime.Classifier` and the detection and segmentation heads), export's
verification, ``evaluate``, ``bench`` and ``serve``. It owns

- the session, opened as a :class:`~edgecnn.runtime.options.RuntimeOptions` says on one of the
  backends (:func:`~edgecnn.runtime.session.create_session`: onnxruntime with explicit
  providers and a fallback check, OpenVINO, LiteRT);
- the card: the one embedded in the file, or one inferred from the graph and the file's own
  metadata (Ultralytics' ``imgsz``/``names``/``task``/``stride``) plus the caller's overrides,
  with :meth:`InferenceModel.assumptions` saying in one line what was assumed
  (:mod:`edgecnn.runtime.cards`);
- preprocessing (the one image loader, :func:`~edgecnn.runtime.preprocess.fit_image`), and
  the card's pixel mapping inside the backend (:mod:`edgecnn.runtime.pixels`): calls from uint8
  pixels (:meth:`InferenceModel.run_pixels`) run a session that takes them;
- running: every output or the primary one, in chunks a fixed-batch model accepts (the last
  one padded, :mod:`edgecnn.runtime.batching`), through the cheapest call of each session
  (:mod:`edgecnn.runtime.runners`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np

from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError, ConfigError, InputError
from edgecnn.presets import ModelOverrides
from edgecnn.runtime.backends import get_backend
from edgecnn.runtime.backends.base import Session, numpy_dtype
from edgecnn.runtime.batching import find_batch_axes, output_summary, run_chunked, take_images
from edgecnn.runtime.cards import card_input, read_card, resolve_card
from edgecnn.runtime.cpu import check_int8_target
from edgecnn.runtime.options import RuntimeOptions
from edgecnn.runtime.preprocess import (
    DEFAULT_MAX_PIXELS,
    FitInfo,
    Fitting,
    ImageLike,
    check_pixels,
    fit_image,
    normalize_batch,
)
from edgecnn.runtime.runners import DeviceBinder, Runner
from edgecnn.runtime.session import NodePlacement, create_session, node_placement

log = logging.getLogger(__name__)

# read_card and take_images import from here as they always did (cards.py, batching.py are their homes).
__all__ = ["InferenceModel", "read_card", "take_images"]


class InferenceModel:
    """An image model on a backend with its card: preprocess, run, in batches it accepts.

    Args:
        model: the ``.onnx`` or ``.tflite`` path (its model card is read from the file's metadata) or
            serialized ONNX bytes.
        options: how to run it (:class:`~edgecnn.runtime.options.RuntimeOptions`: backend,
            onnxruntime's provider, IO binding and CUDA options, OpenVINO's device and precision,
            threads, allow_fallback); None: onnxruntime on the CPU (LiteRT for a ``.tflite`` file).
            IO binding None: on for a GPU session, off on the CPU; CUDA graphs always use it, and
            then accept only the shape of the first call.
        card: use this card instead of the embedded one (export verifies staged files this way).
        overrides: what the caller knows about the model (:class:`edgecnn.presets.ModelOverrides`:
            mean/std on the 0-255 scale, layout, labels, input size, output layout, channels, task,
            resize, ...; :func:`edgecnn.presets.parse_overrides` reads the command-line flags); they
            replace the card's values, and for a model without a card, what they do not give is
            inferred from the graph and the file's metadata (:func:`edgecnn.card_inference.infer_card`),
            :meth:`assumptions` saying what was assumed.
        max_pixels: images with more pixels are refused before decoding.
        pixels_in_graph: run the card's pixel mapping (channel order, mean/std, layout) inside the
            backend, so a call from uint8 pixels has no numpy preprocessing
            (:mod:`edgecnn.runtime.pixels`: folded into the ONNX graph for onnxruntime, OpenVINO's
            ``PrePostProcessor``, a lookup table into LiteRT's input); the model's answers are the
            same. False keeps the numpy path (:func:`~edgecnn.runtime.preprocess.normalize_batch`).
        **runtime: :class:`~edgecnn.runtime.options.RuntimeOptions` fields set over ``options``, for
            short calls: ``Classifier("model.onnx", provider="cpu", threads=2)``.

    Raises:
        ArtifactError: for a missing or corrupt file, or a card that does not match the model.
        ProviderError: when the requested provider is not the one running the session, or the
            backend cannot read the file or honour the options.
        ConfigError: for CUDA graphs without a CUDA provider or without IO binding, or IO binding
            outside onnxruntime.
        TypeError: for a keyword that is not a runtime option.
    """

    deploy_note: str | None = None  # from_dir: which file and settings were chosen, and why

    def __init__(self, model: str | Path | bytes, options: RuntimeOptions | None = None, *,
                 card: ModelCard | None = None, overrides: ModelOverrides | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, pixels_in_graph: bool = True, **runtime: Any) -> None:
        self.model_path = Path("<bytes>") if isinstance(model, bytes) else Path(model)
        self._source = model
        options = RuntimeOptions.given(options, runtime, what=f"{type(self).__name__}()")
        self.backend = options.backend_for(model)
        self.options = replace(options, backend=self.backend)
        self.cuda = self.options.cuda
        self.allow_fallback = self.options.fallback
        self._session_lock = threading.Lock()
        self._session: Session | None
        self._session, self.info = create_session(model, self.options)
        self.graph_inputs = self._session.get_inputs()
        self.graph_outputs = self._session.get_outputs()
        embedded = card if card is not None else read_card(self._session)
        self.has_card = embedded is not None
        self.card, self._assumed = resolve_card(self._session, self.model_path.stem, embedded, overrides,
                                                inputs=self.graph_inputs, outputs=self.graph_outputs)
        h, w = self.card.input_size
        if h * w > max_pixels:  # a model declaring 1x3x100000x100000 must not cost 112 GiB per image
            raise ArtifactError(f"{self.model_path.name} takes {h}x{w} = {h * w:,} pixels per image, over the limit of "
                                f"{max_pixels:,}; pass --input-size HxW if its input size is dynamic (or raise "
                                "max_pixels).")
        check_int8_target(self.card, self.model_path.name)
        self._input = card_input(self.graph_inputs, self.card, self.model_path)
        self.input_name = self._input.name
        self.input_dtype = numpy_dtype(self._input.type)
        self.output_names = [o.name for o in self.graph_outputs]
        self.output_name = self.card.output_name if self.card.output_name in self.output_names else self.output_names[0]
        self._primary = self.output_names.index(self.output_name)
        batch = self._input.shape[0]
        self.fixed_batch: int | None = batch if isinstance(batch, int) and batch > 0 else None
        self.max_pixels = max_pixels
        self._pixel_shape = (*self.card.input_size, self.card.channels)
        self._fitting = Fitting.of(self.card)
        self._batch_axes: list[int | None] | None = None
        self._open_runners(self._session, model, pixels_in_graph=pixels_in_graph)
        self._check_task()

    def _open_runners(self, session: Session, model: str | Path | bytes, *, pixels_in_graph: bool) -> None:
        """The runners of preprocessed tensors and of uint8 pixels, IO binding where it applies."""
        on_gpu = self.info.device == "cuda"
        cuda = self.cuda
        self.cuda_graph = bool(on_gpu and cuda is not None and cuda.cuda_graph)
        io_binding = self.options.io_binding
        self._use_io_binding = self.cuda_graph or (on_gpu if io_binding is None else bool(io_binding))
        self._device = ("cuda" if on_gpu else "cpu", cuda.device_id if cuda else 0)  # where IO binding's buffers live
        self._tensor: Runner | None = None
        self._pixels: Runner | None = None
        self.pixel_note = "numpy (pixels_in_graph=False)"
        if pixels_in_graph:
            self._pixels, self.pixel_note = self._pixel_runner(session, model)
        pixels = self._pixels
        if pixels is None or pixels.session is session:  # LiteRT's pixel session is the same one
            self._tensor = self._runner(session, self.input_name)
            first = pixels or self._tensor
        else:  # the float session returns on the first preprocessed-tensor call (serve's JSON tensors, bench)
            self._session = None
            first = pixels
        # what a backend defers (OpenVINO compiles) is done now: a device or precision error is the constructor's
        first.session.load()

    @property
    def session(self) -> Any:
        """The session of the file as it is (its float input): opened again on first use where
        the calls from pixels run on a folded session."""
        return self._tensor_runner().session

    @property
    def pixels_in_graph(self) -> bool:
        """Whether calls from uint8 pixels run the pixel mapping inside the backend (see ``pixel_note``)."""
        return self._pixels is not None

    def _runner(self, session: Session, input_name: str) -> Runner:
        binder = None
        if self._use_io_binding:
            device, device_id = self._device
            binder = DeviceBinder(session, input_name, self.output_names, device=device, device_id=device_id,
                                  fixed_shape=self.cuda_graph)
        return Runner(session, input_name, binder)

    def _tensor_runner(self) -> Runner:
        if self._tensor is None:
            with self._session_lock:
                if self._tensor is None:
                    session, _ = create_session(self._source, self.options)
                    self._tensor = self._runner(session, self.input_name)
        return self._tensor

    def _pixel_runner(self, session: Session, model: str | Path | bytes) -> tuple[Runner | None, str]:
        """A runner taking uint8 NHWC pixels with the card's mapping inside the backend, and one
        line saying where the mapping runs (a self-contained file: in the file itself, the session as it is)."""
        if self.card.self_contained:
            return self._runner(session, self.input_name), "in the file (self-contained)"
        if self._input.type not in ("tensor(float)", "tensor(float16)"):
            return None, f"numpy ({self._input.type} input)"
        pixels, note = get_backend(self.backend).pixel_session(session, source=model, card=self.card,
                                                               input_name=self.input_name, options=self.options)
        if pixels is None:
            return None, note
        return self._runner(pixels, pixels.get_inputs()[0].name), note

    @classmethod
    def from_dir(cls, export_dir: str | Path, options: RuntimeOptions | None = None, *, card: ModelCard | None = None,
                 overrides: ModelOverrides | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 pixels_in_graph: bool = True, **runtime: Any) -> InferenceModel:
        """Open an export directory the way ``edgecnn tune`` left it: the file and runtime options
        its ``deploy.json`` names, else its fp32 ``model.onnx`` (``deploy_note`` says which, and why).
        The options given here (``threads``, ``backend``, ``precision``, ...) win over ``deploy.json``,
        field by field.

        Raises:
            ArtifactError: for a directory without ``model.onnx`` or a usable ``deploy.json``;
                otherwise as the constructor.
        """
        from edgecnn.runtime.deploy import resolve_dir

        typed = RuntimeOptions.given(options, runtime, what=f"{cls.__name__}.from_dir()")
        path, chosen, message = resolve_dir(export_dir, typed)
        log.debug("%s", message)
        model = cls(path, chosen, card=card, overrides=overrides, max_pixels=max_pixels,
                    pixels_in_graph=pixels_in_graph)
        model.deploy_note = message
        return model

    @classmethod
    def adopt(cls, model: InferenceModel) -> InferenceModel:
        """This head over an already opened model (same session, card and buffers): how
        :func:`~edgecnn.runtime.load_model` picks the head after reading the task, opening the
        session once.

        Raises:
            ArtifactError: if the model's task is not this head's.
        """
        if type(model) is cls:
            return model
        head = cls.__new__(cls)
        head.__dict__.update(model.__dict__)
        head._session_lock = threading.Lock()
        head._check_task()
        return head

    def _check_task(self) -> None:
        """Heads refuse models of another task (the plain core runs any)."""

    # ------------------------------------------------------------------------------ properties
    @property
    def providers(self) -> list[str]:
        """The providers the session actually runs on (``session.get_providers()``)."""
        return list(self.info.providers)

    @property
    def io_binding(self) -> bool:
        """Whether :meth:`run` goes through IO binding with reused device buffers."""
        return self._use_io_binding

    @property
    def labels(self) -> list[str]:
        return list(self.card.class_names)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.model_path)!r}, model={self.card.name!r}, task={self.card.task!r}, "
                f"precision={self.card.precision!r}, providers={self.providers})")

    def assumptions(self) -> str | None:
        """One line saying what was assumed about a model without a card (None when nothing was)."""
        return self._assumed

    # --------------------------------------------------------------------------------- inputs
    def fit(self, image: ImageLike) -> tuple[np.ndarray, FitInfo]:
        """Decode one image to uint8 HxWxC at the input size, with how it was fitted."""
        card = self.card
        return fit_image(image, card.input_size, max_pixels=self.max_pixels, channels=card.channels,
                         fitting=self._fitting)

    def load_image(self, image: ImageLike) -> np.ndarray:
        """Decode one image to uint8 HxWxC at the card's input size (see :func:`fit_image`)."""
        return self.fit(image)[0]

    def load(self, images: ImageLike | Sequence[ImageLike] | np.ndarray) -> tuple[np.ndarray, list[FitInfo]]:
        """Images, or an NHWC 0-255 batch already at the input size, -> (N, H, W, C) pixels and fit info.

        Raises:
            InputError: for a wrong shape or dtype, NaN, or an unreadable image.
        """
        h, w = self.card.input_size
        c = self.card.channels
        if isinstance(images, np.ndarray) and images.ndim == 4:
            if images.shape[1:] != (h, w, c):
                raise InputError(
                    f"Expected a batch of shape (N, {h}, {w}, {c}) (NHWC pixels 0-255); got {images.shape}. "
                    "Pass a list of images to have them converted and resized."
                )
            if images.shape[0] == 0:
                raise InputError("No images given.")
            return check_pixels(images, "The image batch"), [FitInfo(w, h, 1.0, 1.0)] * images.shape[0]
        if isinstance(images, (list, tuple)):
            if not images:
                raise InputError("No images given.")
            fitted = [self.fit(im) for im in images]
            return np.stack([f[0] for f in fitted]), [f[1] for f in fitted]
        pixels, info = self.fit(cast(ImageLike, images))  # anything else is one image (fit refuses what is not)
        return pixels[None], [info]

    def to_pixels(self, images: ImageLike | Sequence[ImageLike] | np.ndarray) -> np.ndarray:
        """Images, or an NHWC 0-255 batch already at the input size, -> (N, H, W, C) pixel batch."""
        return self.load(images)[0]

    def preprocess(self, images: ImageLike | Sequence[ImageLike] | np.ndarray) -> np.ndarray:
        """Images or a pixel batch -> the model input (float32, card layout, normalized)."""
        return normalize_batch(self.to_pixels(images), self.card)

    # ------------------------------------------------------------------------------ inference
    def run(self, x: np.ndarray) -> np.ndarray:
        """The primary output (the card's ``output_name``) for an already preprocessed input.

        Raises:
            InputError: for a wrong shape, dtype or NaN values.
        """
        return self.run_all(x)[self.output_names.index(self.output_name)]

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output, in graph order, for an already preprocessed (N, ...) input.

        A fixed-batch model gets chunks of its batch size, the last one padded by repeating the
        last input, and the outputs are cut back to N.

        Raises:
            InputError: for a wrong shape, dtype or NaN values.
        """
        return self._chunked(self._tensor_runner().run, self._check_tensor(x))

    def run_pixels(self, pixels: np.ndarray) -> list[np.ndarray]:
        """Every output, in graph order, for an (N, H, W, C) batch of uint8 pixels at the input size
        (RGB, or gray for 1 channel): the per-call path of every image the runtime answers.

        The card's mapping runs inside the backend where it can (:attr:`pixels_in_graph`), else
        in numpy; the outputs are the same either way. Pixels of another dtype (0-255 floats)
        take the numpy path, as they always did.

        Raises:
            InputError: for a wrong shape or out-of-range values.
        """
        if isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and self._pixels is not None:
            # the per-call path: two comparisons, then the backend (a 30-microsecond model feels each step)
            if pixels.shape[1:] != self._pixel_shape or pixels.ndim != 4 or not pixels.shape[0]:
                self._bad_pixels(pixels)
            if not pixels.flags.c_contiguous:
                pixels = np.ascontiguousarray(pixels)
            return self._pixels.run(pixels) if self.fixed_batch is None else self._chunked(self._pixels.run, pixels)
        pixels = check_pixels(pixels, "The image batch") if isinstance(pixels, np.ndarray) else pixels
        if not isinstance(pixels, np.ndarray) or pixels.ndim != 4 or pixels.shape[1:] != self._pixel_shape \
                or not pixels.shape[0]:
            self._bad_pixels(pixels)
        # checked pixels, normalized: finite and of the input's shape, so not checked again
        x = np.ascontiguousarray(normalize_batch(pixels, self.card), dtype=self.input_dtype)
        return self._chunked(self._tensor_runner().run, x)

    def _bad_pixels(self, pixels: Any) -> None:
        h, w, c = self._pixel_shape
        got = list(pixels.shape) if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise InputError(f"Expected pixels of shape (N, {h}, {w}, {c}) (NHWC, 0-255); got {got}.")

    def _chunked(self, run: Callable[[np.ndarray], list[np.ndarray]], x: np.ndarray) -> list[np.ndarray]:
        return run_chunked(run, x, self.fixed_batch, self.batch_axes)

    def batch_axes(self, outputs: Sequence[np.ndarray], n: int) -> list[int | None]:
        """The axis of each output that indexes the ``n`` images of the batch (None: an output
        without one, the same for every image).

        The card's ``batch_axis`` when given; else the axis whose symbolic size is the input's batch
        in the graph; else the first run decides: axis 0 when its size is the batch, or the one
        axis that has the batch's size (a time-major ``[T, N, C]`` output: axis 1). The answer is
        kept, and a time-major output found at run time is said once
        (:func:`~edgecnn.runtime.batching.find_batch_axes`).
        """
        if self._batch_axes is None:
            self._batch_axes = find_batch_axes(outputs, n, graph_outputs=self.graph_outputs,
                                               input_batch=self._input.shape[0], card_axis=self.card.batch_axis,
                                               model_name=self.model_path.name)
        return self._batch_axes

    def timed_call(self, x: np.ndarray) -> tuple[str, Any]:
        """The runner name and a no-argument call that runs the model once on ``x``, as bare as a
        hand-written loop: for a benchmark to time the model alone, its input ready (checked and
        converted here, once).

        Without IO binding it is ``session.run`` on the host array, as a plain loop calls it
        (LiteRT's int8 input quantized beforehand); the runner is the backend (``openvino.bf16`` for
        an OpenVINO precision asked for). With IO binding, ``x`` is copied once into the device buffer the
        binder keeps for its shape and the outputs go to the bound device buffers, so the call is
        ``run_with_iobinding`` alone (onnxruntime synchronizes the device at the end of each run).
        """
        x = self._check_tensor(x)
        runner = self._tensor_runner()
        if runner.binder is not None:
            name = "onnxruntime.cudagraph" if self.cuda_graph else "onnxruntime.iobinding"
            return name, runner.binder.timed_call(x)
        run, feed = runner.session.run, {runner.input_name: runner.session.model_input(x)}
        name = self.backend if self.options.precision is None else f"{self.backend}.{self.options.precision}"
        return name, lambda: run(None, feed)

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

    # -------------------------------------------------------------------------- task results
    def predict(self, images: ImageLike | Sequence[ImageLike] | np.ndarray) -> list[Any]:
        """One result per image: load, preprocess, run, then the task head's :meth:`postprocess`.
        A raw model takes no parameters; each head's ``predict`` adds its own (``top_k``, ``conf``, ...)."""
        return self._predict(images)

    def _predict(self, images: ImageLike | Sequence[ImageLike] | np.ndarray, **params: Any) -> list[Any]:
        """What every head's :meth:`predict` does, its parameters handed to :meth:`postprocess`."""
        pixels, fits = self.load(images)
        return self.postprocess(self.run_pixels(pixels), fits, **params)

    def postprocess(self, outputs: list[np.ndarray], fits: Sequence[FitInfo], **params: Any) -> list[Any]:
        """Raw outputs of a batch -> one result per image. For a model of task ``raw``: each
        output's name, shape and value summary (task heads override this)."""
        del params
        n = len(fits)
        axes = self._batch_axes or self.batch_axes(outputs, n)
        per_image = [[o if a is None else take_images(o, i, a) for i in range(n)] for o, a in zip(outputs, axes)]
        return [[output_summary(name, out[i]) for name, out in zip(self.output_names, per_image)] for i in range(n)]

    def result_dict(self, result: Any) -> dict[str, Any]:
        """One image's result as JSON-able data, the same in ``predict --json`` and the server's
        answers: ``{"outputs": [...]}`` here; task heads give ``top_k``, ``detections`` or ``segmentation``."""
        return {"outputs": result}

    def annotate(self, image: ImageLike, result: Any) -> Any:
        """The image with its result drawn on it (a PIL image), for ``predict --save``.

        Raises:
            ConfigError: for a ``raw`` model, which has nothing to draw.
        """
        raise ConfigError(f"{self.model_path.name} is a raw model: there are no labels, boxes or masks to draw; "
                          "drop --save, or pass --task classify|detect|segment.")

    def node_placement(self) -> NodePlacement:
        """Where each node of this model runs with this provider and CUDA options (one profiled run
        of a separate session; see :func:`~edgecnn.runtime.session.node_placement`).

        Raises:
            ConfigError: for the OpenVINO backend, which has no per-node placement report here.
        """
        if self.backend != "onnxruntime":
            raise ConfigError("Node placement is reported for onnxruntime sessions only.")
        return node_placement(self._source, self.options,
                              shapes={self.input_name: [1 if d is None else d for d in self.card.input_shape()]})

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: model, card essentials and session providers."""
        return {"model": str(self.model_path), "name": self.card.name, "task": self.card.task,
                "precision": self.card.precision,
                "input": {"name": self.input_name, "shape": list(self.card.input_shape()), "layout": self.card.layout},
                "outputs": [{"name": o.name, "shape": list(o.shape)} for o in self.graph_outputs],
                "labels": self.labels, "providers": self.providers, "session_creation_s": self.info.creation_s,
                "io_binding": self.io_binding, "cuda_graph": self.cuda_graph, "preprocessing": self.pixel_note,
                "cuda": None if self.cuda is None else self.cuda.provider_options()}

