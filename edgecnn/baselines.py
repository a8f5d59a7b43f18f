"""Baselines for ``edgecnn bench --compare``: the Keras model and its LiteRT (TFLite) full-int8 twin.

A stage above both the runtime (whose timing helpers it uses) and export (whose LiteRT conversion
it times); only the CLI imports it and hands :func:`run_baselines` to
:func:`edgecnn.runtime.benchmark.run_benchmark`, so the runtime never imports TensorFlow code.
Each thread count runs in a fresh spawned process: TensorFlow fixes its thread pools at
start-up, so one process cannot honestly measure 1 and then 2 threads.

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
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecnn._optional import require
from edgecnn.card import ModelCard
from edgecnn.errors import ConfigError
from edgecnn.keras_io import load_keras_model

if TYPE_CHECKING:
    from edgecnn.runtime.benchmark import BenchResult

log = logging.getLogger(__name__)

__all__ = ["run_baselines", "calibration_images", "RUNNERS"]

RUNNERS = ("keras", "litert")
_PREDICT_MAX_RUNS = 100  # model.predict costs tens of ms per call; more runs change nothing but the wait


def calibration_images(card: ModelCard, n: int = 128, data: str | Path | None = None) -> np.ndarray:
    """``n`` uint8 NHWC calibration images at the card's size: the first train images of ``data``
    (an .npz in the keras layout) or of the embedded CIFAR-10 sample."""
    from edgecnn.datasets import load_embedded_sample, load_npz, resize_all

    x = load_npz(data)[0] if data is not None else load_embedded_sample()[0]
    return resize_all(x[:n], card.input_size)


def run_baselines(
    keras_file: str | Path,
    card: dict[str, Any],
    *,
    config: dict[str, Any],
    runners: Sequence[str],
    calibration_data: str | Path | None = None,
) -> list[BenchResult]:
    """Time the requested baseline runners at every batch size, one spawned process per thread count.

    Returns:
        the measured points (the runtime's ``BaselineRunner`` contract), as each child process
        returned them: :class:`edgecnn.runtime.benchmark.BenchResult` objects, pickled across.

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
    results: list[BenchResult] = []
    for threads in config["threads"]:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            results += pool.submit(_measure, str(keras_file), card, config, list(runners), tflite, threads).result()
    return results


def _convert_child(keras_file: str, card: ModelCard, calibration_data: str | Path | None) -> bytes:
    from edgecnn.export.litert import convert_litert_int8

    return convert_litert_int8(load_keras_model(keras_file), card, calibration_images(card, data=calibration_data),
                               source=keras_file)


def _measure(keras_file: str, card_dict: dict[str, Any], config: dict[str, Any], runners: list[str],
             tflite: bytes | None, threads: int) -> list[BenchResult]:
    """Child process: set TensorFlow's threads first, then time each runner at each batch size."""
    tf = require("tensorflow", "train")  # quietly: the spawned child starts without TensorFlow

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from edgecnn.runtime.benchmark import BenchResult, latency_stats, peak_rss_mb, reset_peak_rss, time_callable
    from edgecnn.runtime.preprocess import normalize_batch

    card = ModelCard.from_dict(card_dict)
    nhwc = replace(card, layout="nhwc")
    results: list[BenchResult] = []

    def add(runner: str, precision: str, batch: int, fn: Callable[[], Any], *, load_s: float, notes: list[str],
            runs: int | None = None) -> None:
        """Time ``fn`` with the benchmark's one timing loop and keep the point."""
        times = time_callable(fn, warmup=config["warmup"], runs=config["runs"] if runs is None else runs,
                              duration_s=config["duration_s"], min_runs=config["min_runs"])
        results.append(BenchResult(model=card.name, variant=f"{card.name}:{precision}", runner=runner,
                                   precision=precision, provider="CPU", batch=batch, threads=threads,
                                   stats=latency_stats(times, batch), session_s=load_s, peak_rss_mb=peak_rss_mb(),
                                   notes=notes))

    for batch in config["batch_sizes"]:
        h, w = card.input_size
        px = np.random.default_rng(config["seed"]).integers(0, 256, size=(batch, h, w, 3), dtype=np.uint8)
        x = normalize_batch(px, nhwc)
        if "keras" in runners:
            reset_peak_rss()
            model, load_s = _load_timed(keras_file)
            capped = config["runs"] > _PREDICT_MAX_RUNS
            add("keras.predict", "fp32", batch, _predict_runner(model, x), load_s=load_s,
                notes=[f"model.predict capped at {_PREDICT_MAX_RUNS} runs"] if capped else [],
                runs=min(config["runs"], _PREDICT_MAX_RUNS))
            add("keras.tf_function", "fp32", batch, _tf_function_runner(model, x, tf), load_s=load_s, notes=[])
        if tflite is not None:
            reset_peak_rss()
            run, load_s = _litert_runner(tflite, x, threads)
            add("litert", "int8", batch, run, load_s=load_s, notes=["int8 input/output (full-int8)"])
    return results


def _load_timed(keras_file: str) -> tuple[Any, float]:
    """The Keras model, and the seconds its file took to load (the runner's ``session_s``)."""
    t0 = time.perf_counter()
    model = load_keras_model(keras_file)
    return model, time.perf_counter() - t0


def _predict_runner(model: Any, x: np.ndarray) -> Callable[[], Any]:
    """``model.predict`` on the whole batch ``x``, what most users call."""
    return lambda: model.predict(x, batch_size=len(x), verbose=0)


def _tf_function_runner(model: Any, x: np.ndarray, tf: Any) -> Callable[[], Any]:
    """The model as a ``tf.function`` with ``x``'s fixed input signature, output to numpy."""
    fn = tf.function(lambda t: model(t, training=False), input_signature=[tf.TensorSpec(list(x.shape), tf.float32)])
    xt = tf.constant(x)
    return lambda: fn(xt).numpy()


def _litert_runner(tflite: bytes, x: np.ndarray, threads: int) -> tuple[Callable[[], Any], float]:
    """``set_tensor`` + ``invoke`` + ``get_tensor`` on ``x`` quantized once, and the seconds the
    interpreter took to load and allocate."""
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
