"""What a CNN looks for and what it sees: the first convolution's filters and the feature maps of
chosen layers for one image, as PNG grids (figures 2 and 3 of the tutorial edgecnn grew from).

Every tile is scaled on its own: a filter's kernel to 0-255 (in colour when it reads RGB), a
feature map to [0, 1] under the viridis colormap, so each shows its pattern whatever its
magnitude (a constant filter is drawn mid-gray, a constant map, such as a dead ReLU channel's, at
the colormap's low end). Tiles smaller than :data:`MIN_TILE` pixels are enlarged by pixel
repetition, never smoothed.
"""

from __future__ import annotations

import difflib
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

import edgecnn.train._tf  # noqa: F401  (before keras: TensorFlow loads quietly)
from edgecnn._files import atomic_write_bytes
from edgecnn.errors import ArtifactError, ConfigError
from edgecnn.presets import ModelOverrides

__all__ = ["FeatureImage", "conv_layers", "default_layers", "feature_maps", "features_files", "filter_grid",
           "first_conv", "map_grid", "tile_grid"]

MIN_TILE = 32  # pixels: a 3x3 kernel or a 4x4 map is enlarged to at least this
GAP = 2  # pixels of background between tiles
BACKGROUND = 255  # white around and between tiles (no filter or map tile is all white)
_CONV_TYPES = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
_KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass(frozen=True)
class FeatureImage:
    """One PNG grid: what it shows and how it is laid out."""

    path: Path
    kind: str  # "filters" or "maps"
    layer: str
    tiles: int
    tile_shape: tuple[int, int]  # (height, width) of one kernel or map before enlarging
    grid: tuple[int, int]  # (rows, columns)
    of: int | None = None  # the layer's count when only the most active ``tiles`` are drawn

    def describe(self) -> str:
        what = "filters" if self.kind == "filters" else "feature maps"
        h, w = self.tile_shape
        count = f"the {self.tiles} most active of {self.of}" if self.of else str(self.tiles)
        return f"{count} {what} of {self.layer} ({h}x{w}, {self.grid[0]}x{self.grid[1]} grid)"


# ----------------------------------------------------------------------------- layers by name


def _walk(model: keras.Model, prefix: str = "") -> Iterator[tuple[str, keras.layers.Layer]]:
    """(name, layer) in graph order, nested models' layers as ``outer/inner`` after the outer one."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        yield prefix + layer.name, layer
        if isinstance(layer, keras.Model):
            yield from _walk(layer, f"{prefix}{layer.name}/")


def conv_layers(model: keras.Model) -> list[str]:
    """Names of the convolutions, nested backbones' included (``backbone/Conv1``)."""
    return [name for name, layer in _walk(model) if isinstance(layer, _CONV_TYPES)]


def first_conv(model: keras.Model) -> tuple[str, keras.layers.Layer]:
    """The first ``Conv2D`` of the model (searching nested backbones too).

    Raises:
        ArtifactError: if the model has none.
    """
    for name, layer in _walk(model):
        if isinstance(layer, keras.layers.Conv2D):
            return name, layer
    raise ArtifactError(f"{model.name} has no Conv2D layer: there are no filters to draw.")


def default_layers(model: keras.Model) -> list[str]:
    """The first convolution and the last convolutional block (Grad-CAM's layer)."""
    from edgecnn.train.gradcam import target_layer

    names = [first_conv(model)[0]]
    last = target_layer(model).name
    return names if last in names else [*names, last]


def _summary(names: list[str], head: int = 8) -> str:
    if len(names) <= head + 2:
        return ", ".join(names)
    return f"{', '.join(names[:head])}, ..., {', '.join(names[-2:])} ({len(names)} in all)"


def _unknown(model: keras.Model, name: str) -> ConfigError:
    close = difflib.get_close_matches(name, [n for n, _ in _walk(model)], n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"No layer {name!r} in {model.name}.{hint} Convolutional layers: "
                       f"{_summary(conv_layers(model)) or 'none'}.")


def _called_on(layer: keras.layers.Layer):
    """The tensor a layer was called on in the graph that holds it (the input side of
    :func:`edgecnn.train.gradcam.layer_output`: a nested model's ``input`` is its own graph's)."""
    return layer._inbound_nodes[0].input_tensors[0]


def _graph(model: keras.Model) -> tuple[list, dict[str, object]]:
    """The model's inputs and every top-level layer's output in one graph.

    A loaded Keras 3 ``Sequential`` gives its layers' outputs from a separate trace (see
    :func:`edgecnn.train.gradcam._grad_model`), so its layers are called once on a fresh input.
    """
    if isinstance(model, keras.Sequential):
        x = inputs = keras.Input(model.inputs[0].shape[1:])
        outputs = {}
        for layer in model.layers:
            x = outputs[layer.name] = layer(x)
        return [inputs], outputs
    from edgecnn.train.gradcam import layer_output

    return model.inputs, {layer.name: layer_output(layer) for layer in model.layers
                          if not isinstance(layer, keras.layers.InputLayer)}


def _layer_tensor(model: keras.Model, name: str, tensors: dict[str, object]):
    """The symbolic output of ``name`` (``outer/inner`` reaches into a nested functional model).

    Raises:
        ConfigError: for an unknown name or a layer without one 4-D output.
    """
    outer, _, inner = name.partition("/")
    if outer not in tensors:
        raise _unknown(model, name)
    tensor = tensors[outer]
    if inner:
        # One level deep: a transfer model's backbone (Sequential models keep no separate graph).
        nested = model.get_layer(outer)
        if "/" in inner or not isinstance(nested, keras.Model) or isinstance(nested, keras.Sequential):
            raise _unknown(model, name)
        try:
            target = nested.get_layer(inner)
        except ValueError:
            raise _unknown(model, name) from None
        tensor = keras.Model(nested.inputs, target.output)(_called_on(nested))
    shape = getattr(tensor, "shape", None)
    if shape is None or len(shape) != 4:
        raise ConfigError(f"Layer {name!r} of {model.name} outputs "
                          f"{tuple(shape) if shape is not None else 'several tensors'}"
                          f", not feature maps; choose a convolutional layer: {_summary(conv_layers(model))}.")
    return tensor


def feature_maps(model: keras.Model, x: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
    """Each named layer's output for one preprocessed NHWC image, as (height, width, channels).

    Raises:
        ConfigError: for an unknown layer or one whose output is not a 4-D feature map.
    """
    inputs, tensors = _graph(model)
    wanted = [_layer_tensor(model, name, tensors) for name in layers]
    outputs = keras.Model(inputs, wanted)([np.asarray(x[:1], np.float32)], training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return {name: np.asarray(out, dtype=np.float32)[0] for name, out in zip(layers, outputs)}


# ------------------------------------------------------------------------------------ drawing


def _unit(a: np.ndarray, axes: tuple[int, ...], *, constant: float) -> np.ndarray:
    """Min-max scale to [0, 1] over ``axes``; a constant slice becomes ``constant``."""
    lo, hi = a.min(axis=axes, keepdims=True), a.max(axis=axes, keepdims=True)
    span = hi - lo
    return np.divide(a - lo, span, out=np.full_like(a, constant), where=span > 0)


def tile_grid(tiles: np.ndarray, *, min_tile: int = MIN_TILE, gap: int = GAP) -> np.ndarray:
    """Lay (n, h, w, 3) uint8 tiles out row by row in a near-square grid on a white background.

    Each tile is enlarged by pixel repetition to at least ``min_tile`` pixels on its short side.
    The result is ``rows * (h * s + gap) + gap`` by ``cols * (w * s + gap) + gap`` pixels, with
    ``cols = ceil(sqrt(n))``, ``rows = ceil(n / cols)`` and ``s`` the enlargement.
    """
    n, h, w = tiles.shape[:3]
    s = max(1, math.ceil(min_tile / min(h, w)))
    tiles = tiles.repeat(s, axis=1).repeat(s, axis=2)
    rows, cols = _grid(n)
    th, tw = h * s, w * s
    grid = np.full((rows * (th + gap) + gap, cols * (tw + gap) + gap, 3), BACKGROUND, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        top, left = gap + r * (th + gap), gap + c * (tw + gap)
        grid[top:top + th, left:left + tw] = tile
    return grid


def filter_grid(kernel: np.ndarray, *, channel_order: str = "RGB", min_tile: int = MIN_TILE) -> np.ndarray:
    """The filters of a (kh, kw, in, out) kernel as a grid, each filter scaled to 0-255 on its own.

    Three input channels give colour tiles (a BGR model's flipped to RGB); one gives gray; any other
    count (a first Conv2D after another layer) shows each filter's mean over its inputs.
    """
    k = np.asarray(kernel, np.float32)
    if k.shape[2] == 3:
        k = k[:, :, ::-1] if channel_order == "BGR" else k
    else:
        k = k.mean(axis=2, keepdims=True).repeat(3, axis=2)
    tiles = np.round(_unit(k, (0, 1, 2), constant=0.5) * 255).astype(np.uint8).transpose(3, 0, 1, 2)
    return tile_grid(tiles, min_tile=min_tile)


def map_grid(maps: np.ndarray, *, min_tile: int = MIN_TILE) -> np.ndarray:
    """(h, w, channels) feature maps as a grid of viridis tiles, each map scaled on its own."""
    from edgecnn._optional import pyplot

    pyplot()  # matplotlib (the [plot] extra), or a one-line error naming it
    from matplotlib import colormaps

    unit = _unit(np.asarray(maps, np.float32), (0, 1), constant=0.0)  # a dead (all-zero) map: dark
    colored = colormaps["viridis"](unit.transpose(2, 0, 1))[..., :3]
    return tile_grid(np.round(colored * 255).astype(np.uint8), min_tile=min_tile)


def _png(image: np.ndarray) -> bytes:
    """An RGB PNG of exactly the grid's pixels (no figure margins, no alpha channel)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------ files


def _check_source(run: Path) -> None:
    if not run.exists():
        raise ArtifactError(f"{run} does not exist; pass a run directory or a .keras/.h5 file.")
    onnx = run.suffix.lower() == ".onnx" or (run.is_dir() and not (run / "model.keras").is_file()
                                             and any(run.glob("*.onnx")))
    if onnx:
        raise ArtifactError(f"{run} is an ONNX export; filters and feature maps need the Keras model: pass the run "
                            "directory it came from or its model.keras (.h5 works too).")
    if not run.is_dir() and run.suffix.lower() not in _KERAS_SUFFIXES:
        raise ArtifactError(f"{run}: features need a Keras model (a run directory or a .keras/.h5 file), got "
                            f"{run.suffix or 'a file without extension'}.")


def features_files(run: str | Path, image: str | Path, out: str | Path, *, layers: Sequence[str] = (),
                   overrides: ModelOverrides | None = None, max_maps: int = 64) -> list[FeatureImage]:
    """Write ``filters.<layer>.png`` and ``<image>.<layer>.png`` for each chosen layer into ``out``.

    ``run`` is a run directory or a ``.keras``/``.h5`` model (described by ``overrides`` when it has
    no card); ``layers`` default to :func:`default_layers`. A layer of more than ``max_maps`` maps
    draws its ``max_maps`` most active (by mean activation on the image), in channel order. Everything is
    computed before the first file is written, so a bad layer or image leaves nothing behind.

    Raises:
        ArtifactError: for a missing, corrupt or ONNX model, or one without a Conv2D.
        ConfigError: for an unknown layer or one without feature maps.
        InputError: for an unreadable image.
    """
    from edgecnn.runtime.preprocess import load_image, normalize_batch
    from edgecnn.train.evaluate import load_keras_with_card
    from edgecnn.train.run import is_run_model

    run, image, out = Path(run), Path(image), Path(out)
    _check_source(run)
    model, card = load_keras_with_card(run, overrides)
    if is_run_model(run):
        card = card.replace(layout="nhwc")  # the Keras model of a run takes NHWC, whatever its exports do
    pixels = load_image(image, card.input_size, channels=card.channels)
    layers = list(dict.fromkeys(layers)) or default_layers(model)
    maps = feature_maps(model, normalize_batch(pixels[None], card), layers)
    if card.layout == "nchw":  # a channels-first Keras model: its maps are (channels, h, w)
        maps = {name: m.transpose(1, 2, 0) for name, m in maps.items()}
    conv_name, conv = first_conv(model)
    kernel = np.asarray(conv.kernel)
    pending = [(FeatureImage(out / f"filters.{_safe(conv_name)}.png", "filters", conv_name, kernel.shape[3],
                             kernel.shape[:2], _grid(kernel.shape[3])),
                filter_grid(kernel, channel_order=card.channel_order))]
    if max_maps < 1:
        raise ConfigError(f"--max-maps must be at least 1, got {max_maps}.")
    for name, m in maps.items():
        total = m.shape[2]
        if total > max_maps:
            m = m[..., np.sort(np.argsort(-m.mean(axis=(0, 1)), kind="stable")[:max_maps])]
        pending.append((FeatureImage(out / f"{image.stem}.{_safe(name)}.png", "maps", name, m.shape[2], m.shape[:2],
                                     _grid(m.shape[2]), total if total > max_maps else None), map_grid(m)))
    encoded = [(record, _png(grid)) for record, grid in pending]
    written: list[Path] = []
    try:
        for record, data in encoded:
            written.append(atomic_write_bytes(record.path, data))
    except OSError as err:
        for path in written:
            path.unlink(missing_ok=True)
        raise ArtifactError(f"Cannot write into {out}: {err.strerror or err}.") from err
    return [record for record, _ in encoded]


def _grid(n: int) -> tuple[int, int]:
    """(rows, columns) of a near-square grid of ``n`` tiles."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def _safe(layer: str) -> str:
    return layer.replace("/", "-")
