"""Baselines for ``edgecnn bench --compare``: the Keras model and its LiteRT (TFLite) full-int8 twin.

Owned by the runtime stage (it lives here because TensorFlow may only be imported under
``edgecnn/train/``). Each thread count runs in a fresh spawned process: TensorFlow fixes its
thread pools at start-up, so one process cannot honestly measure 1 and then 2 threads.

Runners:
  * ``keras.predict``: ``model.predict(x, batch_size=N)``, what most users call.
  * ``keras.tf_function``: ``tf.function(model)`` with a fixed input signature, output to numpy.
  * ``litert``: the Keras model converted by ``tf.lite.TFLiteConverter`` with full-int8 post-training
    quantization (int8 weights, activations, input and output) on the given calibration images,
    run on ``ai_edge_litert.interpreter.Interpreter`` with ``num_threads``; the timed call is
    ``set_tensor`` + ``invoke`` + ``get_tensor`` (the equivalent of one ``session.run``).
"""

from __future__ import annotations

import logging
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgecnn._optional import require
from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)

__all__ = ["run_baselines", "convert_litert_int8", "calibration_images", "RUNNERS"]

RUNNERS = ("keras", "litert")
_PREDICT_MAX_RUNS = 100  # model.predict costs tens of ms per call; more runs change nothing but the wait


def calibration_images(card: ModelCard, n: int = 128, data: str | Path | None = None) -> np.ndarray:
    """``n`` uint8 NHWC calibration images at the card's size: the first train images of ``data``
    (an .npz in the keras layout) or of the embedded CIFAR-10 sample."""
    from edgecnn.datasets import load_embedded_sample, load_npz, resize_all

    x = load_npz(data)[0] if data is not None else load_embedded_sample()[0]
    return resize_all(x[:n], card.input_size)


def convert_litert_int8(keras_file: str | Path, card: ModelCard, calibration: np.ndarray) -> bytes:
    """The Keras model as a full-int8 TFLite flatbuffer, calibrated on ``calibration`` (uint8 pixels).

    Raises:
        ArtifactError: if the model cannot be loaded or converted.
    """
    tf = require("tensorflow", "train")
    from edgecnn.runtime.preprocess import normalize_batch

    model = _load_keras(keras_file)
    nhwc = replace(card, layout="nhwc")
    h, w = card.input_size
    with tempfile.TemporaryDirectory() as tmp:
        # A SavedModel freezes Keras 3 variables for the converter; from_concrete_functions
        # leaves READ_VARIABLE ops that fail at conversion time.
        model.export(tmp, format="tf_saved_model", verbose=False,
                     input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32, name=card.input_name)])
        return _convert(tf, tf.lite.TFLiteConverter.from_saved_model(tmp), normalize_batch(calibration, nhwc), keras_file)


def _convert(tf: Any, converter: Any, xs: np.ndarray, keras_file: str | Path) -> bytes:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([xs[i : i + 1]] for i in range(len(xs)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    try:
        return converter.convert()
    except Exception as err:  # the converter raises ConverterError, RuntimeError, ... for one cause
        raise ArtifactError(f"TFLite int8 conversion of {keras_file} failed ({type(err).__name__}: {err}).") from err


def _load_keras(keras_file: str | Path) -> Any:
    keras = require("keras", "train")
    from edgecnn.train import architectures  # noqa: F401  (custom layers of the zoo, if any)

    try:
        return keras.saving.load_model(str(keras_file), compile=False)
    except Exception as err:  # keras raises ValueError/OSError/TypeError for unreadable files
        raise ArtifactError(f"Cannot load the Keras model {keras_file} ({type(err).__name__}: {err}).") from err


def run_baselines(
    keras_file: str | Path,
    card: dict[str, Any],
    *,
    config: dict[str, Any],
    runners: Sequence[str],
    calibration_data: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Time the requested baseline runners at every batch size, one spawned process per thread count.

    Returns:
        dicts with the fields of :class:`edgecnn.runtime.benchmark.BenchResult`.

    Raises:
        ConfigError: for an unknown runner. MissingDependencyError: without tensorflow/ai-edge-litert.
    """
    bad = set(runners) - set(RUNNERS)
    if bad:
        raise ConfigError(f"Unknown baseline runner(s) {sorted(bad)}; choose from {', '.join(RUNNERS)}.")
    require("tensorflow", "train")
    if "litert" in runners:
        require("ai_edge_litert", "train")
    model_card = ModelCard.from_dict(card)
    tflite = None
    ctx = multiprocessing.get_context("spawn")
    if "litert" in runners:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            tflite = pool.submit(_convert_child, str(keras_file), model_card, calibration_data).result()
    rows: list[dict[str, Any]] = []
    for threads in config["threads"]:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            rows += pool.submit(_measure, str(keras_file), card, config, list(runners), tflite, threads).result()
    return rows


def _convert_child(keras_file: str, card: ModelCard, calibration_data: str | Path | None) -> bytes:
    return convert_litert_int8(keras_file, card, calibration_images(card, data=calibration_data))


def _measure(keras_file: str, card_dict: dict[str, Any], config: dict[str, Any], runners: list[str],
             tflite: bytes | None, threads: int) -> list[dict[str, Any]]:
    """Child process: set TensorFlow's threads first, then time each runner at each batch size."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from edgecnn.runtime.benchmark import latency_stats, peak_rss_mb, reset_peak_rss, time_callable
    from edgecnn.runtime.preprocess import normalize_batch

    card = ModelCard.from_dict(card_dict)
    nhwc = replace(card, layout="nhwc")
    rows = []
    timing = {"warmup": config["warmup"], "runs": config["runs"], "duration_s": config["duration_s"],
              "min_runs": config["min_runs"]}

    def add(runner: str, precision: str, batch: int, fn: Any, load_s: float, notes: list[str], **kw: Any) -> None:
        times = time_callable(fn, **{**timing, **kw})
        rows.append({"model": card.name, "variant": f"{card.name}:{precision}", "runner": runner,
                     "precision": precision, "provider": "CPU", "batch": batch, "threads": threads,
                     "stats": latency_stats(times, batch), "session_s": load_s, "peak_rss_mb": peak_rss_mb(),
                     "notes": notes})

    for batch in config["batch_sizes"]:
        h, w = card.input_size
        px = np.random.default_rng(config["seed"]).integers(0, 256, size=(batch, h, w, 3), dtype=np.uint8)
        x = normalize_batch(px, nhwc)
        if "keras" in runners:
            reset_peak_rss()
            t0 = time.perf_counter()
            model = _load_keras(keras_file)
            load_s = time.perf_counter() - t0
            note = [f"model.predict capped at {_PREDICT_MAX_RUNS} runs"] if config["runs"] > _PREDICT_MAX_RUNS else []
            add("keras.predict", "fp32", batch, lambda: model.predict(x, batch_size=batch, verbose=0), load_s, note,
                runs=min(config["runs"], _PREDICT_MAX_RUNS))
            fn = tf.function(lambda t: model(t, training=False),
                             input_signature=[tf.TensorSpec([batch, h, w, 3], tf.float32)])
            xt = tf.constant(x)
            add("keras.tf_function", "fp32", batch, lambda: fn(xt).numpy(), load_s, [])
        if tflite is not None:
            reset_peak_rss()
            add("litert", "int8", batch, *_litert_runner(tflite, x, threads), ["int8 input/output (full-int8)"])
    return rows


def _litert_runner(tflite: bytes, x: np.ndarray, threads: int) -> tuple[Any, float]:
    from ai_edge_litert.interpreter import Interpreter

    t0 = time.perf_counter()
    interp = Interpreter(model_content=tflite, num_threads=threads)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], list(x.shape))
    interp.allocate_tensors()
    load_s = time.perf_counter() - t0
    scale, zero = inp["quantization"]
    xq = np.clip(np.rint(x / scale + zero), -128, 127).astype(np.int8)  # quantized once, outside the timed call
    set_tensor, invoke, get_tensor = interp.set_tensor, interp.invoke, interp.get_tensor
    idx_in, idx_out = inp["index"], out["index"]

    def run() -> np.ndarray:
        set_tensor(idx_in, xq)
        invoke()
        return get_tensor(idx_out)

    return run, load_s
