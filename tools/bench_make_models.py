"""Make the ONNX precision variants that docs/benchmarks.md measures (dev script; needs [train,export]).

    .venv/bin/python tools/bench_make_models.py --out build/bench [--models seed_cnn,mobilenet_v2]

For each zoo model: the Keras model (the trained run ``runs/<model>_cifar10`` when it exists, else
the untrained zoo model: weights do not change timings), saved as a run dir (model.keras +
card.json) for ``edgecnn bench --compare --keras``, then ONNX variants with the card embedded:

  fp32        tf2onnx from_function, NHWC input (what training feeds)
  fp32-nchw   same, with tf2onnx ``inputs_as_nchw`` (no layout transposes at the input)
  int8        static QDQ, per-channel s8 weights, u8 activations, ORT pre-processed graph
  int8-s8s8   static QDQ with s8 activations too
  int8-qop    static QOperator (QLinearConv), per-channel
  int8-nchw   int8 QDQ of fp32-nchw
  fp16        onnxruntime.transformers.float16, keep_io_types (float32 in and out)

Calibration: the first 128 training images of /work/shared/datasets/cifar10.npz, the same ones
``edgecnn bench --compare tflite --calibration`` gives LiteRT. This script stands in for
``edgecnn export`` while that command is being built (same tf2onnx route, same QDQ settings family).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecnn.card import ONNX_METADATA_KEY, ModelCard  # noqa: E402
from edgecnn.runtime.preprocess import normalize_batch  # noqa: E402

DATA = Path("/work/shared/datasets/cifar10.npz")
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def keras_run(name: str, out: Path) -> tuple[Path, ModelCard]:
    """A run dir with model.keras + card.json: the trained one if present, else an untrained zoo model."""
    trained = Path("runs") / f"{name}_cifar10"
    if (trained / "model.keras").is_file():
        return trained, ModelCard.load(trained)
    import keras

    from edgecnn.train.registry import build_model

    run = out / f"{name}_untrained"
    run.mkdir(parents=True, exist_ok=True)
    model = build_model(name, 10)
    model.save(run / "model.keras")
    card = ModelCard(name=name, architecture=name, class_names=CLASSES, input_size=(32, 32),
                     training={"note": "untrained (benchmark timing only)"}, versions={"keras": keras.__version__})
    card.save(run / "card.json")
    return run, card


def to_onnx(run: Path, card: ModelCard, *, nchw: bool):
    import tensorflow as tf
    import tf2onnx

    from edgecnn.keras_io import load_keras_model

    model = load_keras_model(run / "model.keras")
    h, w = card.input_size
    fn = tf.function(lambda x: model(x, training=False))
    spec = [tf.TensorSpec([None, h, w, 3], tf.float32, name=card.input_name)]
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17,
                                             inputs_as_nchw=[card.input_name + ":0"] if nchw else None)
    out = proto.graph.output[0]
    old = out.name
    for node in proto.graph.node:
        node.output[:] = [card.output_name if o == old else o for o in node.output]
    out.name = card.output_name
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    return proto


def save(proto, card: ModelCard, path: Path) -> Path:
    import onnx

    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, card.to_json()
    onnx.save(proto, path)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return path


class _Reader:
    def __init__(self, name: str, x: np.ndarray) -> None:
        self.name, self.x, self.i = name, x, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        self.i += 1
        return {self.name: self.x[self.i - 1 : self.i]}


def quantize(fp32: Path, card: ModelCard, calib: np.ndarray, dst: Path, *, fmt: str, act: str) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(dst), _Reader(card.input_name, normalize_batch(calib, card)),
                        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                        per_channel=True, activation_type=QuantType.QUInt8 if act == "u8" else QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=["Conv", "MatMul", "Gemm", "Add", "MaxPool", "Relu", "Clip",
                                              "GlobalAveragePool", "Mul", "Transpose", "Reshape"])
    save(onnx.load(dst), card, dst)


def fp16(fp32: Path, card: ModelCard, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    save(convert_float_to_float16(onnx.load(fp32), keep_io_types=True), card, dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("build/bench"))
    ap.add_argument("--models", default="seed_cnn,mobilenet_v2")
    args = ap.parse_args()
    with np.load(DATA) as d:
        calib = d["x_train"][:128]
    for name in args.models.split(","):
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        run, card = keras_run(name, args.out)
        base = replace(card, export={"source_run": str(run.resolve()), "tool": "tools/bench_make_models.py",
                                     "calibration": f"{DATA} x_train[:128]"})
        fp32 = save(to_onnx(run, card, nchw=False), replace(base, precision="fp32"), out / "fp32.onnx")
        nchw_card = replace(base, precision="fp32", layout="nchw")
        fp32n = save(to_onnx(run, card, nchw=True), nchw_card, out / "fp32-nchw.onnx")
        quantize(fp32, replace(base, precision="int8"), calib, out / "int8.onnx", fmt="qdq", act="u8")
        quantize(fp32, replace(base, precision="int8-s8s8"), calib, out / "int8-s8s8.onnx", fmt="qdq", act="s8")
        quantize(fp32, replace(base, precision="int8-qop"), calib, out / "int8-qop.onnx", fmt="qop", act="u8")
        quantize(fp32n, replace(nchw_card, precision="int8-nchw"), calib, out / "int8-nchw.onnx", fmt="qdq", act="u8")
        fp16(fp32, replace(base, precision="fp16"), out / "fp16.onnx")


if __name__ == "__main__":
    main()
