"""``edgecnn export``: run directory or ONNX file -> verified fp32 ONNX + quantized variants + report.

Every file is written to a staging folder inside the output folder and moved into place only
after it passed verification, so an interrupted or failed export leaves no ``.onnx`` that looks
valid.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecnn import __version__
from edgecnn._optional import require
from edgecnn.card import ModelCard
from edgecnn.errors import AccuracyDropError, ArtifactError, ConfigError, DataError, EdgecnnError
from edgecnn.export import onnx as onnx_io
from edgecnn.export.quantize import QUANTIZE_MODES, QuantizeConfig, quantize_model
from edgecnn.export.report import ExportReport, VariantResult
from edgecnn.export.verify import OnnxPredictor, accuracy, compare, predict_in_batches
from edgecnn.runtime.preprocess import normalize_batch

log = logging.getLogger(__name__)

__all__ = ["ExportConfig", "export_run", "export_onnx_file", "variant_filename"]


@dataclass(frozen=True)
class ExportConfig:
    """Options of one export.

    ``atol`` bounds the fp32 max absolute difference to the source on held-out images;
    ``max_accuracy_drop`` (percentage points vs fp32) is the guard for every quantized variant.
    """

    opset: int = onnx_io.DEFAULT_OPSET
    layout: str = "nhwc"
    quantize: tuple[str, ...] = ()
    simplify: bool = True
    atol: float = 1e-4
    parity_images: int = 512
    test_images: int | None = None  # None: the full held-out test set
    max_accuracy_drop: float = 1.0
    quant: QuantizeConfig = field(default_factory=QuantizeConfig.for_target)
    triton_dir: Path | None = None
    triton_max_batch_size: int = 64

    def __post_init__(self) -> None:
        unknown = [m for m in self.quantize if m not in QUANTIZE_MODES]
        if unknown:
            raise ConfigError(f"Unknown quantization mode {unknown[0]!r}; choose from {', '.join(QUANTIZE_MODES)}.")
        if self.layout not in ("nhwc", "nchw"):
            raise ConfigError(f"layout must be 'nhwc' or 'nchw', got {self.layout!r}.")
        if not 7 <= self.opset <= 23:
            raise ConfigError(f"opset must be in 7-23 (default {onnx_io.DEFAULT_OPSET}), got {self.opset}.")
        if self.atol <= 0 or self.max_accuracy_drop < 0 or self.parity_images < 2:
            raise ConfigError("atol must be > 0, max_accuracy_drop >= 0 and parity_images >= 2, got "
                              f"{self.atol}, {self.max_accuracy_drop}, {self.parity_images}.")
        object.__setattr__(self, "quantize", tuple(dict.fromkeys(self.quantize)))  # dedupe, keep order


def variant_filename(precision: str) -> str:
    """``model.onnx`` for fp32, ``model.<precision>.onnx`` for a variant."""
    return "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"


@dataclass
class _Data:
    calibration: np.ndarray | None
    test: np.ndarray
    test_labels: np.ndarray | None
    description: str


# --------------------------------------------------------------------------------- public entry


def export_run(run_dir: str | Path, *, out_dir: str | Path | None = None, config: ExportConfig | None = None,
               calibration_data: str | Path | None = None) -> ExportReport:
    """Export a training run (``model.keras`` + ``card.json``) to ``out_dir`` (default ``RUN/export``).

    Raises:
        ArtifactError: missing/corrupt run, unconvertible op, or fp32 parity failure.
        DataError: the run's dataset (or ``calibration_data``) cannot be loaded.
        AccuracyDropError: a quantized variant lost more than ``config.max_accuracy_drop``.
    """
    config = config or ExportConfig()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArtifactError(f"Run directory {run_dir} does not exist; pass a folder made by `edgecnn train`.")
    card = ModelCard.load(run_dir)
    keras_path = run_dir / "model.keras"
    model = _load_keras(keras_path)
    data, card = _run_data(card, calibration_data, config)
    out_card = _export_card(card, config, source=keras_path, source_run=run_dir)
    started = time.perf_counter()
    proto = onnx_io.convert_keras(model, card, opset=config.opset, layout=config.layout)
    nhwc_card = card.replace(layout="nhwc")

    def reference(images: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(normalize_batch(images, nhwc_card), batch_size=64, verbose=0))

    return _export(proto, out_card, reference, data, config, source=keras_path,
                   out_dir=Path(out_dir) if out_dir else run_dir / "export", started=started)


def export_onnx_file(onnx_path: str | Path, *, out_dir: str | Path | None = None, config: ExportConfig | None = None,
                     calibration_data: str | Path | None = None, mean: tuple[float, ...] | None = None,
                     std: tuple[float, ...] | None = None, layout: str | None = None,
                     labels: list[str] | None = None) -> ExportReport:
    """Verify, card and quantize an existing ONNX image classifier (default out: ``<stem>-export/``).

    Without an embedded card, ``mean``/``std`` (0-255 scale) and ``layout`` describe the input
    (defaults: 1/255 scaling, layout from the input shape).

    Raises:
        ArtifactError: missing/corrupt ONNX file or an input that is not one float32 image tensor.
        DataError: unusable ``calibration_data``.
        AccuracyDropError: a quantized variant lost more than ``config.max_accuracy_drop``.
    """
    config = config or ExportConfig()
    onnx_path = Path(onnx_path)
    proto = onnx_io.load_onnx(onnx_path)
    card = _card_for_onnx(proto, onnx_path, mean=mean, std=std, layout=layout, labels=labels)
    if calibration_data is None:
        raise DataError("Exporting an ONNX file needs real images: pass --calibration-data DIR_OR_NPZ.")
    from edgecnn.export._data import load_eval_data

    loaded = load_eval_data(calibration_data, card.input_size, seed=config.quant.seed)
    labels_, card = _align_labels(loaded.test_labels, loaded.class_names, card)
    data = _Data(loaded.calibration, _limit(loaded.test, config.test_images), _limit(labels_, config.test_images),
                 loaded.description)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    out_card = _export_card(card, config, source=onnx_path, source_run=None, opset=opset)
    source = OnnxPredictor(onnx_path, card)
    return _export(copy.deepcopy(proto), out_card, source, data, config, source=onnx_path,
                   out_dir=Path(out_dir) if out_dir else onnx_path.with_name(f"{onnx_path.stem}-export"),
                   started=time.perf_counter())


# ------------------------------------------------------------------------------------ loading


def _load_keras(path: Path) -> Any:
    if not path.is_file():
        raise ArtifactError(f"No model.keras in {path.parent}; pass a run directory made by `edgecnn train`.")
    keras = require("keras", "train")
    # The zoo's custom layers (ShuffleNet's ChannelSplit/ChannelShuffle) register with Keras's
    # serialization registry on import; they live outside edgecnn.train, which export never imports.
    import edgecnn._keras_layers  # noqa: F401

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # zipfile, h5py, deserialization errors
        raise ArtifactError(f"Cannot load {path} ({type(err).__name__}: {str(err)[:200]}); "
                            "the file is corrupt or was not saved by keras.Model.save.") from err


def _limit(x: np.ndarray | None, n: int | None) -> np.ndarray | None:
    return x if x is None or n is None else x[:n]


def _run_data(card: ModelCard, calibration_data: str | Path | None,
              config: ExportConfig) -> tuple[_Data, ModelCard]:
    """Held-out test images of the run's dataset, and calibration images: its training images, or
    ``calibration_data`` (any .npz/folder) when given. If the run's dataset is gone, the held-out
    part of ``calibration_data`` serves as the test set."""
    from edgecnn.export._data import load_eval_data
    from edgecnn.datasets import load_dataset  # no TensorFlow import; the run needs TF anyway

    spec = card.dataset.get("path")
    spec = "cifar10" if spec == "keras.datasets.cifar10" else spec
    ds, missing = None, None
    try:
        if not spec:
            raise DataError(f"The card of {card.name} names no dataset.")
        ds = load_dataset(spec, input_size=card.input_size, classes=card.dataset.get("classes"))
    except DataError as err:
        if calibration_data is None:
            raise DataError(f"{err} Pass --calibration-data DIR_OR_NPZ with real images for this model.") from err
        missing = str(err)
    if ds is not None and ds.class_names != card.class_names and ds.num_classes != card.num_classes:
        raise DataError(f"Dataset {spec} has {ds.num_classes} classes, the model {card.num_classes}.")
    if calibration_data is None:
        return _Data(ds.x_train, _limit(ds.x_test, config.test_images), _limit(ds.y_test, config.test_images),
                     f"{ds.name} test split"), card
    ext = load_eval_data(calibration_data, card.input_size, seed=config.quant.seed)
    if ds is not None:
        return _Data(ext.calibration, _limit(ds.x_test, config.test_images), _limit(ds.y_test, config.test_images),
                     f"{ds.name} test split"), card
    log.warning("%s Evaluating on held-out images of %s instead.", missing, calibration_data)
    labels, card = _align_labels(ext.test_labels, ext.class_names, card)
    return _Data(ext.calibration, _limit(ext.test, config.test_images), _limit(labels, config.test_images),
                 ext.description), card


def _card_for_onnx(proto: Any, path: Path, *, mean, std, layout, labels) -> ModelCard:
    sig = onnx_io.io_signature(proto)
    if len(sig["inputs"]) != 1 or len(sig["outputs"]) != 1:
        raise ArtifactError(f"{path} has {len(sig['inputs'])} inputs and {len(sig['outputs'])} outputs; "
                            "edgecnn handles single-input, single-output image classifiers.")
    inp, out = sig["inputs"][0], sig["outputs"][0]
    shape = inp["shape"]
    if inp["dtype"] != "float32" or len(shape) != 4:
        raise ArtifactError(f"{path}: input {inp['name']} is {inp['dtype']} {shape}; expected a float32 4-D image batch.")
    existing = onnx_io.read_card(proto)
    if layout is None:
        layout = existing.layout if existing else ("nchw" if shape[1] == 3 and shape[3] != 3 else "nhwc")
    dims = shape[2:4] if layout == "nchw" else shape[1:3]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise ArtifactError(f"{path}: input {inp['name']} {shape} has no fixed height/width for layout {layout}.")
    n_out = out["shape"][-1] if out["shape"] and isinstance(out["shape"][-1], int) else None
    if existing:
        card = existing
    else:
        if not n_out:
            raise ArtifactError(f"{path}: output {out['name']} {out['shape']} has no fixed class axis; pass --labels.")
        card = ModelCard(name=path.stem, architecture="external", class_names=labels or [str(i) for i in range(n_out)],
                         input_size=tuple(dims), normalization="given" if mean or std else "scale")
    card = card.replace(layout=layout, input_name=inp["name"], output_name=out["name"],
                        mean=tuple(mean) if mean else card.mean, std=tuple(std) if std else card.std,
                        class_names=list(labels) if labels else card.class_names)
    if n_out and n_out != card.num_classes:
        raise ArtifactError(f"{path}: output has {n_out} classes but {card.num_classes} labels were given.")
    return card


def _align_labels(labels: np.ndarray | None, names: list[str] | None,
                  card: ModelCard) -> tuple[np.ndarray | None, ModelCard]:
    """Map folder-class labels onto the model's class order (by name), or adopt the folder names
    when the model has only numeric class names."""
    if labels is None or not names:
        return labels, card
    if set(names) == set(card.class_names):
        return np.asarray([card.class_names.index(names[i]) for i in labels], dtype=np.int64), card
    if len(names) == card.num_classes and all(c.isdigit() for c in card.class_names):
        return labels, card.replace(class_names=list(names))  # sorted folder names, the usual convention
    raise DataError(f"Calibration data classes {names} do not match the model's {card.class_names}.")


def _versions(*, with_tf: bool) -> dict[str, str]:
    """Versions from package metadata: nothing gets imported (a plain-ONNX export never loads TF)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"edgecnn": __version__, "python": platform.python_version()}
    names = ("tensorflow", "keras", "tf2onnx") if with_tf else ()
    for dist in (*names, "onnx", "onnxruntime", "onnxslim"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def _export_card(card: ModelCard, config: ExportConfig, *, source: Path, source_run: Path | None,
                 opset: int | None = None) -> ModelCard:
    return card.replace(
        layout=config.layout if source_run is not None else card.layout,
        output_name=card.output_name if source_run is None else card.output_kind, precision="fp32",
        versions={**card.versions, **_versions(with_tf=source_run is not None)},
        export={"opset": config.opset if opset is None else opset, "source": str(source),
                "source_sha256": onnx_io.sha256_file(source), "source_run": str(source_run) if source_run else None,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})


# ------------------------------------------------------------------------------------- export


def _predict(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    return predict_in_batches(fn, images, batch_size=256)


def _export(proto: Any, card: ModelCard, reference: Callable[[np.ndarray], np.ndarray], data: _Data,
            config: ExportConfig, *, source: Path, out_dir: Path, started: float) -> ExportReport:
    h, w = card.input_size
    if data.test.ndim != 4 or data.test.shape[1:] != (h, w, card.channels) or len(data.test) < 2:
        raise DataError(f"Held-out images must be (N >= 2, {h}, {w}, {card.channels}), got {data.test.shape}.")
    if data.test_labels is not None and len(data.test_labels) and int(data.test_labels.max()) >= card.num_classes:
        raise DataError(f"Test labels go up to {int(data.test_labels.max())} but the model has {card.num_classes} "
                        f"classes ({', '.join(card.class_names[:5])}...): the data does not belong to this model.")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".export-staging-"))
    try:
        return _export_staged(proto, card, reference, data, config, source=source, out_dir=out_dir,
                              staging=staging, started=started)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_staged(proto, card, reference, data, config, *, source, out_dir, staging, started) -> ExportReport:
    report = ExportReport(source=str(source), source_sha256=card.export["source_sha256"], out_dir=str(out_dir),
                          card_name=card.name, layout=card.layout, opset=card.export.get("opset"), parity={},
                          variants=[], test_set={"description": data.description, "images": int(len(data.test)),
                                                 "labeled": data.test_labels is not None},
                          max_accuracy_drop_pp=config.max_accuracy_drop if config.quantize else None,
                          versions=card.versions, created=card.export["created"])
    if config.simplify:
        proto, report.simplify = onnx_io.simplify(proto)
    par_images = data.test[: config.parity_images]
    try:
        fp32_out, fp32 = _verify_fp32(proto, card, reference, par_images, data, config, staging, report, started)
    except ArtifactError as err:
        for name in [variant_filename("fp32")] + [variant_filename(m) for m in QUANTIZE_MODES]:
            (out_dir / name).unlink(missing_ok=True)  # nothing stale may pass for this export's result
        report.status, report.errors = "failed", [str(err)]
        report.save(out_dir)
        raise
    failures = []
    for mode in config.quantize:
        try:
            result = _variant(mode, staging / variant_filename("fp32"), card, fp32_out, fp32, data, config, staging)
        except EdgecnnError as err:  # bad calibration data, unknown excluded node...: report, then fail
            report.status, report.errors = "failed", [f"{mode}: {err}"]
            report.save(out_dir)
            raise
        report.variants.append(result)
        if not result.passed:
            failures.append(f"{mode}: accuracy {_fmt(result.accuracy)} vs fp32 {_fmt(fp32.accuracy)} "
                            f"({result.accuracy_delta_pp:+.2f} pp; top-1 agreement {100 * result.top1_agreement:.2f}%), "
                            f"more than the allowed {config.max_accuracy_drop:g} pp drop")
    for v in report.variants:  # only verified files leave the staging folder
        if v.passed:
            os.replace(staging / v.file, out_dir / v.file)
        else:
            v.file = None
            (out_dir / variant_filename(v.precision)).unlink(missing_ok=True)
    if config.triton_dir:
        report.triton = str(_write_triton(config, out_dir, report, card))
    if failures:
        report.status, report.errors = "failed", failures
    report.save(out_dir)
    if failures:
        raise AccuracyDropError("Quantized variant failed the accuracy guard: " + "; ".join(failures)
                                + f". Report: {out_dir / 'export_report.md'}; passing files were written. "
                                  "Try --calibration-method entropy or percentile, more --calibration-samples, "
                                  "--exclude-node for sensitive layers, or raise --max-accuracy-drop.")
    return report


def _fmt(acc: float | None) -> str:
    return "-" if acc is None else f"{100 * acc:.2f}%"


def _verify_fp32(proto, card, reference, images, data, config, staging, report, started):
    """Parity of the fp32 ONNX with the source (Keras or the original ONNX) at batch N and batch 1."""
    onnx_io.embed_card(proto, card)
    tmp = onnx_io.save_onnx(proto, staging / variant_filename("fp32"))
    predictor = OnnxPredictor(tmp, card)
    ref = _predict(reference, images)
    got = _predict(predictor, images)
    single = predictor(images[:1])
    parity = compare(ref, got)
    batch1 = compare(ref[:1], single)
    report.parity = {**parity.to_dict(), "batch1_max_abs_diff": batch1.max_abs_diff,
                     "batch_sizes": [1, min(256, len(images))], "atol": config.atol}
    problems = []
    if parity.top1_agreement < 1.0:
        problems.append(f"top-1 agreement {100 * parity.top1_agreement:.2f}% (must be 100%)")
    if max(parity.max_abs_diff, batch1.max_abs_diff) > config.atol:
        problems.append(f"max |diff| {max(parity.max_abs_diff, batch1.max_abs_diff):.2e} > atol {config.atol:g}")
    if problems:
        raise ArtifactError(f"The fp32 ONNX model does not match its source on {parity.images} held-out images: "
                            + "; ".join(problems) + ". No model was written.")
    outputs = _predict(predictor, data.test)
    acc = accuracy(outputs, data.test_labels) if data.test_labels is not None else None
    card.export["verification"] = report.parity
    card.metrics.update(_metrics(acc, len(data.test)))
    card.export["simplified"] = bool(report.simplify.get("applied"))
    onnx_io.embed_card(proto, card)
    onnx_io.save_onnx(proto, tmp)
    final = staging.parent / variant_filename("fp32")
    result = VariantResult("fp32", final.name, tmp.stat().st_size, acc, None if acc is None else 0.0,
                           parity.top1_agreement, parity.max_abs_diff, parity.mean_abs_diff, parity.images,
                           round(time.perf_counter() - started, 2), True, {"opset": card.export.get("opset")},
                           onnx_io.op_type_counts(proto))
    report.variants.append(result)
    # Copy, not move: the staged fp32 file stays the input of quantization.
    shutil.copyfile(tmp, staging / ".fp32.copy")
    os.replace(staging / ".fp32.copy", final)
    return outputs, result


def _metrics(acc: float | None, n: int) -> dict[str, Any]:
    return {"onnx_test_images": int(n), **({"onnx_test_accuracy": round(acc, 6)} if acc is not None else {})}


def _variant(mode: str, fp32_path: Path, card: ModelCard, fp32_out: np.ndarray, fp32: VariantResult,
             data: _Data, config: ExportConfig, staging: Path) -> VariantResult:
    started = time.perf_counter()
    path = staging / variant_filename(mode)
    proto = quantize_model(fp32_path, path, mode=mode, card=card, config=config.quant,
                           calibration_images=data.calibration)
    vcard = card.replace(precision=mode, metrics=dict(card.metrics),
                         export={**card.export, "quantization": {"mode": mode, **config.quant.describe(mode)}})
    out = _predict(OnnxPredictor(path, vcard), data.test)
    par = compare(fp32_out, out)
    acc = accuracy(out, data.test_labels) if data.test_labels is not None else None
    # Without labels, the share of images whose top-1 changed bounds the accuracy change.
    delta = (100 * (acc - fp32.accuracy)) if acc is not None else -100 * (1 - par.top1_agreement)
    passed = -delta <= config.max_accuracy_drop + 1e-9
    vcard.metrics.update(_metrics(acc, len(data.test)))
    vcard.metrics.update(accuracy_delta_pp=round(delta, 4), top1_agreement_vs_fp32=round(par.top1_agreement, 6))
    onnx_io.embed_card(proto, vcard)
    onnx_io.save_onnx(proto, path)
    return VariantResult(mode, path.name, path.stat().st_size, acc, round(delta, 4), par.top1_agreement,
                         par.max_abs_diff, par.mean_abs_diff, par.images, round(time.perf_counter() - started, 2),
                         passed, config.quant.describe(mode), onnx_io.op_type_counts(proto))


def _write_triton(config: ExportConfig, out_dir: Path, report: ExportReport, card: ModelCard) -> Path:
    from edgecnn.export.triton import write_triton_model

    for v in report.variants:
        if v.passed and v.file:
            suffix = "" if v.precision == "fp32" else "_" + v.precision.replace("-", "_")
            write_triton_model(config.triton_dir, out_dir / v.file, card, name=f"{card.name}{suffix}",
                               max_batch_size=config.triton_max_batch_size)
    return Path(config.triton_dir)
