"""Quantization-aware training (QAT) for Keras 3: fine-tune a copy of a trained classifier with
fake quantization, so that its int8 export keeps the float model's accuracy where post-training
int8 loses it (TF-MOT does not support Keras 3 and NNCF dropped TensorFlow).

:func:`qat_model` rewrites a flat functional model:

- each ``Conv2D``/``DepthwiseConv2D``/``Dense`` followed only by a ``BatchNormalization`` gets the
  normalization folded into its kernel and bias (the int8 kernels compute the folded convolution,
  so that is what must learn to live with int8 weights), the normalization becomes ``Identity``;
- the weight layers become :class:`edgecnn._keras_layers.QATConv2D` & co., which compute with
  their kernel on the symmetric int8 grid (per output channel, or per tensor);
- a :class:`edgecnn._keras_layers.FakeQuant` (uint8, learned range, TensorFlow's
  ``FakeQuantWithMinMaxVars``) goes on the model input and on every tensor onnxruntime's QDQ
  quantization would quantize: the output of each layer that computes something (after its
  activation, never between a convolution and its ReLU), not on reshapes or dropout, not on the
  model output.

The ranges start at the min/max of the calibration images (as post-training ``minmax``), then
train with the weights (TensorFlow's op has gradients for its range). :func:`fine_tune` runs the
whole thing and saves the fake-quant model; ``edgecnn export --qat-epochs`` converts it with
tf2onnx into the int8 variant (edgecnn.export.qat).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

import edgecnn.train._tf  # noqa: F401  (TensorFlow quietly, first)
from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError, ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["QATConfig", "calibrate_ranges", "fine_tune", "fine_tune_source", "qat_model"]

_WEIGHT_LAYERS = ("Conv2D", "DepthwiseConv2D", "Dense")
# Layers that only move or drop values: their input's quantization carries over (ORT's QDQ
# propagation does the same), so they get no quantizer of their own.
_PASS_THROUGH = ("Dropout", "SpatialDropout2D", "Flatten", "Reshape", "Identity", "ZeroPadding2D", "Permute",
                 "ChannelShuffle", "InputLayer")
_ACTIVATIONS = ("ReLU", "Activation", "LeakyReLU", "ELU", "PReLU", "Softmax")


@dataclass(frozen=True)
class QATConfig:
    """How to fine-tune. ``epochs`` over the training images at ``lr`` (Adam, cosine decay to 0);
    ``per_channel``/``weight_bits`` must match the int8 export (7 bits for ``--cpu-target avx2``)."""

    epochs: int = 2
    lr: float = 1e-4
    batch_size: int = 128
    per_channel: bool = True
    weight_bits: int = 8
    calibration_images: int = 512
    augment: bool = True  # random flips, as light as fine-tuning allows
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.lr <= 0 or self.batch_size < 1:
            raise ConfigError(f"QAT needs epochs >= 1, lr > 0 and batch_size >= 1, got {self.epochs}, {self.lr}, "
                              f"{self.batch_size}.")
        if self.weight_bits not in (7, 8):
            raise ConfigError(f"QAT weights are 8-bit (or 7-bit for AVX2), got {self.weight_bits}.")


def _layers_mod():
    import edgecnn._keras_layers as kl  # registers the QAT layers for saving and loading

    return kl


def _bounds(layer: Any) -> tuple[float | None, float | None]:
    """The range an activation guarantees (0 after ReLU, 6 after ReLU6), for the quantizer after it."""
    kind = type(layer).__name__
    act = getattr(layer, "activation", None)
    name = getattr(act, "__name__", str(act)) if act is not None else ""
    if kind == "ReLU":
        slope = float(getattr(layer, "negative_slope", 0.0) or 0.0)
        top = getattr(layer, "max_value", None)
        return (0.0 if slope == 0 else None), (None if top is None else float(top))
    if name == "relu":
        return 0.0, None
    if name == "relu6":
        return 0.0, 6.0
    if name == "sigmoid":
        return 0.0, 1.0
    return None, None


def _graph(model: Any) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Producers and consumers of each layer (by name) in a functional model."""
    producers: dict[str, list[Any]] = {layer.name: [] for layer in model.layers}
    consumers: dict[str, list[Any]] = {layer.name: [] for layer in model.layers}
    for layer in model.layers:
        for node in layer._inbound_nodes:  # Keras 3 Node: the calls of this layer
            for parent in node.parent_nodes:
                producers[layer.name].append(parent.operation)
                consumers.setdefault(parent.operation.name, []).append(layer)
    return producers, consumers


def _check_flat(model: Any) -> None:
    if isinstance(model, keras.Sequential):
        raise ConfigError("QAT rewrites functional Keras models; rebuild this Sequential model as "
                          "keras.Model(inputs, outputs) (every edgecnn zoo model is one).")
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise ConfigError(f"QAT supports flat models; {model.name} nests the model {layer.name!r} (a transfer "
                              "backbone?): export it with post-training int8 (--accuracy-aware) instead.")
        if len(layer._inbound_nodes) > 1:
            raise ConfigError(f"QAT cannot rewrite {model.name}: layer {layer.name!r} is called more than once.")


def qat_model(model: Any, *, per_channel: bool = True, weight_bits: int = 8) -> tuple[Any, list[str]]:
    """A fake-quantized, batch-norm-folded copy of ``model`` (see the module docstring) with the
    float weights copied in, and the names of its :class:`FakeQuant` layers (ranges not set yet).

    Raises:
        ConfigError: for a model QAT cannot rewrite (Sequential, nested models, shared layers).
    """
    kl = _layers_mod()
    _check_flat(model)
    producers, consumers = _graph(model)
    outputs = {t._keras_history.operation.name for t in model.outputs}
    qat_class = {"Conv2D": kl.QATConv2D, "DepthwiseConv2D": kl.QATDepthwiseConv2D, "Dense": kl.QATDense}
    folded = _foldable(model, producers, consumers, outputs)
    folded_bn = {bn.name for bn in folded.values()}

    def clone(layer: Any) -> Any:
        kind = type(layer).__name__
        if layer.name in folded_bn:
            return keras.layers.Identity(name=layer.name)
        if kind in qat_class:
            cfg = layer.get_config()
            if layer.name in folded:
                cfg["use_bias"] = True
            return qat_class[kind].from_config({**cfg, "weight_bits": weight_bits, "per_channel": per_channel})
        return layer.__class__.from_config(layer.get_config())

    quantizers: list[str] = []
    input_fq: dict[int, Any] = {}

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        def quantize_input(t: Any) -> Any:
            if isinstance(t, keras.KerasTensor) and type(t._keras_history.operation).__name__ == "InputLayer":
                if id(t) not in input_fq:
                    name = f"{t._keras_history.operation.name}_fq"
                    input_fq[id(t)] = kl.FakeQuant(name=name)(t)
                    quantizers.append(name)
                return input_fq[id(t)]
            return t

        args = tuple(quantize_input(a) for a in args)
        out = layer(args[0]) if layer.name in folded_bn else layer(*args, **kwargs)
        original = model.get_layer(layer.name)
        if _wants_quantizer(original, outputs=outputs, folded=folded, consumers=consumers):
            lower, upper = _bounds(original)
            if layer.name in folded_bn:  # the folded conv's own activation is linear
                lower, upper = None, None
            name = f"{layer.name}_fq"
            out = kl.FakeQuant(lower=lower, upper=upper, name=name)(out)
            quantizers.append(name)
        return out

    new = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in model.layers:
        if not layer.weights or layer.name in folded_bn:
            continue
        target = new.get_layer(layer.name)
        if layer.name in folded:
            target.set_weights(_fold(layer, folded[layer.name]))
        else:
            target.set_weights(layer.get_weights())
    return new, quantizers


def _foldable(model: Any, producers: dict[str, list[Any]], consumers: dict[str, list[Any]],
              outputs: set[str]) -> dict[str, Any]:
    """Weight layer name -> the BatchNormalization folded into it: its only consumer, fed by it
    alone, normalizing the channel axis, after a linear activation and not a model output."""
    folded: dict[str, Any] = {}
    for layer in model.layers:
        nxt = consumers[layer.name]
        if type(layer).__name__ in _WEIGHT_LAYERS and len(nxt) == 1 and type(nxt[0]).__name__ == "BatchNormalization" \
                and len(producers[nxt[0].name]) == 1 and layer.activation in (None, keras.activations.linear) \
                and nxt[0].axis in (-1, len(layer.output.shape) - 1) and layer.name not in outputs:
            folded[layer.name] = nxt[0]
    return folded


def _wants_quantizer(layer: Any, *, outputs: set[str], folded: dict[str, Any],
                     consumers: dict[str, list[Any]]) -> bool:
    """Whether ``layer``'s output gets a FakeQuant: not a model output, a pass-through, a softmax,
    a layer with a folded batch norm after it, or a computation whose activation follows it."""
    kind = type(layer).__name__
    if layer.name in outputs or kind in _PASS_THROUGH or kind == "Softmax" or layer.name in folded:
        return False
    if isinstance(getattr(layer, "output", None), (list, tuple)):
        return False  # several outputs (ChannelSplit): their consumers' inputs carry the ranges
    act = getattr(layer, "activation", None)
    if kind == "Activation" and getattr(act, "__name__", "") == "softmax":
        return False
    nxt = consumers[layer.name]
    # Between a computation and its activation, the activation's output is what gets quantized.
    return not (nxt and all(type(c).__name__ in _ACTIVATIONS and type(c).__name__ != "Softmax"
                            and getattr(getattr(c, "activation", None), "__name__", "") != "softmax"
                            for c in nxt))


def _fold(layer: Any, bn: Any) -> list[np.ndarray]:
    """Kernel and bias of ``layer`` with the batch normalization ``bn`` after it folded in."""
    weights = layer.get_weights()
    kernel, bias = weights[0], (weights[1] if layer.use_bias else 0.0)
    channels = kernel.shape[-1] if type(layer).__name__ != "DepthwiseConv2D" else kernel.shape[-2] * kernel.shape[-1]
    gamma = np.asarray(bn.gamma) if bn.scale else np.ones(channels, np.float32)
    beta = np.asarray(bn.beta) if bn.center else np.zeros(channels, np.float32)
    factor = gamma / np.sqrt(np.asarray(bn.moving_variance) + bn.epsilon)
    new_bias = (bias - np.asarray(bn.moving_mean)) * factor + beta
    if type(layer).__name__ == "DepthwiseConv2D":
        new_kernel = kernel * factor.reshape(kernel.shape[-2], kernel.shape[-1])
    else:
        new_kernel = kernel * factor
    return [new_kernel.astype(np.float32), np.asarray(new_bias, np.float32)]


def calibrate_ranges(model: Any, quantizers: list[str], x: np.ndarray, *, batch_size: int = 128) -> None:
    """Set each quantizer's range to the min/max of its input on ``x`` (normalized images),
    computed with every quantizer before it already in place, one quantizer depth at a time."""
    # A probe reads every quantizer's input at once, with the quantizers bypassed: the ranges of
    # float activations, as post-training minmax calibration measures them.
    layers = [model.get_layer(n) for n in quantizers]
    probe = keras.Model(model.inputs, [q.input for q in layers])
    lo = np.full(len(layers), np.inf, np.float32)
    hi = np.full(len(layers), -np.inf, np.float32)
    for q in layers:
        q.bypass = True
    try:
        for i in range(0, len(x), batch_size):
            outs = probe([x[i:i + batch_size]], training=False)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            for k, o in enumerate(outs):
                o = np.asarray(o)
                lo[k], hi[k] = min(lo[k], o.min()), max(hi[k], o.max())
    finally:
        for q in layers:
            q.bypass = False
    for k, q in enumerate(layers):
        q.set_weights([np.float32(min(lo[k], 0.0)), np.float32(max(hi[k], 1e-3))])


def _normalize(images: np.ndarray, card: ModelCard) -> np.ndarray:
    from edgecnn.runtime.preprocess import normalize_batch

    return normalize_batch(images, card.replace(layout="nhwc"))


def fine_tune(model: Any, card: ModelCard, x_train: np.ndarray, y_train: np.ndarray, out_path: str | Path,
              config: QATConfig | None = None, *, progress: Any = None) -> dict[str, Any]:
    """Fine-tune a fake-quantized copy of ``model`` (a Keras classifier; ``card`` gives its
    normalization and output kind) on uint8 NHWC ``x_train``/``y_train`` and save it to ``out_path``.

    Returns:
        What the card and the report record: epochs, lr, images, per-epoch loss and accuracy, time.

    Raises:
        ConfigError: for a model QAT cannot rewrite or a config out of range.
        DataError: without enough labelled training images.
    """
    config = config or QATConfig()
    if card.task != "classify":
        raise ConfigError(f"QAT fine-tunes classifiers (sparse cross-entropy on class labels); this model's task is "
                          f"{card.task}.")
    if x_train is None or y_train is None or len(x_train) < config.batch_size // 4 or len(x_train) != len(y_train):
        raise DataError(f"QAT needs labelled training images (at least {max(1, config.batch_size // 4)}); got "
                        f"{0 if x_train is None else len(x_train)}.")
    if int(np.max(y_train)) >= card.num_classes:
        raise DataError(f"Training labels go up to {int(np.max(y_train))} but the model has {card.num_classes} "
                        "classes: the data does not belong to this model.")
    started = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    qmodel, quantizers = qat_model(model, per_channel=config.per_channel, weight_bits=config.weight_bits)
    rng = np.random.default_rng(config.seed)
    calib = x_train[np.sort(rng.permutation(len(x_train))[:config.calibration_images])]
    calibrate_ranges(qmodel, quantizers, _normalize(calib, card))
    from edgecnn.train.config import AugmentConfig
    from edgecnn.train.pipeline import make_dataset

    steps = int(np.ceil(len(x_train) / config.batch_size))
    aug = AugmentConfig(flip=True, translate=0.0) if config.augment else None
    ds = make_dataset(x_train, np.asarray(y_train).reshape(-1), num_classes=card.num_classes,
                      batch_size=config.batch_size, mean=card.mean, std=card.std, channel_order=card.channel_order,
                      training=True, augment=aug, seed=config.seed)
    schedule = keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=steps * config.epochs)
    qmodel.compile(optimizer=keras.optimizers.Adam(schedule),
                   loss=keras.losses.CategoricalCrossentropy(from_logits=card.output_kind == "logits"),
                   metrics=["accuracy"])
    history = qmodel.fit(ds, epochs=config.epochs, verbose=0, shuffle=False,  # the dataset shuffles itself
                         callbacks=[_Progress(progress, config.epochs)] if progress else None)
    out_path = Path(out_path)
    try:
        qmodel.save(out_path)
    except Exception as err:  # h5py/zip/OS errors
        out_path.unlink(missing_ok=True)
        raise ArtifactError(f"Cannot save the QAT model to {out_path} ({type(err).__name__}: {err}).") from err
    hist = {k: [round(float(v), 4) for v in vals] for k, vals in history.history.items()}
    return {"epochs": config.epochs, "lr": config.lr, "optimizer": "adam, cosine decay",
            "batch_size": config.batch_size,
            "train_images": len(x_train), "augment": "flip" if config.augment else "none",
            "per_channel": config.per_channel, "weight_bits": config.weight_bits,
            "folded_batch_norms": sum(type(layer).__name__ == "Identity" for layer in qmodel.layers),
            "activation_quantizers": len(quantizers), "history": hist,
            "seconds": round(time.perf_counter() - started, 1), "config": asdict(config)}


class _Progress(keras.callbacks.Callback):
    def __init__(self, progress: Any, epochs: int) -> None:
        super().__init__()
        self.progress, self.epochs = progress, epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        self.progress(f"QAT epoch {epoch + 1}/{self.epochs}: loss {logs.get('loss', float('nan')):.4f}, "
                      f"accuracy {100 * logs.get('accuracy', float('nan')):.2f}%")


def fine_tune_source(path: str | Path, out_path: str | Path, *, overrides: Any = None, data: str | Path | None = None,
                     config: QATConfig | None = None, progress: Any = None) -> dict[str, Any]:
    """:func:`fine_tune` the Keras model at ``path`` (a run directory, ``.keras`` or ``.h5``) on its
    run's own training split (the same images, classes and validation hold-out as its training), or
    on the labelled training images of ``data`` (an ``.npz`` with ``x_train``/``y_train`` or a
    folder of class folders); save the QAT model to ``out_path``.

    Raises:
        ArtifactError: for a model that cannot be loaded.
        ConfigError: for a model QAT cannot rewrite.
        DataError: without labelled training images.
    """
    from edgecnn.datasets import load_dataset
    from edgecnn.train.evaluate import load_keras_with_card

    model, card = load_keras_with_card(path, overrides)
    spec = card.dataset.get("path")
    if data is None and not spec:
        raise DataError(f"{Path(path).name} names no training data of its own: QAT needs labelled training images; "
                        "pass --calibration-data with an .npz (x_train, y_train) or a folder of class folders.")
    try:
        if data is not None:
            ds = load_dataset(str(data), input_size=card.input_size, val_split=0.0)
        else:
            train = card.training or {}
            ds = load_dataset("cifar10" if spec == "keras.datasets.cifar10" else spec, input_size=card.input_size,
                              classes=card.dataset.get("classes"), val_split=train.get("val_split", 0.1),
                              seed=train.get("seed", 0), limit=train.get("limit"))
    except DataError as err:
        raise DataError(f"QAT needs labelled training images: {err}") from err
    if ds.num_classes != card.num_classes:
        raise DataError(f"The training data has {ds.num_classes} classes, the model {card.num_classes}: pass the data "
                        "the model was trained on.")
    return fine_tune(model, card.replace(layout="nhwc"), ds.x_train, ds.y_train, out_path, config, progress=progress)
