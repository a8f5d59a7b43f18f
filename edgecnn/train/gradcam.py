"""Grad-CAM (Selvaraju et al., 2017): which regions of the image drove the class score, from
the gradients of the class logit with respect to the last convolutional feature map."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

import edgecnn.train._tf  # noqa: F401  (before keras: TensorFlow loads quietly)
from edgecnn.errors import ArtifactError, InputError
from edgecnn.presets import ModelOverrides

__all__ = ["gradcam", "target_layer", "layer_output", "overlay", "gradcam_files"]


def layer_output(layer: keras.layers.Layer):
    """The tensor (or list) a layer returned in the model that holds it.

    A nested model's ``output`` (a transfer model's backbone) is the tensor of its own graph, not
    the one it returned in the outer model, and Keras 3 has no public handle on that one: read the
    node of its first call.
    """
    outputs = layer._inbound_nodes[0].output_tensors
    return outputs[0] if len(outputs) == 1 else outputs


def target_layer(model: keras.Model, name: str | None = None) -> keras.layers.Layer:
    """The named layer, or the last layer with a 4-D output (the last conv block; a nested
    backbone counts as one layer).

    Raises:
        ArtifactError: if no such layer exists.
    """
    if name:
        try:
            return model.get_layer(name)
        except ValueError as err:
            raise ArtifactError(f"No layer {name!r} in {model.name}.") from err
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if len(layer.output.shape) == 4:
            return layer
    raise ArtifactError(f"{model.name} has no convolutional feature map for Grad-CAM.")


def gradcam(model: keras.Model, x: np.ndarray, *, class_index: Sequence[int] | int | None = None,
            layer: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heatmaps for a normalized NHWC batch.

    Returns:
        (heatmaps in [0, 1] at the feature-map resolution, explained class per image, probabilities)
    """
    single = len(x) == 1
    if single:
        # TensorFlow 2.21's oneDNN Conv2DBackpropFilter aborts the process on a batch of one
        # (seen on AVX2 CPUs); a duplicated image gives the same heatmap. Remove once fixed upstream.
        x = np.concatenate([x, x])
    conv_layer = target_layer(model, layer)
    grad_model, from_output = _grad_model(model, conv_layer)
    x = tf.convert_to_tensor(x, tf.float32)
    with tf.GradientTape() as tape:
        conv, logits, probs = grad_model(x, training=False)
        if from_output and _ends_in_softmax(model):
            # No separate logits layer (a model from elsewhere): the log-probability's gradient is the
            # class logit's minus the probability-weighted mean of all logits' gradients.
            logits = tf.math.log(tf.maximum(logits, 1e-12))
        elif from_output:
            probs = tf.nn.softmax(logits)
        if class_index is None:
            cls = tf.argmax(logits, axis=1, output_type=tf.int32)
        else:
            cls = tf.broadcast_to(tf.constant(class_index, tf.int32), [tf.shape(x)[0]])
        score = tf.gather(logits, cls, axis=1, batch_dims=1)
    grads = tape.gradient(score, conv)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1)).numpy()
    # min-max per image (as pytorch-grad-cam scales): divided by its peak alone, a map whose cells
    # are all near the peak (a 2x2 last block) painted the whole image red
    low = cam.reshape(len(cam), -1).min(axis=1).reshape(-1, 1, 1)
    span = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1) - low
    cam = np.divide(cam - low, span, out=np.zeros_like(cam), where=span > 0)
    cls, probs = cls.numpy(), np.asarray(probs)
    return (cam[:1], cls[:1], probs[:1]) if single else (cam, cls, probs)


def _grad_model(model: keras.Model, conv_layer: keras.layers.Layer) -> tuple[keras.Model, bool]:
    """A model returning (feature map, class scores, model output), and whether the scores are the
    model output itself (no separate ``logits`` layer, as in models from elsewhere).

    A loaded Keras 3 ``Sequential`` gives its layers' ``output`` tensors and its ``outputs`` from
    separate traces, so a ``keras.Model`` spanning both has no gradient path between them (the
    tape returns None); calling its layers once on a fresh input joins them in one graph.
    """
    if isinstance(model, keras.Sequential):
        x = inputs = keras.Input(model.inputs[0].shape[1:])
        feats = logits = None
        for lyr in model.layers:
            x = lyr(x)
            feats = x if lyr is conv_layer else feats
            logits = x if lyr.name == "logits" else logits
        return keras.Model(inputs, [feats, x if logits is None else logits, x]), logits is None
    try:
        return keras.Model(model.inputs, [layer_output(conv_layer), model.get_layer("logits").output,
                                          model.outputs[0]]), False
    except ValueError:
        return keras.Model(model.inputs, [layer_output(conv_layer), model.outputs[0], model.outputs[0]]), True


def _ends_in_softmax(model: keras.Model) -> bool:
    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    return activation == "softmax" or isinstance(last, keras.layers.Softmax)


def overlay(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45, min_side: int = 256) -> Image.Image:
    """The image and its heatmap (jet colormap) blended, upscaled so small images stay visible."""
    from matplotlib import colormaps

    img = Image.fromarray(image)
    scale = max(1, int(np.ceil(min_side / min(img.size))))
    size = (img.width * scale, img.height * scale)
    img = img.resize(size, Image.Resampling.BICUBIC)
    heat = Image.fromarray((heatmap * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    colored = (colormaps["jet"](np.asarray(heat) / 255.0)[..., :3] * 255).astype(np.uint8)
    return Image.blend(img.convert("RGB"), Image.fromarray(colored), alpha)


def gradcam_files(run: str | Path, images: Sequence[str | Path], out: str | Path, *,
                  class_name: str | None = None, layer: str | None = None,
                  overrides: ModelOverrides | None = None) -> list[dict]:
    """Grad-CAM PNGs (image | overlay) for image files; returns one record per image.

    ``run`` is a run directory or any ``.keras``/``.h5`` classifier (described by ``overrides``
    when it has no card).

    Raises:
        ArtifactError, InputError, DataError: for a bad model, class name or image.
    """
    from edgecnn.datasets import read_image
    from edgecnn.runtime.preprocess import load_image, normalize_batch
    from edgecnn.train.evaluate import load_keras_with_card
    from edgecnn.train.plots import _pyplot
    from edgecnn.train.run import is_run_model

    run = Path(run)
    if not run.exists():
        raise ArtifactError(f"{run} does not exist; pass a run directory or a .keras/.h5 file.")
    if not run.is_dir() and run.suffix.lower() not in (".keras", ".h5", ".hdf5"):
        raise ArtifactError(f"{run}: Grad-CAM needs the Keras model (a run directory or a .keras/.h5 file), got "
                            f"{run.suffix or 'a file without extension'}.")
    model, card = load_keras_with_card(run, overrides)
    if is_run_model(run):
        card = card.replace(layout="nhwc")  # the Keras model of a run takes NHWC, whatever its exports do
    if card.task != "classify":
        raise ArtifactError(f"{run} is a {card.task} model; Grad-CAM explains classifiers (pass --task classify if it "
                            "is one).")
    cls = None
    if class_name is not None:
        if class_name not in card.class_names:
            raise InputError(f"Unknown class {class_name!r}; the model knows {', '.join(card.class_names)}.")
        cls = card.class_names.index(class_name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    records = []
    for path in map(Path, images):
        full = read_image(path, None)
        small = load_image(path, card.input_size, channels=card.channels)
        cams, chosen, probs = gradcam(model, normalize_batch(small[None], card), class_index=cls, layer=layer)
        c = int(chosen[0])
        fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.6))
        axes[0].imshow(Image.fromarray(full).resize(overlay(full, cams[0]).size, Image.Resampling.BICUBIC))
        axes[1].imshow(overlay(full, cams[0]))
        for ax in axes:
            ax.axis("off")
        from matplotlib import cm, colors

        bar = fig.colorbar(cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap="jet"), ax=axes[1], fraction=0.046,
                           pad=0.02, ticks=[0, 1])
        bar.ax.set_yticklabels(["least", "most"])  # relative to this image's own range
        axes[0].set_title(path.name)
        axes[1].set_title(f"Grad-CAM: {card.class_names[c]} ({probs[0, c]:.1%})")
        target = out / f"{path.stem}.gradcam.png"
        fig.savefig(target, dpi=100, bbox_inches="tight")
        plt.close(fig)
        records.append({"image": str(path), "class": card.class_names[c], "probability": float(probs[0, c]),
                        "predicted": card.class_names[int(probs[0].argmax())], "file": str(target)})
    return records
