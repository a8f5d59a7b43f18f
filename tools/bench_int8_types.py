"""S8S8 against U8S8 static int8 (QDQ): accuracy and latency of each activation type, with and
without ``reduce_range``, through edgecnn's own quantizer (what ``edgecnn export -q int8`` ships).

    python tools/bench_int8_types.py MODEL.onnx [MODEL.onnx ...] --data cifar10.npz \\
        [--test-images 10000] [--rounds 5] [--runs 20] [--json out.json] [--md out.md]
    python tools/bench_int8_types.py --report out.json [more.json ...]   # the tables again

Each MODEL is an fp32 ONNX file with an edgecnn card (``edgecnn export SOURCE`` writes one, the
packaged ``edgecnn/assets/models/seed_cnn_cifar10.onnx`` has one). For every model and variant:

- quantize with ``edgecnn.export.quantize.quantize_model`` and a ``QuantizeConfig`` that differs
  only in ``activation_type``, ``reduce_range`` and, for ``S8S8-asym``, the activation symmetry
  (weights are always int8, symmetric, per output channel; detectors get ``for_task("detect")``);
- measure the task metric on onnxruntime's CPU kernels of **this** machine (``cpu`` columns) and on
  the graph with every onnxruntime optimization off (``exact`` columns: DequantizeLinear -> float
  Conv -> QuantizeLinear, i.e. the int8 arithmetic without any kernel's 16-bit intermediate, what a
  CPU that accumulates u8*s8 / s8*s8 in int32 (VNNI, ARM dot product) computes up to rounding);
- time the model with the runtime core (``InferenceModel.timed_call`` + ``time_callable``) at batch
  1 and 32 on 1 thread: every variant is timed once per round, the rounds interleave the variants
  (the order rotates each round) so that the load of a shared machine hits them alike, and the p50
  is over the samples of all rounds. The load average is recorded before and after.

Task metrics: classifiers (with ``--data`` an .npz in keras layout) top-1 accuracy on the test
split and top-1 agreement with fp32 (``--data text-lines``: synthetic text lines, half of them
turned by 180 degrees, for a text-direction classifier such as PP-OCR's); detectors and
segmenters run on synthetic scenes drawn by ``tools/make_foreign_models.py`` (the images
tests/data/foreign's models were trained on): ``edgecnn.export.verify.task_agreement`` against
fp32 (mAP@0.5 / mIoU) and, for segmenters, mIoU against the drawn class maps.

Variants: ``U8S8`` (uint8 asymmetric activations: edgecnn's default), ``S8S8`` (int8 activations,
symmetric, as ``QuantizeConfig(activation_type="int8")`` makes them), ``S8S8-asym`` (int8
asymmetric activations: ``quantize_static``'s own default for int8), each with ``-rr`` (7-bit
weights) and without. ``--x64-precision`` adds a ``+x64prec`` row for each file with 8-bit
weights: the same file on a session with ``session.x64quantprecision=1`` (onnxruntime's U8U8
multiplication for x86 without VNNI).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TYPES = {  # name -> (activation_type, activation symmetric override or None for the product's own)
    "U8S8": ("uint8", None),
    "S8S8": ("int8", None),
    "S8S8-asym": ("int8", False),
}
EVAL_BATCH = 250


@dataclass(frozen=True)
class Variant:
    name: str
    activation_type: str | None  # None: the fp32 model itself
    symmetric: bool | None = None
    reduce_range: bool = False

    @property
    def type_name(self) -> str:
        return self.name.removesuffix("-rr")


def variants(types: list[str], reduce_range: list[bool]) -> list[Variant]:
    out = [Variant("fp32", None)]
    for t in types:
        act, sym = TYPES[t]
        out += [Variant(f"{t}-rr" if rr else t, act, sym, rr) for rr in reduce_range]
    return out


# ------------------------------------------------------------------------------------------ data
def _scene_tool():
    spec = importlib.util.spec_from_file_location("make_foreign_models", ROOT / "tools" / "make_foreign_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scenes(count: int, size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` synthetic scenes (uint8 NHWC) at ``size`` and their class maps."""
    if size[0] != size[1]:
        raise SystemExit(f"synthetic scenes are square; this model takes {size[0]}x{size[1]}.")
    rng = np.random.default_rng(seed)
    drawn = [_scene_tool().draw_scene(rng, size[0]) for _ in range(count)]
    return np.stack([d[0] for d in drawn]), np.stack([d[2] for d in drawn])


WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "edge", "model", "int8", "latency",
         "export", "invoice", "total", "amount", "date", "name", "address", "phone", "2026", "12", "345", "6789",
         "order", "item", "price", "qty", "paid", "due", "ref", "no")


def text_lines(count: int, size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` synthetic text lines (uint8 NHWC, Pillow's default TrueType font, dark text on a
    light noisy background) and their labels: 0 upright, 1 turned by 180 degrees (every other one).
    For text-direction classifiers (labels ``0``, ``180``), which the CIFAR-10 test set cannot judge."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = size
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(count):
        font = ImageFont.load_default(size=int(rng.integers(int(h * 0.45), int(h * 0.7))))
        bg = int(rng.integers(190, 256))
        img = Image.new("RGB", (w, h), (bg, bg, bg))
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 6))))
        ink = tuple(int(v) for v in rng.integers(0, 90, size=3))
        ImageDraw.Draw(img).text((int(rng.integers(0, 12)), int(rng.integers(0, max(1, h // 6)))), text, fill=ink,
                                 font=font)
        arr = np.clip(np.asarray(img, np.float32) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        flipped = i % 2 == 1
        images.append(arr[::-1, ::-1] if flipped else arr)
        labels.append(int(flipped))
    return np.stack(images), np.asarray(labels, np.int32)


@dataclass
class TaskData:
    calibration: np.ndarray  # uint8 NHWC
    images: np.ndarray  # uint8 NHWC
    labels: np.ndarray | None  # classify: class ids; segment: class maps; else None
    source: str


def task_data(card: Any, args: argparse.Namespace, cache: dict[str, Any]) -> TaskData:
    if str(args.data) == "text-lines":  # a text-direction classifier (labels 0 / 180) or a text detector
        size = tuple(card.input_size)
        calib, _ = text_lines(args.calibration_samples, size, seed=1)
        images, labels = text_lines(args.test_images, size, seed=2)
        return TaskData(calib, images, labels if card.task == "classify" else None,
                        f"{len(images):,} synthetic text lines (half turned 180 degrees)")
    if card.task == "classify":
        if args.data is None:
            raise SystemExit(f"{card.name} is a classifier: pass --data DATASET.npz (keras layout).")
        if "npz" not in cache:
            from edgecnn.datasets import load_npz

            cache["npz"] = load_npz(args.data)
        x_train, _, x_test, y_test = cache["npz"]
        if x_test.shape[1:3] != tuple(card.input_size):
            raise SystemExit(f"{args.data} images are {x_test.shape[1:3]}, {card.name} takes {card.input_size}.")
        n = min(args.test_images, len(x_test))
        return TaskData(x_train, x_test[:n], y_test[:n], f"{Path(args.data).name}: first {n:,} test images")
    if card.task not in ("detect", "segment"):
        raise SystemExit(f"{card.name}: task {card.task!r} has no metric here (classify, detect, segment).")
    size = tuple(card.input_size)
    calib, _ = scenes(args.calibration_samples, size, seed=1)
    images, maps = scenes(args.scenes, size, seed=2)
    return TaskData(calib, images, maps if card.task == "segment" else None,
                    f"{args.scenes} synthetic scenes (tools/make_foreign_models.py draw_scene, seed 2)")


# ------------------------------------------------------------------------------------ quantizing
def quantize(fp32: Path, out: Path, card: Any, v: Variant, data: TaskData, samples: int) -> Path:
    from edgecnn.export.quant_config import QuantizeConfig
    from edgecnn.export.quantize import quantize_model

    extra = {} if v.symmetric is None else {"ActivationSymmetric": v.symmetric}
    # target only labels the config (quantize_model does not read it); the card is not embedded
    config = QuantizeConfig.for_target("avx2" if v.reduce_range else "vnni", activation_type=v.activation_type,
                                       reduce_range=v.reduce_range, calibration_samples=samples, extra=extra)
    quantize_model(fp32, out, card=card, config=config.for_task(card.task).for_mode("int8"),
                   calibration_images=data.calibration)
    return out


# ------------------------------------------------------------------------------------ evaluating
def _exact_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class X64PrecisionModel:
    """A file on an onnxruntime session with ``session.x64quantprecision=1``: onnxruntime's own fix
    for U8S8 saturation on x86 without VNNI (a slower U8U8 multiplication), a session option, not
    part of the file.

    The runtime core takes no session config entries, so this tool runs that session itself,
    with the core's model of the same file for the preprocessing: what the tool asks of a model
    (``preprocess``, ``run_all``, ``timed_call``, ``fixed_batch``, ``input_name``) and nothing private.
    """

    def __init__(self, model: Any, path: Path, threads: int) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.add_session_config_entry("session.x64quantprecision", "1")
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.model, self.card = model, model.card
        self.fixed_batch, self.input_name = model.fixed_batch, model.input_name

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        return self.model.preprocess(pixels)

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Every output; a fixed-batch model gets chunks of its size, the last one padded (as the core does)."""
        step = self.fixed_batch
        if step is None or len(x) == step:
            return self.session.run(None, {self.input_name: x})
        parts = []
        for j in range(0, len(x), step):
            chunk = x[j:j + step]
            n = len(chunk)
            if n < step:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - n, axis=0)])
            parts.append([o[:n] for o in self.session.run(None, {self.input_name: chunk})])
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    def timed_call(self, x: np.ndarray) -> tuple[str, Any]:
        """``session.run`` on ``x``, as the core's ``timed_call`` gives it for a CPU session."""
        sess, feed = self.session, {self.input_name: x}
        return "onnxruntime", lambda: sess.run(None, feed)


def outputs(model: Any, exact: Any, pixels: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """All outputs of ``pixels`` on the runtime core (this CPU's kernels) and on ``exact``."""
    cpu: list[list[np.ndarray]] = []
    ref: list[list[np.ndarray]] = []
    for i in range(0, len(pixels), EVAL_BATCH):
        x = model.preprocess(pixels[i:i + EVAL_BATCH])
        cpu.append(model.run_all(x))
        if exact is not None:
            step = model.fixed_batch or len(x)
            parts = [exact.run(None, {model.input_name: x[j:j + step]}) for j in range(0, len(x), step)]
            ref.append([np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))])
    def join(chunks: list[list[np.ndarray]]) -> list[np.ndarray]:
        return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]

    return join(cpu), (join(ref) if exact is not None else None)


def metrics(card: Any, fp32_out: list[np.ndarray], out: list[np.ndarray], labels: np.ndarray | None) -> dict:
    """``accuracy`` (against the labels, if any) and ``agreement`` (the product's task metric vs fp32)."""
    from edgecnn.export.verify import task_agreement

    agreement = task_agreement(card.task, fp32_out, out, card)
    accuracy = None
    if card.task == "classify" and labels is not None:
        accuracy = float(np.mean(out[0].argmax(axis=1) == labels))
    elif card.task == "segment" and labels is not None:
        from edgecnn.runtime.heads.metrics import mean_iou

        logits = next(o for o in out if np.ndim(o) == 4)
        axis = 1 if logits.shape[1] == card.num_classes else -1
        accuracy = mean_iou(list(logits.argmax(axis=axis).astype(np.int64)), list(labels.astype(np.int64)))
    return {"accuracy": accuracy, "agreement": None if agreement is None else agreement.value,
            "metric": None if agreement is None else agreement.name}


# ------------------------------------------------------------------------------------ timing
def latency(models: dict[str, Any], pixels: np.ndarray, batches: list[int], rounds: int, runs: int,
            warmup: int) -> dict[str, dict[int, dict[str, Any]]]:
    """p50 per variant and batch over ``rounds`` interleaved rounds (the variant order rotates)."""
    from edgecnn.runtime.benchmark import latency_stats, time_callable

    calls: dict[tuple[str, int], Any] = {}
    for name, m in models.items():
        for b in batches:
            if m.fixed_batch is not None and b != m.fixed_batch:
                continue
            calls[(name, b)] = m.timed_call(m.preprocess(pixels[:b]))[1]
    samples: dict[tuple[str, int], list[float]] = {k: [] for k in calls}
    round_p50: dict[tuple[str, int], list[float]] = {k: [] for k in calls}
    keys = list(calls)
    for r in range(rounds):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            times = time_callable(calls[key], warmup=warmup, runs=runs)
            samples[key] += times
            round_p50[key].append(float(np.median(times)) * 1e3)
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for (name, b), times in samples.items():
        stats = latency_stats(times, b)
        out.setdefault(name, {})[b] = {"p50_ms": stats["p50_ms"], "p90_ms": stats["p90_ms"], "runs": stats["runs"],
                                       "round_p50_ms": round_p50[(name, b)]}
    return out


# ------------------------------------------------------------------------------------ one model
def bench_model(path: Path, vs: list[Variant], args: argparse.Namespace, work: Path, cache: dict) -> list[dict]:
    from edgecnn.presets import ModelOverrides
    from edgecnn.runtime.core import InferenceModel

    given = ModelOverrides(output_kind=args.output_kind) if args.output_kind else None
    fp32 = InferenceModel(path, threads=args.threads, overrides=given)
    card = fp32.card
    data = task_data(card, args, cache)
    log = logging.getLogger("bench_int8_types")
    files: dict[str, Path] = {"fp32": path}
    for v in vs[1:]:
        t0 = time.perf_counter()
        files[v.name] = quantize(path, work / f"{path.parent.name}_{path.stem}.{v.name}.onnx", card, v, data,
                                 args.calibration_samples)
        log.info("%s %s quantized in %.1f s", card.name, v.name, time.perf_counter() - t0)
    models = {name: (fp32 if name == "fp32" else InferenceModel(f, threads=args.threads, card=card))
              for name, f in files.items()}
    entries = [(v, v.name) for v in vs]
    if args.x64_precision:  # the 8-bit-weight files again, with onnxruntime's U8U8 precision mode
        for v in vs[1:]:
            if not v.reduce_range:
                name = f"{v.name}+x64prec"
                models[name] = X64PrecisionModel(InferenceModel(files[v.name], threads=args.threads, card=card),
                                                 files[v.name], args.threads)
                files[name] = files[v.name]
                entries.append((v, name))
    fp32_out, _ = outputs(fp32, None, data.images)
    rows = []
    exact_of: dict[str, dict] = {}
    for v, name in entries:
        m = models[name]
        fresh = v.activation_type is not None and v.name not in exact_of
        out, ref = outputs(m, _exact_session(files[v.name]) if fresh else None, data.images)
        cpu = metrics(card, fp32_out, out, data.labels)
        if fresh:
            exact_of[v.name] = metrics(card, fp32_out, ref, data.labels)
        exact = exact_of.get(v.name, cpu)
        rows.append({"model": card.name, "file": str(path), "task": card.task, "variant": name,
                     "x64quantprecision": name.endswith("+x64prec"),
                     "type": "fp32" if v.activation_type is None else v.type_name,
                     "activation_type": v.activation_type,
                     "activation_symmetric": None if v.activation_type is None else
                     (v.activation_type == "int8" if v.symmetric is None else v.symmetric),
                     "reduce_range": v.reduce_range if v.activation_type else None,
                     "metric": cpu["metric"], "accuracy": cpu["accuracy"], "agreement": cpu["agreement"],
                     "accuracy_exact": exact["accuracy"], "agreement_exact": exact["agreement"],
                     "size_kib": files[v.name].stat().st_size / 1024, "images": len(data.images),
                     "data": data.source})
        log.info("%s %s: accuracy %s agreement %s", card.name, name, cpu["accuracy"], cpu["agreement"])
    load_before = os.getloadavg()
    lat = latency(models, data.images, args.batches, args.rounds, args.runs, args.warmup)
    load_after = os.getloadavg()
    for row in rows:
        per_batch = lat.get(row["variant"], {})
        row["latency"] = {str(b): per_batch[b] for b in per_batch}
        row["loadavg_before"], row["loadavg_after"] = list(load_before), list(load_after)
    return rows


# ------------------------------------------------------------------------------------ report
def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _ms(row: dict, b: int) -> str:
    entry = row["latency"].get(str(b))
    return "-" if entry is None else f"{entry['p50_ms']:.3f}"


def markdown(rows: list[dict], batches: list[int], machine: dict) -> str:
    lines = [(f"Machine: {machine['cpu']} ({', '.join(machine['simd']) or 'no listed SIMD'}), "
              f"{machine['usable_cpus']} usable CPUs, onnxruntime {machine['onnxruntime']}, int8 target of this CPU: "
              f"{machine['int8_target']}; {machine['date']}."), "",
             ("| model | variant | act | rr | metric | accuracy (cpu) | agreement (cpu) | accuracy (exact) | "
              "agreement (exact) | " + " | ".join(f"p50 b{b} ms" for b in batches) + " | load avg |"),
             "|---|---|---|---|---|---:|---:|---:|---:|" + "---:|" * len(batches) + "---|"]
    for r in rows:
        act = "fp32" if r["activation_type"] is None else \
            f"{r['activation_type']} {'sym' if r['activation_symmetric'] else 'asym'}"
        rr = "-" if r["reduce_range"] is None else ("on" if r["reduce_range"] else "off")
        load = f"{r['loadavg_before'][0]:.2f} -> {r['loadavg_after'][0]:.2f}"
        lines.append(f"| {r['model']} | {r['variant']} | {act} | {rr} | {r['metric'] or '-'} | {_pct(r['accuracy'])} | "
                     f"{_pct(r['agreement'])} | {_pct(r['accuracy_exact'])} | {_pct(r['agreement_exact'])} | "
                     + " | ".join(_ms(r, b) for b in batches) + f" | {load} |")
    return "\n".join(lines) + "\n"


def by_target(rows: list[dict], batches: list[int], here: str) -> str:
    """The decision view: per model, ``--cpu-target`` and type, the variant that target would ship
    (7-bit weights on ``avx2`` only). Accuracy is this CPU's where the target is this CPU's
    (``here``), else the exact emulation's; latency only where it is this CPU's."""
    lines = ["| model | target | type | accuracy | agreement | " + " | ".join(f"p50 b{b} ms" for b in batches)
             + " | measured |", "|---|---|---|---:|---:|" + "---:|" * len(batches) + "---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = {r["variant"]: r for r in rows if r["model"] == model}
        # the full-range targets that are not this CPU's compute the same exact int8: one row each
        others = [t for t in ("vnni", "arm64") if t != here]
        groups = [["avx2"]] + ([[here]] if here != "avx2" else []) + [others]
        for group in groups:
            target = group[0]
            for t in TYPES:
                r = mine.get(f"{t}-rr" if target == "avx2" else t)
                if r is None:
                    continue
                on_cpu = target == here
                acc, agr = (r["accuracy"], r["agreement"]) if on_cpu else (r["accuracy_exact"], r["agreement_exact"])
                lat = [_ms(r, b) if on_cpu else "-" for b in batches]
                how = "this CPU" if on_cpu else "exact int8 (no fusion); latency not on this CPU"
                name = " / ".join(f"`{g}`" for g in group)
                lines.append(f"| {model} | {name} | {t}{' + rr' if target == 'avx2' else ''} | {_pct(acc)} | "
                             f"{_pct(agr)} | " + " | ".join(lat) + f" | {how} |")
    return "\n".join(lines) + "\n"


def render(reports: list[dict]) -> str:
    """Both tables for one or more saved reports (``--report``)."""
    parts = []
    for rep in reports:
        batches = [int(b) for b in rep["config"]["batches"]]
        parts += [f"Command: `{rep['command']}`", "", markdown(rep["rows"], batches, rep["machine"]),
                  by_target(rep["rows"], batches, rep["machine"]["int8_target"])]
    return "\n".join(parts)


def machine_info() -> dict:
    from edgecnn.runtime.benchmark import machine_fingerprint
    from edgecnn.runtime.cpu import int8_target

    return {**machine_fingerprint(), "int8_target": int8_target(), "loadavg": list(os.getloadavg())}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", type=Path, help="fp32 ONNX files with an edgecnn card")
    p.add_argument("--data", type=Path, default=None,
                   help="classifiers: an .npz in keras layout, or text-lines (synthetic text lines, labels 0 / "
                        "180, for text-direction classifiers)")
    p.add_argument("--output-kind", choices=("logits", "probabilities"), default=None,
                   help="override the card's (a one-channel sigmoid map, e.g. a DB text detector: probabilities)")
    p.add_argument("--test-images", type=int, default=10000)
    p.add_argument("--scenes", type=int, default=200, help="detect/segment: synthetic evaluation scenes")
    p.add_argument("--calibration-samples", type=int, default=512)
    p.add_argument("--types", default="U8S8,S8S8,S8S8-asym", help=f"comma-separated, of {', '.join(TYPES)}")
    p.add_argument("--reduce-range", choices=("both", "on", "off"), default="both")
    p.add_argument("--x64-precision", action="store_true",
                   help="also run each 8-bit-weight file with onnxruntime's session.x64quantprecision=1 "
                        "(rows +x64prec)")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=20, help="timed runs per variant and batch in each round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--work", type=Path, default=None, help="keep the quantized files here (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--md", type=Path, default=None)
    args = p.parse_args(argv)
    args.types = [t.strip() for t in args.types.split(",") if t.strip()]
    unknown = [t for t in args.types if t not in TYPES]
    if unknown:
        p.error(f"unknown --types {unknown}; choose from {', '.join(TYPES)}")
    args.rr = {"both": [True, False], "on": [True], "off": [False]}[args.reduce_range]
    args.batches = [int(b) for b in args.batches.split(",")]
    return args


def main(argv: list[str] | None = None) -> dict:
    argv_list = sys.argv[1:] if argv is None else list(argv)
    if argv_list[:1] == ["--report"]:  # re-render saved JSON reports: --report A.json [B.json ...]
        reports = [json.loads(Path(p).read_text()) for p in argv_list[1:]]
        print(render(reports))
        return {"reports": reports}
    args = parse_args(argv)
    vs = variants(args.types, args.rr)
    machine = machine_info()
    rows: list[dict] = []
    cache: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-int8-types-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for path in args.models:
            rows += bench_model(path, vs, args, work, cache)
    machine["loadavg_end"] = list(os.getloadavg())
    command = ["python", "tools/bench_int8_types.py", *(argv if argv is not None else sys.argv[1:])]
    report = {"schema": "edgecnn.bench_int8_types/1", "command": " ".join(command),
              "machine": machine, "config": {k: v for k, v in vars(args).items()},
              "rows": rows}
    text = markdown(rows, args.batches, machine) + "\n" + by_target(rows, args.batches, machine["int8_target"])
    print(text)
    if args.md:
        args.md.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("edgecnn").setLevel(logging.ERROR)  # the runtime's notes, once per session
    main()
