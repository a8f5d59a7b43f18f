"""What ``edgecnn export SOURCE`` starts from, turned into one thing: an fp32 ONNX graph, its
model card and a reference to verify the graph against.

Sources: an edgecnn run directory (``card.json`` + ``model.keras``), a ``.keras``/``.h5`` Keras
file, a TensorFlow SavedModel directory, a float ``.tflite`` file (converted by
``tf2onnx.convert.from_tflite``) and an ``.onnx`` file from anywhere. :func:`load_source` is the
one dispatch. The card comes from what the file carries (an edgecnn card; the graph's input shape
and layout; Ultralytics ``metadata_props``), then the command-line flags
(:class:`edgecnn.presets.ModelOverrides`); whatever is still unknown is assumed and stated.

The reference runs the source itself (Keras, the SavedModel signature, the LiteRT interpreter or
the original ONNX graph in onnxruntime), so parity checks the conversion, not a copy of it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn._optional import require
from edgecnn.card import ModelCard
from edgecnn.card_inference import infer_card, input_geometry
from edgecnn.errors import ArtifactError
from edgecnn.export import onnx as onnx_io
from edgecnn.export.variants import KERAS_SOURCES, SOURCE_KINDS
from edgecnn.keras_io import load_keras_model
from edgecnn.presets import ModelOverrides, TensorInfo
from edgecnn.runtime.preprocess import normalize_batch

log = logging.getLogger(__name__)

__all__ = ["SOURCE_KINDS", "ModelSource", "detect_kind", "load_source", "load_float32_keras"]

_SUFFIXES = {".keras": "keras", ".h5": "keras", ".hdf5": "keras", ".tflite": "tflite", ".onnx": "onnx"}
_WHAT = "a run directory, a .keras/.h5 file, a SavedModel directory, a .tflite or an .onnx file"

Reference = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class ModelSource:
    """A loaded source: the fp32 ONNX graph to verify and where it came from.

    Attributes:
        kind: one of :data:`SOURCE_KINDS`.
        path: what the user passed.
        file: the file whose SHA-256 identifies the source in the card.
        proto: the fp32 ``onnx.ModelProto`` (converted, or the ONNX source at the asked opset).
        card: its model card (without export metadata yet).
        reference: uint8 NHWC images -> every output of the source model.
        card_from_file: the preprocessing came from an edgecnn card, not from flags or a guess.
        assumed: the one-line statement of what was assumed, or None.
        run_dir: the run directory of a ``run`` source.
        source_opset: the opset of an ONNX source as given.
        default_out: the output folder when ``--out`` is not given.
        weights: how the source stores its weights when they are already quantized (a ``.tflite``
            with int8 weights), else None: parity with such a source is not float-exact.
    """

    kind: str
    path: Path
    file: Path
    proto: Any
    card: ModelCard
    reference: Reference
    card_from_file: bool
    assumed: str | None = None
    run_dir: Path | None = None
    source_opset: int | None = None
    default_out: Path = Path("export")
    weights: str | None = None

    @property
    def uses_tensorflow(self) -> bool:
        return self.kind != "onnx"


def detect_kind(path: str | Path) -> str:
    """The kind of model at ``path``, from its name and contents.

    Raises:
        ArtifactError: for a missing path or one that is no model edgecnn can export.
    """
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist; pass {_WHAT}.")
    if path.is_dir():
        if (path / "card.json").is_file() or (path / "model.keras").is_file():
            return "run"
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "savedmodel"
        raise ArtifactError(f"No model card (card.json) or SavedModel (saved_model.pb) in {path}; pass {_WHAT}.")
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ArtifactError(f"{path}: unknown model format {path.suffix or '(no extension)'!r}; pass {_WHAT}.")
    return kind


def load_source(path: str | Path, *, overrides: ModelOverrides | None = None, opset: int | None = None,
                layout: str | None = None, tta: str = "none") -> ModelSource:
    """Load ``path`` as an export source (see :data:`SOURCE_KINDS`).

    Args:
        path: the model.
        overrides: card values from the command line.
        opset: the ONNX opset to produce (None: the default for conversions, the source's own for ONNX).
        layout: input layout of the exported ONNX for TensorFlow sources (default nhwc); an ONNX
            source keeps its own, described by ``overrides.layout``.
        tta: ``flip`` wraps a Keras source in flip test-time augmentation (:mod:`edgecnn.export.tta`);
            the reference is the wrapped model, so parity checks the whole graph.

    Raises:
        ArtifactError: missing, corrupt or unconvertible model, or a card that cannot be built
            (the message names the flag that supplies what is missing).
    """
    path = Path(path).expanduser()
    kind = detect_kind(path)
    overrides = overrides or ModelOverrides()
    if tta != "none" and kind not in KERAS_SOURCES:
        raise ArtifactError(f"--tta {tta} wraps a Keras model before conversion; {path} is a {kind} source: export "
                            "the run directory or .keras file it came from.")
    loaders: dict[str, Callable[..., ModelSource]] = {
        "run": partial(_run, tta=tta), "keras": partial(_keras_file, tta=tta), "savedmodel": _saved_model,
        "tflite": _tflite, "onnx": _onnx}
    if kind != "onnx":
        layout = layout or overrides.layout or "nhwc"
    if kind == "run" and not (path / "card.json").is_file():  # a folder with a user's model.keras, no card
        return _keras_file(path / "model.keras", overrides, opset, layout or "nhwc", tta=tta)
    return loaders[kind](path, overrides, opset, layout)


# --------------------------------------------------------------------------------- TensorFlow


def load_float32_keras(path: Path) -> Any:
    """The Keras model at ``path`` as the export converts it: in float32 (:func:`_as_float32`).

    Raises:
        ArtifactError: for a file that does not load, or a mixed-precision model that does not
            rebuild in float32.
    """
    return _as_float32(load_keras_model(path), path)


def _as_float32(model: Any, path: Path) -> Any:
    """``model`` rebuilt in float32 with the same weights when it was trained in mixed precision.

    A model trained with ``--precision bf16/fp16`` computes in bfloat16/float16 (each layer's
    dtype policy is saved in the ``.keras`` file); its variables are float32. The export is an
    fp32 graph of those weights, and the parity check compares it with this float32 model: the
    conversion is what it checks, not the rounding of the training precision.
    """
    policies: set[str] = set()

    def to_float32(node: Any) -> Any:
        if isinstance(node, list):
            return [to_float32(v) for v in node]
        if not isinstance(node, dict):
            return node
        conf = node.get("config")
        if (str(node.get("class_name", "")).endswith("DTypePolicy") and isinstance(conf, dict)
                and str(conf.get("name")).startswith("mixed_")):
            policies.add(conf["name"])
            return {**node, "config": {**conf, "name": "float32"}}
        return {k: to_float32(v) for k, v in node.items()}

    config = to_float32(model.get_config())
    if not policies:
        return model
    try:
        clone = type(model).from_config(config)
        clone.set_weights(model.get_weights())
    except Exception as err:  # a custom model whose config does not rebuild
        raise ArtifactError(f"{path} computes in {', '.join(sorted(policies))}; rebuilding it in float32 for export "
                            f"failed ({type(err).__name__}: {str(err)[:160]}).") from err
    log.info("%s was trained in %s: exported in float32 with the same weights.", path, ", ".join(sorted(policies)))
    return clone


def _run(path: Path, overrides: ModelOverrides, opset: int | None, layout: str, *, tta: str = "none") -> ModelSource:
    from edgecnn.export.tta import tta_model

    card = ModelCard.load(path)
    keras_path = path / "model.keras"
    if not keras_path.is_file():
        raise ArtifactError(f"No model.keras in {path}; pass a run directory made by `edgecnn train`.")
    model = tta_model(load_float32_keras(keras_path), tta)
    # A run's geometry is its card's; flags can relabel it or change its task, not reshape it.
    keep = dataclasses.replace(overrides, input_size=None, channels=None, layout=None)
    card = keep.apply(card)
    proto = onnx_io.convert_keras(model, card, opset=opset or onnx_io.DEFAULT_OPSET, layout=layout)
    card = card.replace(layout=layout, output_name=card.output_kind)
    return ModelSource("run", path, keras_path, proto, card, _keras_reference(model, card.replace(layout="nhwc")),
                       card_from_file=not overrides.normalization_given, run_dir=path, default_out=path / "export")


def _keras_file(path: Path, overrides: ModelOverrides, opset: int | None, layout: str, *,
                tta: str = "none") -> ModelSource:
    if path.name == "model.keras" and (path.parent / "card.json").is_file():
        return _run(path.parent, overrides, opset, layout, tta=tta)  # a run's own model file
    from edgecnn.export._tf2onnx_compat import keras_to_onnx
    from edgecnn.export.tta import tta_model

    model = load_float32_keras(path)
    if len(model.inputs) != 1:
        raise ArtifactError(f"{path} has {len(model.inputs)} inputs; edgecnn exports models with one image input.")
    shape = tuple(model.inputs[0].shape)
    dtype = str(getattr(model.inputs[0], "dtype", "float32")).replace("tf.", "")
    src_layout, in_shape = _tf_input(path, TensorInfo("images", shape, dtype), overrides)
    model = tta_model(model, tta, layout=src_layout)
    proto = keras_to_onnx(model, input_shape=in_shape, input_name="images", output_name="output",
                          opset=opset or onnx_io.DEFAULT_OPSET, nchw=layout == "nchw" and src_layout == "nhwc")
    onnx_io.set_batch_axis(proto)
    onnx_io.tidy_names(proto, prefix=getattr(model, "name", ""))
    card, assumed = _card(path, proto, overrides, architecture=f"keras:{getattr(model, 'name', 'model')}")
    return ModelSource("keras", path, path, proto, card, _keras_reference(model, card.replace(layout=src_layout)),
                       card_from_file=False, assumed=assumed, default_out=_default_out(path))


def _tf_input(path: Path, inp: TensorInfo, overrides: ModelOverrides) -> tuple[str, tuple[int, ...]]:
    """Layout and batch-less shape of a TensorFlow model's input (its own layout, not the export's)."""
    if inp.dtype not in ("float32", "float"):
        raise ArtifactError(f"{path}: input is {inp.dtype} {list(inp.shape)}; edgecnn exports float32 image models.")
    inp = TensorInfo(inp.name, inp.shape, "float32")
    layout, channels, (h, w) = input_geometry(path.name, inp, dataclasses.replace(overrides, layout=None))
    return layout, (channels, h, w) if layout == "nchw" else (h, w, channels)


def _keras_reference(model: Any, card: ModelCard) -> Reference:
    def reference(images: np.ndarray) -> list[np.ndarray]:
        out = model.predict(normalize_batch(images, card), batch_size=64, verbose=0)
        return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else [np.asarray(out)]

    return reference


def _saved_model(path: Path, overrides: ModelOverrides, opset: int | None, layout: str) -> ModelSource:
    from edgecnn.export._tf2onnx_compat import function_to_onnx

    tf = require("tensorflow", "train")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as err:  # protobuf, OS and graph import errors
        raise ArtifactError(f"Cannot load the SavedModel {path} ({type(err).__name__}: "
                            f"{' '.join(str(err).split())[:200]}).") from err
    signature = getattr(loaded, "signatures", {}).get("serving_default")
    if signature is None:
        raise ArtifactError(f"The SavedModel {path} has no serving_default signature (it has "
                            f"{', '.join(getattr(loaded, 'signatures', {})) or 'none'}); save it with model.export() "
                            "or tf.saved_model.save(model, path, signatures=...).")
    args, kwargs = signature.structured_input_signature
    specs = {**{f"arg{i}": s for i, s in enumerate(args)}, **kwargs}
    if len(specs) != 1:
        raise ArtifactError(f"The SavedModel {path} takes {len(specs)} inputs ({', '.join(specs)}); edgecnn exports "
                            "models with one image input.")
    (key, spec), = specs.items()
    src_layout, in_shape = _tf_input(path, TensorInfo(key, tuple(spec.shape.as_list()), spec.dtype.name), overrides)
    out_keys = sorted(signature.structured_outputs)

    def call(x):
        out = signature(**{key: x}) if key in kwargs else signature(x)
        return [out[k] for k in out_keys]

    proto = function_to_onnx(call, input_shape=in_shape, input_name="images", output_names=out_keys,
                             opset=opset or onnx_io.DEFAULT_OPSET, nchw=layout == "nchw" and src_layout == "nhwc")
    onnx_io.set_batch_axis(proto)
    card, assumed = _card(path, proto, overrides, architecture="savedmodel")
    ref_card = card.replace(layout=src_layout)

    def reference(images: np.ndarray) -> list[np.ndarray]:
        _ = loaded  # the signature's variables live as long as the loaded object
        return [np.asarray(o) for o in call(tf.constant(normalize_batch(images, ref_card)))]

    pb = path / "saved_model.pb"
    return ModelSource("savedmodel", path, pb if pb.is_file() else path / "saved_model.pbtxt", proto, card, reference,
                       card_from_file=False, assumed=assumed, default_out=path.with_name(f"{path.name}-export"))


def _interpreter(path: Path) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the LiteRT package is the successor of tf.lite.Interpreter
        Interpreter = require("tensorflow", "train").lite.Interpreter
    try:
        interp = Interpreter(model_path=str(path))
        interp.allocate_tensors()
    except Exception as err:  # flatbuffer and allocation errors
        raise ArtifactError(f"Cannot read {path} as a TFLite model ({type(err).__name__}: "
                            f"{' '.join(str(err).split())[:200]}).") from err
    return interp


def _tflite(path: Path, overrides: ModelOverrides, opset: int | None, layout: str) -> ModelSource:
    from edgecnn.export._tf2onnx_compat import tflite_to_onnx

    interp = _interpreter(path)
    ins, outs = interp.get_input_details(), interp.get_output_details()
    if len(ins) != 1:
        raise ArtifactError(f"{path} has {len(ins)} inputs; edgecnn exports models with one image input.")
    dtype = np.dtype(ins[0]["dtype"]).name
    if dtype != "float32":
        raise ArtifactError(f"{path} takes {dtype} input: it is a quantized TFLite model; export the float .tflite "
                            "(edgecnn quantizes the ONNX itself with -q int8).")
    signature = tuple(int(d) for d in ins[0].get("shape_signature", ins[0]["shape"]))
    src_layout, _ = _tf_input(path, TensorInfo(ins[0]["name"], tuple(d if d > 0 else None for d in signature)),
                              overrides)
    proto = tflite_to_onnx(str(path), opset=opset or onnx_io.DEFAULT_OPSET,
                           nchw_input=ins[0]["name"] if layout == "nchw" and src_layout == "nhwc" else None)
    onnx_io.rename_io(proto, inputs=["images"],
                      outputs=["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))])
    if signature[0] <= 0:
        onnx_io.set_batch_axis(proto)
    card, assumed = _card(path, proto, overrides, architecture="tflite")
    ref_card = card.replace(layout=src_layout)
    order = [d["index"] for d in outs]

    def reference(images: np.ndarray) -> list[np.ndarray]:
        x = normalize_batch(images, ref_card)
        if signature[0] <= 0 and len(x) != interp.get_input_details()[0]["shape"][0]:
            interp.resize_tensor_input(ins[0]["index"], [len(x), *x.shape[1:]])
            interp.allocate_tensors()
        step = len(x) if signature[0] <= 0 else signature[0]
        runs = []
        for i in range(0, len(x), step):
            interp.set_tensor(ins[0]["index"], x[i:i + step])
            interp.invoke()
            runs.append([interp.get_tensor(k).copy() for k in order])
        return [np.concatenate([r[k] for r in runs]) for k in range(len(order))]

    return ModelSource("tflite", path, path, proto, card, reference, card_from_file=False, assumed=assumed,
                       default_out=_default_out(path), weights=_quantized_weights(interp))


def _quantized_weights(interp: Any) -> str | None:
    """``"int8, N quantized tensors in the .tflite"`` when the .tflite stores int8 tensors with
    quantization scales: weights quantized by the TFLite converter (dynamic range or full integer).
    Its kernels then compute with int8, so the float ONNX tf2onnx makes of it differs by more than
    float rounding. Float16 weights (``DEQUANTIZE`` to float32 at load) compute in float32 and are not counted."""
    count = sum(1 for t in interp.get_tensor_details()
                if np.dtype(t["dtype"]) in (np.int8, np.uint8)
                and len(t.get("quantization_parameters", {}).get("scales", ())) > 0)
    return f"int8, {count} quantized tensor{'s' if count > 1 else ''} in the .tflite" if count else None


# ----------------------------------------------------------------------------------------- ONNX


def _onnx(path: Path, overrides: ModelOverrides, opset: int | None, layout: str | None) -> ModelSource:
    from edgecnn.export.verify import OnnxPredictor

    proto = onnx_io.load_onnx(path)
    source_opset = onnx_io.opset_of(proto)
    original = proto.SerializeToString()
    embedded = onnx_io.read_card(proto)
    if opset is not None and opset != source_opset:
        proto = onnx_io.convert_opset(proto, opset, why=f"--opset {opset}")
    inputs, outputs = onnx_io.tensor_infos(proto)
    card, assumed = infer_card(path.stem, inputs=inputs, outputs=outputs, overrides=overrides, embedded=embedded,
                               metadata=onnx_io.metadata(proto), softmax_output=onnx_io.feeds_softmax(proto),
                               architecture="external")
    predictor = OnnxPredictor(original, card)
    return ModelSource("onnx", path, path, proto, card, predictor.outputs,
                       card_from_file=embedded is not None and not overrides.normalization_given, assumed=assumed,
                       source_opset=source_opset, default_out=_default_out(path))


def _card(path: Path, proto: Any, overrides: ModelOverrides, *, architecture: str) -> tuple[ModelCard, str | None]:
    """Card of a converted TensorFlow model, from the ONNX graph it became (layout read from it)."""
    inputs, outputs = onnx_io.tensor_infos(proto)
    return infer_card(path.stem if path.is_file() else path.name, inputs=inputs, outputs=outputs,
                      overrides=dataclasses.replace(overrides, layout=None),
                      softmax_output=onnx_io.feeds_softmax(proto),
                      architecture=architecture)


def _default_out(path: Path) -> Path:
    """``<file name>-export`` beside the model: ``mine.keras`` and ``mine.h5`` never share a folder."""
    return path.with_name(f"{path.name}-export")
