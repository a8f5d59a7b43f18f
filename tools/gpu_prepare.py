"""Build the ONNX files tools/gpu_bench.py measures on the GPU machine (run here, on the CPU).

The GPU machine has no TensorFlow, so the exports are made here and carried there. Timing does
not depend on the weights, so an untrained ``build_model("mobilenet_v2_224", 10)`` is exported
(its BatchNorm statistics set from one batch of random images, so the outputs depend on the
input and the GPU tests compare something: freshly initialized, every image gets 0.1 per class)
(same graph as a trained ``edgecnn export`` of a mobilenet_v2_224 run: ``convert_keras`` +
onnxslim + the embedded card), in both layouts and three precisions:

    mobilenet_v2_224.fp32.nhwc.onnx       fp32, NHWC input (edgecnn's default export)
    mobilenet_v2_224.fp32.nchw.onnx       fp32, NCHW input (``--layout nchw``)
    mobilenet_v2_224.fp16.nhwc.onnx       fp16 weights and fp16 input/output (no Cast at the ends)
    mobilenet_v2_224.fp16.nchw.onnx       the same, NCHW
    mobilenet_v2_224.fp16f32io.nhwc.onnx  fp16 inside, float32 input/output (``edgecnn export -q fp16``)

Each file is checked on the CPU: fp32 against Keras (atol 1e-4), fp16 against fp32 (atol 2e-2). A
manifest.json lists sizes, SHA-256 and op counts.

Usage (about 2 minutes on 2 cores):
    .venv/bin/python tools/gpu_prepare.py                 # -> runs/gpu_models/ (git-ignored)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODEL = "mobilenet_v2_224"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save(proto, card, path: Path) -> Path:
    from edgecnn.export import onnx as onnx_io

    onnx_io.embed_card(proto, card)
    return onnx_io.save_onnx(proto, path)


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/gpu_models"),
              show_default=True)
@click.option("--classes", default=10, show_default=True, type=click.IntRange(min=2))
@click.option("--opset", default=17, show_default=True, type=click.IntRange(13, 23))
@click.option("--seed", default=0, show_default=True)
def main(out_dir: Path, classes: int, opset: int, seed: int) -> None:
    """Export untrained MobileNetV2-224 to fp32/fp16, NHWC/NCHW ONNX files in OUT."""
    import keras

    from edgecnn.card import ModelCard
    from edgecnn.export import onnx as onnx_io
    from edgecnn.export.quant_config import QuantizeConfig
    from edgecnn.export.quantize import quantize_model
    from edgecnn.runtime import Classifier, normalize_batch
    from edgecnn.train.registry import build_model

    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    model = build_model(MODEL, classes)
    base = ModelCard(name=MODEL, architecture=MODEL, class_names=[f"class_{i}" for i in range(classes)],
                     input_size=(224, 224), mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375),
                     normalization="given", training={"note": "untrained: for GPU timing only"})
    px = np.random.default_rng(seed).integers(0, 256, size=(12, 224, 224, 3), dtype=np.uint8)
    _set_batchnorm_statistics(model, normalize_batch(px[:8], base))
    px = px[8:]
    keras_out = np.asarray(model.predict(normalize_batch(px, base), verbose=0))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for layout in ("nhwc", "nchw"):
        card = base.replace(layout=layout, precision="fp32", export={
            "opset": opset, "source": f"build_model({MODEL!r}, {classes}) untrained", "tool": "tools/gpu_prepare.py"})
        proto = onnx_io.convert_keras(model, card, opset=opset, layout=layout)
        proto, simp = onnx_io.simplify(proto)
        fp32_path = _save(proto, card, out_dir / f"{MODEL}.fp32.{layout}.onnx")
        fp32 = Classifier(fp32_path, threads=2).predict_proba(px)
        diff = float(np.abs(fp32 - keras_out).max())
        if diff > 1e-4:
            raise SystemExit(f"{fp32_path}: differs from Keras by {diff:.2e} (> 1e-4)")
        files.append(_entry(fp32_path, card, proto, parity={"vs": "keras", "max_abs_diff": diff}, simplify=simp))
        variants = [("fp16", False)] + ([("fp16f32io", True)] if layout == "nhwc" else [])
        for tag, keep_io in variants:
            vcard = card.replace(precision="fp16", input_dtype="float32" if keep_io else "float16",
                                 export={**card.export, "quantization": {"mode": "fp16", "keep_io_float32": keep_io}})
            path = out_dir / f"{MODEL}.{tag}.{layout}.onnx"
            with tempfile.TemporaryDirectory() as tmp:
                vproto = quantize_model(fp32_path, Path(tmp) / "q.onnx", card=card,
                                        config=QuantizeConfig(fp16_keep_io_float32=keep_io).for_mode("fp16"))
            _save(vproto, vcard, path)
            got = Classifier(path, threads=2).predict_proba(px)
            d16 = float(np.abs(got - fp32).max())
            if d16 > 2e-2:
                raise SystemExit(f"{path}: differs from fp32 by {d16:.2e} (> 2e-2)")
            files.append(_entry(path, vcard, vproto, parity={"vs": "fp32", "max_abs_diff": d16}))
        written = ", ".join(f["file"] for f in files[-len(variants) - 1:])
        click.echo(f"{layout}: fp32 vs keras {diff:.1e}; wrote {written}")
    manifest = {"model": MODEL, "classes": classes, "opset": opset, "seed": seed, "files": files,
                "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": round(time.perf_counter() - started, 1)}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    total = sum(f["bytes"] for f in files) / 2**20
    click.echo(f"{len(files)} files, {total:.1f} MiB in {out_dir} ({manifest['seconds']} s); carry it as {out_dir}")


def _set_batchnorm_statistics(model, x: np.ndarray) -> None:
    """Moving mean/variance of every BatchNorm = the batch statistics of one forward pass on ``x``
    (momentum 0 for that pass), so activations neither vanish nor blow up in inference mode."""
    import keras

    layers = [lay for lay in model.layers if isinstance(lay, keras.layers.BatchNormalization)]
    saved = [lay.momentum for lay in layers]
    for lay in layers:
        lay.momentum = 0.0
    model(x, training=True)
    for lay, m in zip(layers, saved):
        lay.momentum = m


def _entry(path: Path, card, proto, **extra) -> dict:
    from edgecnn.export import onnx as onnx_io

    sig = onnx_io.io_signature(proto)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": _sha256(path), "layout": card.layout,
            "precision": card.precision, "input_dtype": sig["inputs"][0]["dtype"],
            "output_dtype": sig["outputs"][0]["dtype"], "nodes": len(proto.graph.node),
            "op_types": onnx_io.op_type_counts(proto), **extra}


if __name__ == "__main__":
    main()
