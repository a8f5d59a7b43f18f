"""edgecnn's tuned pick against its peers on the same model, in the same run, from uint8 pixels
(issues 12 and 19).

For a run directory (model.keras + card.json) and its export directory (``edgecnn export RUN -q
int8 -q litert-int8`` then ``edgecnn tune``'s ``tune_report.json``), at each thread count and
batch size, every runner is timed on the call an app makes: **uint8 NHWC pixels at the input
size in, probabilities out**, preprocessing included, each with its own best pipeline:

- **edgecnn**: ``edgecnn tune``'s finalists at that thread count and batch size (the three
  fastest configurations within its accuracy budget in its first pass, and each backend's
  fastest), ``Classifier.predict_proba(pixels)`` through the runtime core as an app calls it;
  the pick is the fastest of them, as tune's own confirmation round decides;
- **bare** (one per finalist): the same file on the same backend through that backend's own API,
  its input already preprocessed (float, or int8 for an int8-input ``.tflite``) outside the timed
  call: the floor a wrapper can reach, for the "each backend path within 1.15x of its bare call"
  check;
- **LiteRT** (``ai-edge-litert``, XNNPack): the Keras model through the TFLite converter in full
  int8 (int8 input and output, calibrated on the training images edgecnn's int8 export uses) and
  in fp32, fed as LiteRT's documentation shows (``(pixels - mean) / std``, then ``x / scale +
  zero_point`` for an int8 input; the int8 output dequantized);
- **OpenVINO** through its own Python API with its ``PrePostProcessor`` (uint8 NHWC tensor in;
  convert, mean, scale and layout compiled into the model), on the fp32 ONNX and on the int8
  QDQ ONNX, at its default precision on this CPU (bf16 where the CPU has it), inputs shared;
- **onnxruntime** on the int8 ONNX with the same preprocessing folded into the graph
  (``edgecnn.runtime.pixels.fold_onnx``), a bare ``session.run``.

Interleaved rounds; the table gives the median of the rounds' p50s, the images per second over
every timed call of all rounds (batch / mean latency, as ``edgecnn bench`` and ``edgecnn tune``
report them), and each runner's top-1 accuracy on the same held-out images (from pixels).

    python tools/peer_bench.py /work/runs/seed_cnn --threads 1,2 --batch 1,32
    python tools/peer_bench.py /work/runs/mnv2_224 --threads 1,2 --batch 1,32 --out /tmp/peer_mnv2.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecnn.card import ModelCard  # noqa: E402
from edgecnn.runtime.benchmark import latency_stats, machine_fingerprint, time_callable  # noqa: E402
from edgecnn.runtime.preprocess import normalize_batch  # noqa: E402
from edgecnn.tune import finalist_cells  # noqa: E402


def _timed(call, seconds: float) -> list[float]:
    """Seconds per call for ``seconds`` (one untimed call, then 3 of warm-up)."""
    call()
    return time_callable(call, warmup=3, runs=0, duration_s=seconds, min_runs=5)


def _in_batches(fn, pixels: np.ndarray, batch: int) -> np.ndarray:
    """``fn`` over ``pixels`` in calls of exactly ``batch`` images (the tail dropped)."""
    return np.concatenate([np.asarray(fn(pixels[k:k + batch]), dtype=np.float32).reshape(batch, -1)
                           for k in range(0, len(pixels) - len(pixels) % batch, batch)])


# ------------------------------------------------------------------------------------ runners
# Each runner is (make, predict): make(pixels) -> the timed no-argument call; predict(pixels, batch)
# -> (N, classes) outputs for top-1.

def edgecnn_runner(export_dir: Path, cell: dict, threads: int):
    from edgecnn.runtime import Classifier
    from edgecnn.tune import Candidate

    candidate = Candidate(file=cell["file"], variant=cell["variant"], backend=cell["backend"],
                          precision=cell["precision"], io_binding=cell["io_binding"])
    model = Classifier.adopt(candidate.open(export_dir, threads, "CPU"))

    def make(pixels: np.ndarray):
        return lambda: model.predict_proba(pixels)

    return make, lambda pixels, batch: _in_batches(model.predict_proba, pixels, batch)


def bare_runner(export_dir: Path, cell: dict, threads: int, card: ModelCard, batch: int):
    """The finalist's file on its backend through the backend's own API, input ready."""
    path = export_dir / cell["file"]
    if cell["backend"] == "litert":
        from ai_edge_litert.interpreter import Interpreter

        from edgecnn.runtime.core import InferenceModel

        card = InferenceModel(path, pixels_in_graph=False).card  # its own: the normalization may be inside it
        interp = Interpreter(model_path=str(path), num_threads=threads)
        inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
        interp.resize_tensor_input(inp["index"], [batch, *card.input_size, card.channels])
        interp.allocate_tensors()
        scale, zero = inp["quantization"]

        def ready(pixels):
            x = normalize_batch(pixels, card.replace(layout="nhwc"))
            return x if inp["dtype"] == np.float32 else \
                np.clip(np.rint(x / scale + zero), -128, 127).astype(inp["dtype"])

        def make(pixels):
            x, set_tensor, invoke, get_tensor = ready(pixels), interp.set_tensor, interp.invoke, interp.get_tensor
            i, o = inp["index"], out["index"]

            def call():
                set_tensor(i, x)
                invoke()
                return get_tensor(o)

            return call

        return make
    if cell["backend"] == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", {
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": cell["precision"] or "f32"})
        request, port = compiled.create_infer_request(), compiled.outputs[0]

        def make(pixels):
            x = normalize_batch(pixels, card)
            return lambda: request.infer({0: x}, share_inputs=True)[port]

        return make
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def make(pixels):
        feed = {name: normalize_batch(pixels, card)}
        return lambda: sess.run(None, feed)

    return make


def litert_runner(tflite: bytes, card: ModelCard, threads: int, batch: int):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=tflite, num_threads=threads)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], [batch, *card.input_size, card.channels])
    interp.allocate_tensors()
    scale, zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    mean, std = np.asarray(card.mean, np.float32), np.asarray(card.std, np.float32)
    quant_in, quant_out = inp["dtype"] != np.float32, out["dtype"] != np.float32
    set_tensor, invoke, get_tensor, i, o = interp.set_tensor, interp.invoke, interp.get_tensor, inp["index"], \
        out["index"]

    def call(pixels: np.ndarray) -> np.ndarray:  # the app's whole call, as LiteRT's docs write it
        x = (pixels.astype(np.float32) - mean) / std
        if quant_in:
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(inp["dtype"])
        set_tensor(i, x)
        invoke()
        y = get_tensor(o)
        return (y.astype(np.float32) - out_zero) * np.float32(out_scale) if quant_out else y

    return (lambda pixels: (lambda: call(pixels))), (lambda pixels, b: _in_batches(call, pixels, b))


def openvino_runner(onnx_path: Path, threads: int, card: ModelCard):
    import openvino as ov
    from openvino.preprocess import ColorFormat, PrePostProcessor

    core = ov.Core()
    model = core.read_model(str(onnx_path))
    ppp = PrePostProcessor(model)
    h, w = card.input_size
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")) \
        .set_shape(ov.PartialShape([model.input(0).get_partial_shape()[0], h, w, card.channels]))
    steps = ppp.input().preprocess()
    if card.channel_order == "BGR":
        ppp.input().tensor().set_color_format(ColorFormat.RGB)
        steps.convert_color(ColorFormat.BGR)
    steps.convert_element_type(ov.Type.f32).mean(list(card.mean)).scale(list(card.std))
    ppp.input().model().set_layout(ov.Layout("NCHW" if card.layout == "nchw" else "NHWC"))
    compiled = core.compile_model(ppp.build(), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: "bf16" or "f32"
    precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    request = compiled.create_infer_request()
    port = compiled.outputs[0]

    def call(pixels: np.ndarray) -> np.ndarray:
        return request.infer({0: pixels}, share_inputs=True)[port]

    return (lambda pixels: (lambda: call(pixels))), (lambda pixels, b: _in_batches(call, pixels, b)), precision


def onnxruntime_folded_runner(onnx_path: Path, threads: int, card: ModelCard):
    import onnxruntime as ort

    from edgecnn.runtime.pixels import fold_onnx

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(fold_onnx(onnx_path, card, card.input_name), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def call(pixels: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: pixels})[0]

    return (lambda pixels: (lambda: call(pixels))), (lambda pixels, b: _in_batches(call, pixels, b))


# -------------------------------------------------------------------------------------- main

def _finalists(tune_report: dict, threads: int, batch: int, n: int = 3) -> list[dict]:
    """The configurations ``edgecnn tune`` re-measures before it picks (its finalists: the ``n``
    fastest within the accuracy budget in its first pass and each backend's fastest), at this
    thread count and batch size."""
    ok = {c["config"] for c in tune_report["candidates"] if c["within_budget"]}
    cells = sorted((c for c in tune_report["cells"] if c["config"] in ok and c["threads"] == threads
                    and c["batch"] == batch), key=lambda c: c["p50_ms"])
    return finalist_cells(cells, n, backend=lambda c: c["backend"])


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run directory (model.keras, card.json)")
    parser.add_argument("--export", type=Path, help="its export directory, tuned (default: RUN/export)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", default="1")
    parser.add_argument("--seconds", type=float, default=1.5, help="per runner, per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=2000, help="held-out images for top-1")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    return parser.parse_args()


def _litert_files(run: Path, card: ModelCard, calib: np.ndarray) -> tuple[bytes, bytes]:
    """The Keras model through the TFLite converter: full int8 (edgecnn's own calibration images) and fp32."""
    import tensorflow as tf

    from edgecnn.export.litert import convert_litert_int8
    from edgecnn.keras_io import load_keras_model

    keras_model = load_keras_model(run / "model.keras")
    t0 = time.time()
    tflite_int8 = convert_litert_int8(keras_model, card, calib, source=str(run))
    with __import__("tempfile").TemporaryDirectory() as tmp:
        h, w = card.input_size
        keras_model.export(tmp, format="tf_saved_model", verbose=False,
                           input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32)])
        tflite_fp32 = tf.lite.TFLiteConverter.from_saved_model(tmp).convert()
    print(f"LiteRT conversions: {time.time() - t0:.1f} s", file=sys.stderr)
    return tflite_int8, tflite_fp32


def _runners(export_dir: Path, finalists: list[dict], card: ModelCard, tflites: tuple[bytes, bytes], *,
             threads: int, batch: int) -> dict[str, tuple]:
    """name -> (family, make, predict) of every runner at this thread count and batch size."""
    runners: dict[str, tuple] = {}
    for cell in finalists:  # tune's confirmation round, in the same interleaved rounds as the peers
        make, predict = edgecnn_runner(export_dir, cell, threads)
        runners[f"edgecnn ({cell['config']})"] = ("edgecnn", make, predict)
        runners[f"bare {cell['config']}, input ready"] = ("bare", bare_runner(export_dir, cell, threads, card, batch),
                                                          None)
    for name, blob in zip(("int8", "fp32"), tflites):
        make, predict = litert_runner(blob, card, threads, batch)
        runners[f"LiteRT {name} (XNNPack)"] = ("litert", make, predict)
    for name, file in (("fp32 file", "model.onnx"), ("int8 QDQ file", "model.int8.onnx")):
        if (export_dir / file).is_file():
            make, predict, prec = openvino_runner(export_dir / file, threads, card)
            runners[f"OpenVINO PPP, {name} ({prec})"] = ("openvino", make, predict)
    if (export_dir / "model.int8.onnx").is_file():
        make, predict = onnxruntime_folded_runner(export_dir / "model.int8.onnx", threads, card)
        runners["onnxruntime, int8 file, pixels in graph"] = ("onnxruntime", make, predict)
    return runners


def _measure(runners: dict[str, tuple], test: np.ndarray, labels: np.ndarray | None, *, threads: int, batch: int,
             rounds: int, seconds: float) -> list[dict]:
    """One row per runner: the median of the rounds' p50s (interleaved rounds), img/s over every
    timed call, top-1 on the held-out images."""
    pixels = np.ascontiguousarray(np.concatenate([test] * (-(-batch // len(test))))[:batch])
    calls = {name: r[1](pixels) for name, r in runners.items()}
    p50s: dict[str, list[float]] = {name: [] for name in runners}
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, call in calls.items():
            times = _timed(call, seconds)
            p50s[name].append(1e3 * float(np.median(times)))
            samples[name] += times
    rows = []
    for name, (family, _, predict) in runners.items():
        acc = None
        if predict is not None and labels is not None:
            out = predict(test, batch if batch <= len(test) else 1)
            acc = float(np.mean(out.argmax(1) == labels[:len(out)]))
        p50 = float(np.median(p50s[name]))
        ips = latency_stats(samples[name], batch)["throughput_ips"]  # batch / mean, as bench and tune
        rows.append({"runner": name, "family": family, "threads": threads, "batch": batch, "p50_ms": p50,
                     "rounds_p50_ms": p50s[name], "throughput_ips": ips, "top1": acc})
        print(f"{threads}t b{batch} {name:52s} p50 {p50:8.3f} ms  {ips:9.0f} img/s  "
              f"top-1 {'-' if acc is None else f'{100 * acc:.2f}%'}")
    return rows


def _compare(group: list[dict]) -> None:
    """Mark edgecnn's pick, and say how it and each finalist compare with the best peer and their bare calls."""
    mine = min((r for r in group if r["family"] == "edgecnn"), key=lambda r: r["p50_ms"])
    mine["pick"] = True  # what tune's confirmation round picks among its finalists
    peers = [r for r in group if r["family"] not in ("edgecnn", "bare")]
    best = min(peers, key=lambda r: r["p50_ms"])
    print(f"   edgecnn's pick {mine['runner']} / best peer ({best['runner']}): "
          f"{mine['p50_ms'] / best['p50_ms']:.2f}x p50")
    for r in group:
        if r["family"] == "edgecnn":
            bare = next(b for b in group if b["runner"] == r["runner"].replace("edgecnn (", "bare ")
                        .removesuffix(")") + ", input ready")
            r["vs_bare"] = r["p50_ms"] / bare["p50_ms"]
            print(f"   {r['runner']} from pixels / its bare call, input ready: {r['vs_bare']:.3f}x")


def main() -> None:
    args = _args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from edgecnn.export import ExportConfig
    from edgecnn.export.images import select_data
    from edgecnn.runtime.core import InferenceModel

    export_dir = args.export or args.run / "export"
    tune_report = json.loads((export_dir / "tune_report.json").read_text())
    card = InferenceModel(export_dir / "model.onnx").card  # the exported card: layout and preprocessing
    data, _ = select_data(card, None, ExportConfig(test_images=args.images))
    test, labels = data.test, data.test_labels
    # The images edgecnn's int8 export calibrated on (the same seeded pick of the training images).
    calib = data.calibration[np.sort(np.random.default_rng(0).permutation(len(data.calibration))[:512])]
    test = np.ascontiguousarray(test)
    tflites = _litert_files(args.run, card, calib)

    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        for batch in [int(b) for b in args.batch.split(",")]:
            finalists = _finalists(tune_report, threads, batch)
            if not finalists:
                print(f"tune_report has no cell at {threads} threads, batch {batch}: run edgecnn tune with them",
                      file=sys.stderr)
                continue
            runners = _runners(export_dir, finalists, card, tflites, threads=threads, batch=batch)
            group = _measure(runners, test, labels, threads=threads, batch=batch, rounds=args.rounds,
                             seconds=args.seconds)
            _compare(group)
            rows += group
    m = machine_fingerprint()
    result = {"run": str(args.run), "export": str(export_dir), "machine": m, "loadavg": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "args": {k: str(v) for k, v in vars(args).items()},
              "python": platform.python_version(), "rows": rows,
              "fp32_top1_export": tune_report["test_set"].get("fp32_accuracy")}
    print(f"machine: {m['cpu']} ({m['usable_cpus']} cpus, {' '.join(m['simd'])}), load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
