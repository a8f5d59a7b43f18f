"""Post-training quantization with onnxruntime.quantization: static int8 (QDQ), dynamic int8, fp16.

Type choice (static int8), the same for every ``--cpu-target``: activations uint8 (asymmetric, so
post-ReLU tensors use all 256 levels), weights int8 symmetric per output channel (U8S8); only
``avx2`` stores 7-bit weights (``reduce_range``). Measured against S8S8, onnxruntime's documented
first choice for QDQ, by tools/bench_int8_types.py (docs/benchmarks.md, "S8S8 vs U8S8"), with these
findings:

- On x86 onnxruntime rewrites int8 QDQ activations to uint8 before it fuses the int8 kernels
  (``QDQS8ToU8Transformer``; ARM keeps int8), so an S8S8 file runs mostly on the U8S8 kernels:
  rewritten whole (seed_cnn), int8 activations with an asymmetric range gave U8S8's results
  exactly, saturation included; wherever int8 nodes remained the file was slower (up to 3x at
  batch 1, the LR-ASPP segmenter of tests/data/foreign). The symmetric int8 activations of
  ``activation_type="int8"`` also lost agreement with fp32 (half the levels of a post-ReLU tensor).
- On x86 CPUs with AVX2 but without VNNI, the U8S8 kernels multiply with ``VPMADDUBSW``, which adds
  two u8*s8 products into a saturating int16: 255*127*2 = 64770 overflows, and full 8-bit weights
  cost the packaged seed_cnn 10 pp of CIFAR-10 top-1 on such a CPU (S8S8 as much: same kernels).
  ``reduce_range`` stores weights in [-64, 64] (255*64*2 = 32640 fits) and kept it within 0.2 pp,
  so the ``avx2`` target sets it and the artifact is correct on any x86-64 edge box.
- VNNI's ``VPDPBUSD`` and ARM's dot-product instructions accumulate in int32 without saturation:
  ``vnni`` and ``arm64`` use all 8 bits. Their accuracy was measured with the int8 arithmetic
  emulated exactly (the QDQ graph without onnxruntime's fusions): S8S8 with asymmetric
  activations tied U8S8, symmetric S8S8 agreed less with fp32 on every model; S8S8's speed on ARM
  (native int8 kernels there) is not measured yet.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn._optional import require
from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError, ConfigError, DataError
from edgecnn.export.quant_config import (
    MIN_CALIBRATION_IMAGES,
    DynamicInt8Config,
    Fp16Config,
    ModeConfig,
    StaticInt8Config,
)
from edgecnn.runtime.preprocess import normalize_batch

log = logging.getLogger(__name__)

__all__ = ["quantize_model", "pre_process_for_quantization"]

_CALIBRATION_BATCH = 32


def quantize_model(fp32_path: Path, out_path: Path, *, card: ModelCard, config: ModeConfig,
                   calibration_images: np.ndarray | None = None) -> Any:
    """Quantize the fp32 ONNX file at ``fp32_path`` into the mode of ``config``'s type and write
    the result to ``out_path`` (as onnxruntime's ``quantize(model_input, model_output, config)``).

    Args:
        fp32_path: verified fp32 model.
        out_path: where the quantized model goes (the caller embeds the card and moves it).
        card: the fp32 card (normalization and layout for calibration).
        config: a :class:`StaticInt8Config`, :class:`DynamicInt8Config` or :class:`Fp16Config`
            (:meth:`QuantizeConfig.for_mode` builds one from the export's options).
        calibration_images: uint8 NHWC RGB training images (static int8 only).

    Returns:
        The quantized ``onnx.ModelProto``.

    Raises:
        ConfigError: for a config of no mode.
        DataError: for missing, too few or wrongly shaped calibration images.
    """
    if isinstance(config, Fp16Config):
        return _fp16(fp32_path, out_path, config)
    if not isinstance(config, (StaticInt8Config, DynamicInt8Config)):
        raise ConfigError(f"quantize_model takes a StaticInt8Config, DynamicInt8Config or Fp16Config, not a "
                          f"{type(config).__name__} (QuantizeConfig.for_mode(mode) builds one).")
    fp32_path, out_path = Path(fp32_path).resolve(), Path(out_path).resolve()
    # onnxruntime's symbolic shape inference writes sym_shape_infer_temp.onnx and a <uuid>.data file
    # into the current directory when it fails: run inside the temporary folder, removed on every exit.
    with tempfile.TemporaryDirectory(prefix="edgecnn-quant-") as tmp, _quiet_root_logger(), \
            contextlib.chdir(tmp):
        pre = Path(tmp) / "pre.onnx"
        _pre_process(_per_channel_opset(fp32_path, Path(tmp), config), pre, card=card, work=Path(tmp))
        if isinstance(config, DynamicInt8Config):
            return _check_quantized(_dynamic(pre, out_path, config), config)
        images = check_calibration_images(calibration_images, card, config.calibration_samples)
        return _check_quantized(_static(pre, out_path, card, config, images), config)


_INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
             "QLinearConv", "QLinearMatMul"}


def _check_quantized(model: Any, config: StaticInt8Config | DynamicInt8Config) -> Any:
    """onnxruntime.quantization leaves a graph it cannot handle unchanged, without an error; a file
    named int8 that is the float model must not pass for one (unless nodes were excluded on
    purpose, as accuracy-aware int8 does until, at worst, none is left).

    Raises:
        ArtifactError: if no node was quantized and none was excluded.
    """
    if config.exclude_nodes or _INT8_OPS & {n.op_type for n in model.graph.node}:
        return model
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    ops = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
    raise ArtifactError(f"onnxruntime.quantization quantized no node of this model to {config.mode} (its ops: "
                        f"{ops}); drop -q {config.mode} or try the other int8 mode.")


def calibration_images_given(images: np.ndarray | None) -> np.ndarray:
    """``images``, or DataError when there are none: static int8 needs them."""
    if images is None:
        raise DataError("Static int8 needs calibration images: pass --calibration-data DIR_OR_NPZ (real images).")
    return images


def check_calibration_images(images: np.ndarray | None, card: ModelCard, needed: int) -> np.ndarray:
    """``images``, or DataError unless they are at least ``MIN_CALIBRATION_IMAGES`` uint8 NHWC images
    of the card's input size."""
    h, w = card.input_size
    images = calibration_images_given(images)
    if images.ndim != 4 or images.shape[1:] != (h, w, card.channels):
        raise DataError(f"Calibration images must be (N, {h}, {w}, {card.channels}) to match the model input, "
                        f"got {images.shape}.")
    if len(images) < MIN_CALIBRATION_IMAGES:
        raise DataError(f"Only {len(images)} calibration images; static int8 needs at least "
                        f"{MIN_CALIBRATION_IMAGES} (asked for {needed}).")
    if len(images) < needed:
        log.warning("Calibrating on %d images (asked for %d).", len(images), needed)
    return images


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs one INFO line per tensor on the *root* logger; keep them out
    of the user's terminal unless debugging."""
    root = logging.getLogger()
    level = root.level
    if level > logging.DEBUG:
        root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


# DequantizeLinear takes a per-channel ``axis`` from opset 13 on; at lower opsets onnxruntime
# refuses to load a per-channel QDQ model that quantize_static writes anyway.
_PER_CHANNEL_OPSET = 13


def _per_channel_opset(fp32_path: Path, tmp: Path, config: StaticInt8Config | DynamicInt8Config) -> Path:
    """``fp32_path``, or a copy upgraded to opset 13 by onnx.version_converter when per-channel
    quantization needs it.

    Raises:
        ArtifactError: naming the model's opset, if the converter cannot upgrade it.
    """
    if not config.per_channel:
        return fp32_path
    from edgecnn.export import onnx as onnx_io

    onnx = require("onnx", "export")
    model = onnx.load(str(fp32_path))
    opset = onnx_io.opset_of(model)
    if opset is None or opset >= _PER_CHANNEL_OPSET:
        return fp32_path
    upgraded = onnx_io.convert_opset(model, _PER_CHANNEL_OPSET, why="per-channel int8 (DequantizeLinear axis)")
    path = tmp / "opset13.onnx"
    onnx.save_model(upgraded, str(path))
    return path


def _quant():
    return require("onnxruntime.quantization", "export")


def pre_process_for_quantization(src: Path, dst: Path, *, card: ModelCard | None = None) -> None:
    """Write the graph that :func:`quantize_model` quantizes: ``src`` after ORT's pre-processing.

    Node and tensor names are those of the int8 model, so ``exclude_nodes`` and per-node
    quantization errors (``edgecnn.export.accuracy_aware``) refer to this graph. ``card``: the
    model's (default: the one embedded in ``src``), for the input size of a dynamic-size model.
    """
    src, dst = Path(src).resolve(), Path(dst).resolve()
    with tempfile.TemporaryDirectory(prefix="edgecnn-prep-") as tmp, _quiet_root_logger(), contextlib.chdir(tmp):
        _pre_process(src, dst, card=card, work=Path(tmp))


def _pre_process(src: Path, dst: Path, *, card: ModelCard | None, work: Path) -> None:
    """Symbolic shape inference + ORT basic optimizations (BN folding): ORT's recommended first step.

    Run with ``work``, a temporary folder, as the working directory: onnxruntime writes its
    debugging files there when shape inference fails. A dynamic height, width or channel count is
    fixed at the card's input size first (:func:`fix_input_size`): the runtime feeds every image at
    that size. When symbolic
    shape inference still fails ("Incomplete symbolic shape inference" for a ``Resize`` whose
    sizes depend on a dynamic batch, as in PaddleOCR's text detector; an ``AssertionError`` on a
    ``Concat`` of shapes along axis 1, as in its direction classifier), the step is run again
    with ONNX's own shape inference (``skip_symbolic_shape``), which onnxruntime documents as the
    usual choice for non-transformer models; an error there is the one raised.
    """
    require("sympy", "export")  # symbolic shape inference needs it; fail with the extra's name
    onnx = require("onnx", "export")
    model = onnx.load(str(src))
    card = card or _embedded_card(model)
    if card is not None and fix_input_size(model, card):
        src = work / "fixed_input.onnx"
        onnx.save_model(model, str(src))
    try:
        _quant().quant_pre_process(str(src), str(dst), skip_optimization=False)
    except Exception as err:  # noqa: BLE001 - onnxruntime's shape inference raises bare Exception/AssertionError
        log.info("Symbolic shape inference failed (%s: %s); using ONNX shape inference.", type(err).__name__, err)
        _quant().quant_pre_process(str(src), str(dst), skip_optimization=False, skip_symbolic_shape=True)


def _embedded_card(model: Any) -> ModelCard | None:
    from edgecnn.export import onnx as onnx_io

    try:
        return onnx_io.read_card(model)
    except Exception:  # noqa: BLE001 - an unreadable or malformed card (any error) only means no size to fix from
        return None


def fix_input_size(model: Any, card: ModelCard) -> list[int | str] | None:
    """Fix the dynamic height, width and channel dims of the image input at the card's values, in place.

    The batch axis stays as it is. A named dim is fixed everywhere the graph uses that name
    (onnxruntime's ``make_dim_param_fixed``). Returns the new input shape (a name for a dynamic
    batch), or None when nothing was dynamic.
    """
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

    value = next((v for v in model.graph.input if v.name == card.input_name), None)
    dims = value.type.tensor_type.shape.dim if value is not None else []
    if len(dims) != 4:
        return None
    h, w = card.input_size
    want = (card.channels, h, w) if card.layout == "nchw" else (h, w, card.channels)
    changed = False
    names = [d.dim_param for d in dims if d.HasField("dim_param")]
    for dim, size in zip(list(dims)[1:], want):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            continue
        if dim.HasField("dim_param") and names.count(dim.dim_param) == 1 and dim.dim_param != "?":
            make_dim_param_fixed(model.graph, dim.dim_param, int(size))
        else:
            dim.dim_value = int(size)
        changed = True
    if not changed:
        return None
    return [d.dim_param or d.dim_value for d in dims]


class _ArrayReader:
    """``CalibrationDataReader`` over normalized batches of real images."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self.input_name, self._batches = input_name, batches
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def _static(pre: Path, out_path: Path, card: ModelCard, config: StaticInt8Config, images: np.ndarray) -> Any:
    q = _quant()
    onnx = require("onnx", "export")
    rng = np.random.default_rng(config.seed)
    pick = rng.permutation(len(images))[: config.calibration_samples]
    x = normalize_batch(images[np.sort(pick)], card)
    model = onnx.load(str(pre))
    batch = _fixed_batch(model, card.input_name)
    if batch and len(x) >= batch:  # a static batch axis takes whole batches of exactly that size
        x = x[: len(x) - len(x) % batch]
    step = batch or (_CALIBRATION_BATCH if config.calibration_method == "minmax" else _equal_step(len(x)))
    batches = [x[i:i + step] for i in range(0, len(x), step)]
    excluded = list(config.exclude_nodes) + [n.name for n in model.graph.node if n.op_type in config.exclude_op_types]
    unknown = sorted(set(config.exclude_nodes) - {n.name for n in model.graph.node})
    if unknown:
        raise ConfigError(f"--exclude-node names not in the graph: {', '.join(unknown)}; node names are "
                          f"{', '.join(sorted(n.name for n in model.graph.node)[:12])}...")
    types = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    extra = {"ActivationSymmetric": config.activation_type == "int8", "WeightSymmetric": True,
             "CalibMovingAverage": False, **config.extra}
    if config.calibration_method == "percentile":
        extra["CalibPercentile"] = config.percentile
    reader: _ArrayReader | None = _ArrayReader(card.input_name, batches)
    cache = None
    if config.calibration_method == "entropy":
        reader, cache = None, _entropy_ranges(pre, _ArrayReader(card.input_name, batches))
    q.quantize_static(
        str(pre), str(out_path), reader, calibration_cache_path=cache,
        quant_format=q.QuantFormat.QDQ, per_channel=config.per_channel, reduce_range=config.reduce_range,
        activation_type=types[config.activation_type], weight_type=types[config.weight_type],
        nodes_to_exclude=excluded, calibrate_method=methods[config.calibration_method],
        op_types_to_quantize=None if config.op_types is None else list(config.op_types),
        calibration_providers=["CPUExecutionProvider"], extra_options=extra,
    )
    return onnx.load(str(out_path))


def _equal_step(n: int, cap: int = _CALIBRATION_BATCH) -> int:
    """The largest batch size up to ``cap`` that splits ``n`` images into equal batches.

    onnxruntime's histogram calibrators (entropy, percentile) stack every batch's activations
    with ``np.asarray``, which fails on a shorter last batch ("inhomogeneous shape"); MinMax
    reduces each batch on its own and takes any sizes.
    """
    return max(d for d in range(1, min(cap, n) + 1) if n % d == 0)


def _fixed_batch(model: Any, input_name: str) -> int | None:
    """The input's batch size when the graph fixes it (e.g. 1 in many exported detectors)."""
    value = next((v for v in model.graph.input if v.name == input_name), None)
    dims = value.type.tensor_type.shape.dim if value is not None else []
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


def _entropy_ranges(pre: Path, reader: _ArrayReader) -> Path:
    """KL-divergence (entropy) ranges with 2048 histogram bins, saved as ORT's calibration cache.

    Workaround: ``quantize_static`` builds its entropy calibrator with 128 histogram bins and 128
    quantized bins, so the only candidate threshold is the full range and "entropy" returns the
    MinMax ranges (measured: identical scales). TensorRT's KL calibration, which ORT's follows, uses
    2048 bins searched down to 128. Remove when ``quantize_static`` forwards the bin counts
    (no ``CalibNumBins`` key in its ``calib_extra_options_keys`` as of onnxruntime 1.32).
    """
    calibrate = require("onnxruntime.quantization.calibrate", "export")
    if not hasattr(calibrate, "save_tensors_data"):
        raise ConfigError("--calibration-method entropy needs an onnxruntime whose quantize_static takes "
                          "calibration_cache_path (>= 1.22); upgrade it or use minmax/percentile.")
    calibrator = calibrate.create_calibrator(
        pre, None, augmented_model_path=str(pre.parent / "augmented.onnx"),
        calibrate_method=calibrate.CalibrationMethod.Entropy, providers=["CPUExecutionProvider"],
        extra_options={"symmetric": False, "num_bins": 2048, "num_quantized_bins": 128},
    )
    calibrator.collect_data(reader)
    cache = pre.parent / "entropy_ranges.json"
    calibrate.save_tensors_data(calibrator.compute_data(), cache)
    return cache


def _dynamic(pre: Path, out_path: Path, config: DynamicInt8Config) -> Any:
    q = _quant()
    onnx = require("onnx", "export")
    # Dynamic mode quantizes activations at run time (DynamicQuantizeLinear -> uint8), so the same
    # U8S8 saturation argument applies and ``reduce_range`` follows the target.
    types = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}
    q.quantize_dynamic(str(pre), str(out_path), per_channel=config.per_channel, reduce_range=config.reduce_range,
                       weight_type=types[config.weight_type], op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                       nodes_to_exclude=list(config.exclude_nodes))
    return onnx.load(str(out_path))


def _fp16(src: Path, out_path: Path, config: Fp16Config) -> Any:
    onnx = require("onnx", "export")
    float16 = require("onnxruntime.transformers.float16", "export")
    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=config.keep_io_float32)
    onnx.save_model(model, str(out_path))
    return model
