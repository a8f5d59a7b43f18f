"""Transfer models: a pretrained backbone (keras.applications or one of our own runs) with a new
head; the input is resized to the backbone's size inside the model, and the backbone's own
preprocessing is recorded in the card (the runtime applies it, the model never sees raw pixels)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecnn._optional import require
from edgecnn.errors import ArtifactError, ModelNotFoundError
from edgecnn.train.run import Preprocessing, load_run_model

if TYPE_CHECKING:  # Keras loads when a model is built: listing BACKBONES needs no TensorFlow
    import keras

__all__ = ["BACKBONES", "build_transfer_model", "set_fine_tune", "BACKBONE_LAYER", "application_backbone"]

BACKBONE_LAYER = "backbone"


@dataclass(frozen=True)
class _Backbone:
    application: str  # the keras.applications constructor
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str = "RGB"
    kwargs: tuple[tuple[str, Any], ...] = ()


# Each backbone's preprocess_input written as mean/std on the 0-255 scale:
#   'tf' mode: x / 127.5 - 1; 'caffe' mode: BGR, minus the ImageNet mean;
#   MobileNetV3 and EfficientNet rescale inside the model, so they take raw 0-255 pixels.
BACKBONES: dict[str, _Backbone] = {
    "mobilenet_v2": _Backbone("MobileNetV2", 224, (127.5,) * 3, (127.5,) * 3),
    "mobilenet_v3_small": _Backbone("MobileNetV3Small", 224, (0.0,) * 3, (1.0,) * 3,
                                    kwargs=(("include_preprocessing", True),)),
    "resnet50": _Backbone("ResNet50", 224, (103.939, 116.779, 123.68), (1.0,) * 3, "BGR"),
    "vgg16": _Backbone("VGG16", 224, (103.939, 116.779, 123.68), (1.0,) * 3, "BGR"),
    "efficientnet_b0": _Backbone("EfficientNetB0", 224, (0.0,) * 3, (1.0,) * 3),
}


# What Keras's load_weights reads: the legacy .h5 that keras.applications downloads
# ("..._no_top.h5"), save_weights' .weights.h5, and a whole .keras model's weights.
WEIGHTS_SUFFIXES = (".h5", ".hdf5", ".keras")


def _one_line(err: BaseException, limit: int = 160) -> str:
    """An exception as one short line (Keras's load errors span several)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _weights_file(weights: str, name: str) -> str:
    """The path of a local weights file, checked before Keras reads it.

    Raises:
        ArtifactError: for a missing file or one Keras cannot hold weights in (an .onnx, say).
    """
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ArtifactError(f"No weights file at {path}; pass --weights imagenet, none or the backbone's 'notop' .h5 "
                            "file.")
    if not path.name.lower().endswith(WEIGHTS_SUFFIXES):
        raise ArtifactError(f"--weights {path}: a {path.suffix or 'suffix-less'} file holds no Keras weights; pass "
                            f"{name}'s 'notop' .h5 file (as keras.applications downloads it, or written with "
                            "save_weights as .weights.h5) or a .keras model of the same architecture.")
    return str(path)


def application_backbone(name: str, size: int | tuple[int, int], weights: str) -> tuple[keras.Model, Preprocessing]:
    spec = BACKBONES[name]
    factory = getattr(require("keras", "train").applications, spec.application)
    w: str | None = None if weights == "none" else weights
    if w not in (None, "imagenet"):
        w = _weights_file(w, name)
    try:
        height, width = (size, size) if isinstance(size, int) else size
        model = factory(input_shape=(height, width, 3), include_top=False, weights=w, **dict(spec.kwargs))
    except Exception as err:  # download (URL/socket) errors, or a weights file that does not fit
        if weights == "imagenet":
            raise ArtifactError(
                f"Could not get ImageNet weights for {name} ({_one_line(err, 100)}); "
                "offline, pass --weights PATH to a local copy of the backbone's 'notop' .h5 file "
                "(Keras caches downloads in ~/.keras/models/), or --weights none."
            ) from err
        # Keras checks every variable's shape and the layer count, so a file of another
        # architecture or width fails here rather than loading half the backbone.
        raise ArtifactError(f"Cannot load {w} into {name} (keras.applications.{spec.application}, include_top=False): "
                            f"corrupt, or the weights of another architecture ({_one_line(err)}).") from err
    return model, Preprocessing(mean=spec.mean, std=spec.std, channel_order=spec.channel_order,
                                normalization=f"backbone:{name}")


def _run_backbone(run: Path) -> tuple[keras.Model, Preprocessing, int]:
    from edgecnn.card import ModelCard

    keras = require("keras", "train")
    card = ModelCard.load(run)
    src = load_run_model(run)
    last4d = [layer for layer in src.layers if len(layer.output.shape) == 4]
    if not last4d:
        raise ArtifactError(f"{run} has no convolutional feature map to transfer.")
    model = keras.Model(src.inputs, last4d[-1].output, name=f"{card.architecture}_features")
    pre = Preprocessing(mean=card.mean, std=card.std, channel_order=card.channel_order,
                        normalization=f"backbone:{run.name}")
    return model, pre, card.input_size[0]


def build_transfer_model(
    backbone: str,
    num_classes: int,
    *,
    input_size: tuple[int, int],
    weights: str = "imagenet",
    backbone_input_size: int | None = None,
    dropout: float = 0.2,
) -> tuple[keras.Model, Preprocessing]:
    """Backbone (frozen) + global pooling + dropout + a new Dense head.

    Returns:
        The model and its preprocessing (the backbone's own mean, std and channel order) for the card.

    Raises:
        ModelNotFoundError: for an unknown backbone name.
        ArtifactError: when weights cannot be loaded (offline ImageNet download included).
    """
    keras = require("keras", "train")
    layers = keras.layers
    path = Path(backbone).expanduser()
    if backbone in BACKBONES:
        size = backbone_input_size or BACKBONES[backbone].size
        base, pre = application_backbone(backbone, size, weights)
    elif path.is_dir() and (path / "model.keras").is_file():
        base, pre, native = _run_backbone(path)
        size = backbone_input_size or native
    else:
        import difflib

        close = difflib.get_close_matches(backbone, BACKBONES, n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelNotFoundError(
            f"Unknown backbone {backbone!r}.{hint} Use one of {', '.join(BACKBONES)} or a run directory."
        )
    base.trainable = False
    base.name = BACKBONE_LAYER
    inputs = keras.Input((*input_size, 3), name="images")
    x = inputs
    if tuple(input_size) != (size, size):
        x = layers.Resizing(size, size, interpolation="bilinear", name="resize")(x)
    # training=False keeps batch norm in inference mode, also while fine-tuning.
    x = base(x, training=False)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    # Backbones without batch norm at their end (VGG16: pooled ReLU features up to ~200 on CIFAR) give a
    # fresh Dense logits in the tens, and a short head phase never recovers (17.8% vs 29.0% with this
    # layer, docs/benchmarks.md); momentum 0.9 so the moving statistics keep up with short runs.
    x = layers.BatchNormalization(momentum=0.9, name="features_bn")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("softmax", name="probabilities", dtype="float32")(x)  # float32 under mixed precision
    return keras.Model(inputs, outputs, name=f"transfer_{Path(backbone).name}"), pre


def set_fine_tune(model: keras.Model, top_layers: int) -> int:
    """Unfreeze the top ``top_layers`` layers of the backbone, keeping batch norm frozen.

    Returns:
        The number of layers unfrozen.
    """
    layers = require("keras", "train").layers
    base = model.get_layer(BACKBONE_LAYER)
    base.trainable = True
    unfrozen = 0
    for i, layer in enumerate(base.layers):
        trainable = i >= len(base.layers) - top_layers and not isinstance(layer, layers.BatchNormalization)
        layer.trainable = trainable
        unfrozen += int(trainable and bool(layer.weights))
    return unfrozen
