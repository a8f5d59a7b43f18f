"""``edgecnn export``: any model source -> verified fp32 ONNX + quantized variants + report.

Sources (:mod:`edgecnn.export.sources`): an edgecnn run directory, a ``.keras``/``.h5`` file, a
TensorFlow SavedModel, a ``.tflite`` or an ``.onnx`` file. Every file is written to a staging
folder inside the output folder and moved into place only after it passed verification, so an
interrupted or failed export leaves no ``.onnx`` that looks valid (and no empty folder).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import logging
import math
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn import __version__
from edgecnn.card import ModelCard
from edgecnn.errors import AccuracyDropError, ArtifactError, ConfigError, DataError, EdgecnnError
from edgecnn.export import onnx as onnx_io
from edgecnn.export.accuracy_aware import accuracy_aware_for_export, guard_hints
from edgecnn.export.guard import DEFAULT_MIN_SQNR_DB, Verdict, judge_variant
from edgecnn.export.images import SYNTHETIC_NOTE, ExportData, fp32_only_data, select_data
from edgecnn.export.quantize import QuantizeConfig, quantize_model
from edgecnn.export.report import REPORT_JSON, ExportReport, VariantResult
from edgecnn.export.sources import ModelSource, load_source
from edgecnn.export.tta import tta_model
from edgecnn.export.variants import EXPORT_MODES, EXPORT_TTA, FP32, GUARD_POLICIES, VARIANTS, variant, variant_filename
from edgecnn.export.verify import OnnxPredictor, accuracy, compare_outputs, ort_error, predict_outputs, task_agreement
from edgecnn.presets import PREPROCESSING_FLAGS, ModelOverrides, short_list
from edgecnn.runtime.core import take_images
from edgecnn.runtime.deploy import DEPLOY_FILE, TUNE_REPORT

log = logging.getLogger(__name__)

__all__ = ["ExportConfig", "export_model", "export_run", "export_onnx_file", "load_test_data"]


@dataclass(frozen=True)
class ExportConfig:
    """Options of one export.

    ``opset``: the ONNX opset of the export (None: 17 for converted models, an ONNX source's own).
    ``layout``: input layout of a model converted from TensorFlow (None: nhwc); an ONNX source
    keeps its own. ``atol`` bounds the fp32 max difference to the source on held-out images,
    relative to each output's largest magnitude (at least 1). ``max_accuracy_drop`` (percentage
    points vs fp32; of top-1 agreement without labels) is the guard for every quantized variant.
    ``check_chance`` fails an export whose fp32 accuracy on labelled data is at chance, when the
    preprocessing came from flags or a guess rather than an edgecnn card.
    """

    opset: int | None = None
    layout: str | None = None
    quantize: tuple[str, ...] = ()
    simplify: bool = True
    atol: float = 1e-4
    parity_images: int = 512
    test_images: int | None = None  # None: the full held-out test set
    max_accuracy_drop: float = 1.0
    quant: QuantizeConfig = field(default_factory=QuantizeConfig.for_target)
    triton_dir: Path | None = None
    triton_max_batch_size: int = 64
    check_chance: bool = True
    accuracy_aware: bool = False  # int8: keep the worst-quantized nodes in float until the guard passes
    guard: str = "lenient"  # an unsure verdict (the interval straddles the budget) passes, or "strict": fails
    eval_data: Path | None = None  # images that judge every variant (all of them), instead of a held-out part
    min_sqnr_db: float = DEFAULT_MIN_SQNR_DB  # raw outputs (no task head): the least SQNR a variant may have
    tta: str = "none"  # "flip": flip test-time augmentation inside the graph (edgecnn.export.tta): 2x the cost
    qat: Any = None  # edgecnn.export.qat.QATModel: the int8 variant is this fine-tuned model, not calibrated

    def __post_init__(self) -> None:
        unknown = [m for m in self.quantize if m not in EXPORT_MODES]
        if unknown:
            raise ConfigError(f"Unknown quantization mode {unknown[0]!r}; choose from {', '.join(EXPORT_MODES)}.")
        if self.layout not in (None, "nhwc", "nchw"):
            raise ConfigError(f"layout must be 'nhwc' or 'nchw', got {self.layout!r}.")
        if self.opset is not None and not 7 <= self.opset <= 23:
            raise ConfigError(f"opset must be in 7-23 (default {onnx_io.DEFAULT_OPSET}), got {self.opset}.")
        if self.atol <= 0 or self.max_accuracy_drop < 0 or self.parity_images < 2:
            raise ConfigError("atol must be > 0, max_accuracy_drop >= 0 and parity_images >= 2, got "
                              f"{self.atol}, {self.max_accuracy_drop}, {self.parity_images}.")
        if self.guard not in GUARD_POLICIES:
            raise ConfigError(f"guard must be one of {', '.join(GUARD_POLICIES)}, got {self.guard!r}.")
        if not math.isfinite(self.min_sqnr_db):
            raise ConfigError(f"min_sqnr_db must be a finite number of dB, got {self.min_sqnr_db}.")
        if self.tta not in EXPORT_TTA:
            raise ConfigError(f"tta must be one of {', '.join(EXPORT_TTA)}, got {self.tta!r}.")
        object.__setattr__(self, "quantize", tuple(dict.fromkeys(self.quantize)))  # dedupe, keep order


# --------------------------------------------------------------------------------- public entry


def export_model(source: str | Path, *, out_dir: str | Path | None = None, config: ExportConfig | None = None,
                 calibration_data: str | Path | None = None,
                 overrides: ModelOverrides | None = None) -> ExportReport:
    """Export any model source to ``out_dir`` (default ``RUN/export`` or ``<stem>-export/``).

    Args:
        source: a run directory, ``.keras``/``.h5`` file, SavedModel directory, ``.tflite`` or ``.onnx``.
        out_dir: output folder.
        config: export options.
        calibration_data: real images (.npz or folder; class sub-folders give labels) for
            calibration and evaluation; required unless the model's card names its dataset.
        overrides: card values from the command line (what the file does not say).

    Raises:
        ArtifactError: missing/corrupt/unconvertible source, a card that cannot be built, fp32
            parity failure, or fp32 accuracy at chance with guessed preprocessing.
        DataError: unusable calibration/evaluation data.
        AccuracyDropError: a quantized variant lost more than ``config.max_accuracy_drop``.
    """
    config = config or ExportConfig()
    started = time.perf_counter()
    src = load_source(source, overrides=overrides, opset=config.opset, layout=config.layout, tta=config.tta)
    for mode in config.quantize:
        variant(mode).check_source(src.kind)
    if src.assumed:
        log.warning("%s", src.assumed)
    notes = []
    if calibration_data is None and not config.quantize and not src.card.dataset.get("path"):
        data, card = fp32_only_data(src.card, config)  # nothing to calibrate
        if config.eval_data is None:
            notes.append(SYNTHETIC_NOTE.format(n=len(data.test)))  # printed with the table, kept in the report
    else:
        data, card = select_data(src.card, calibration_data, config)
    if config.tta != "none":
        notes.append(f"Test-time augmentation ({config.tta}) is inside the graph: each image runs through the network "
                     "twice, so it costs 2x the FLOPs and about 2x the latency of the plain export.")
    if card.class_names != src.card.class_names:
        names = short_list(list(card.class_names))
        notes.append(f"Labels taken from the class folders of {calibration_data}: {names}.")
    out_card = _export_card(card, src)
    if config.tta != "none":
        out_card.export["tta"] = config.tta
    return _export(src.proto, out_card, src.reference, data, config, src=src,
                   out_dir=Path(out_dir) if out_dir else src.default_out, started=started, notes=notes)


def export_run(run_dir: str | Path, *, out_dir: str | Path | None = None, config: ExportConfig | None = None,
               calibration_data: str | Path | None = None) -> ExportReport:
    """Export a training run (``model.keras`` + ``card.json``) to ``out_dir`` (default ``RUN/export``).

    Raises:
        ArtifactError: missing/corrupt run, unconvertible op, or fp32 parity failure.
        DataError: the run's dataset (or ``calibration_data``) cannot be loaded.
        AccuracyDropError: a quantized variant lost more than ``config.max_accuracy_drop``.
    """
    return export_model(run_dir, out_dir=out_dir, config=config, calibration_data=calibration_data)


def export_onnx_file(onnx_path: str | Path, *, out_dir: str | Path | None = None, config: ExportConfig | None = None,
                     calibration_data: str | Path | None = None, mean: tuple[float, ...] | None = None,
                     std: tuple[float, ...] | None = None, layout: str | None = None,
                     labels: list[str] | None = None) -> ExportReport:
    """Verify, card and quantize an existing ONNX model (default out: ``<stem>-export/``).

    Without an embedded card, ``mean``/``std`` (0-255 scale), ``layout`` and ``labels`` describe it
    (see :func:`export_model` and :class:`edgecnn.presets.ModelOverrides` for every other value).

    Raises:
        ArtifactError, DataError, AccuracyDropError: as :func:`export_model`.
    """
    overrides = ModelOverrides(mean=tuple(mean) if mean else None, std=tuple(std) if std else None, layout=layout,
                               class_names=tuple(labels) if labels else None)
    return export_model(onnx_path, out_dir=out_dir, config=config, calibration_data=calibration_data,
                        overrides=overrides)


# ------------------------------------------------------------------------------------ loading


def load_test_data(card: ModelCard, data: str | Path | None = None, *, limit: int | None = None,
                   flag: str = "--calibration-data") -> tuple[np.ndarray, np.ndarray | None, str]:
    """The held-out images an export of ``card`` is judged on (labels for a classifier when known)
    and their description: the card's dataset's test split, or the held-out part of ``data``
    (an .npz or an image folder) when given or when the card names no dataset; errors name
    ``flag`` as the way to give images.

    Raises:
        DataError: without a usable dataset.
    """
    found, _ = select_data(card, data, ExportConfig(test_images=limit), flag=flag)
    return found.test, found.test_labels, found.description


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


def _export_card(card: ModelCard, src: ModelSource) -> ModelCard:
    export = {"opset": onnx_io.opset_of(src.proto), "source": str(src.path), "source_kind": src.kind,
              "source_sha256": onnx_io.sha256_file(src.file), "source_run": str(src.run_dir) if src.run_dir else None,
              "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    if src.source_opset is not None and src.source_opset != export["opset"]:
        export["source_opset"] = src.source_opset
    if src.weights:
        export["source_weights"] = src.weights
    return card.replace(precision="fp32", versions={**card.versions, **_versions(with_tf=src.uses_tensorflow)},
                        export=export)


# ------------------------------------------------------------------------------------- export


def _open(path: Path, card: ModelCard) -> OnnxPredictor:
    """The staged file in onnxruntime; if it cannot load, the one-line error carries onnxruntime's cause."""
    try:
        return OnnxPredictor(path, card)
    except ArtifactError as err:
        if err.__cause__ is None:
            raise
        raise ArtifactError(f"onnxruntime cannot load the {card.precision} model (opset "
                            f"{card.export.get('opset')}): {ort_error(err.__cause__)}.") from err


def _predict(fn: Callable[[np.ndarray], list[np.ndarray]], images: np.ndarray) -> list[np.ndarray]:
    try:
        return predict_outputs(fn, images, batch_size=256)
    except EdgecnnError:
        raise
    except Exception as err:  # onnxruntime, LiteRT or Keras failing at run time
        raise ArtifactError(f"Running the model on {len(images)} images failed ({ort_error(err)}). "
                            "No model was written.") from err


def _export(proto: Any, card: ModelCard, reference: Callable[[np.ndarray], list[np.ndarray]], data: ExportData,
            config: ExportConfig, *, src: ModelSource, out_dir: Path, started: float,
            notes: list[str] | None = None) -> ExportReport:
    h, w = card.input_size
    if data.test.ndim != 4 or data.test.shape[1:] != (h, w, card.channels) or len(data.test) < 2:
        raise DataError(f"Held-out images must be (N >= 2, {h}, {w}, {card.channels}), got {data.test.shape}.")
    if data.test_labels is not None and len(data.test_labels) and int(data.test_labels.max()) >= card.num_classes:
        raise DataError(f"Test labels go up to {int(data.test_labels.max())} but the model has {card.num_classes} "
                        f"classes ({', '.join(card.class_names[:5])}...): the data does not belong to this model.")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    with _folder_lock(out_dir):
        _sweep_staging(out_dir)
        # The pid in the name lets a later export tell a killed run's leftovers from a running one.
        staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".export-staging-{os.getpid()}-"))
        try:
            return _export_staged(proto, card, reference, data, config, src=src, out_dir=out_dir,
                                  staging=staging, started=started, notes=notes or [])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if created and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()  # a failure before anything was written leaves no empty folder behind


@contextlib.contextmanager
def _folder_lock(out_dir: Path) -> Iterator[None]:
    """One export at a time into a folder: an exclusive ``flock`` on the folder itself (released by
    the kernel when the process dies, so a killed export never leaves it locked).

    Raises:
        ConfigError: while another export holds the folder.
    """
    import fcntl

    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"Another edgecnn export is writing {out_dir}; wait for it to finish, or pass "
                              "another --out.") from None
        yield
    finally:
        os.close(fd)


def _sweep_staging(out_dir: Path) -> None:
    """Remove the staging folders of exports that were killed (their process is gone)."""
    for folder in out_dir.glob(".export-staging-*"):
        pid = folder.name.removeprefix(".export-staging-").split("-", 1)[0]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            log.info("Removed %s, left by an interrupted export.", folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


_MODEL_FILE = re.compile(r"^model(\.[A-Za-z0-9_-]+)*\.(onnx|tflite)$")


def _commit(out_dir: Path, staging: Path, report: ExportReport) -> None:
    """The verified files of ``report`` move from ``staging`` into ``out_dir``. Everything that
    describes the folder's earlier files goes first (its report, tune's results, the earlier model
    files): a kill at any instant leaves some of this export's files, never a mix with an earlier
    one's (the caller writes the new report last)."""
    for name in (REPORT_JSON, "export_report.md"):
        (out_dir / name).unlink(missing_ok=True)
    _remove_stale_models(out_dir, {v.file for v in report.variants if v.passed and v.file})
    for v in report.variants:  # only verified files leave the staging folder
        if v.passed and v.file:
            os.replace(staging / v.file, out_dir / v.file)
        else:
            v.file = None


def _remove_stale_models(out_dir: Path, keep: set[str]) -> None:  # keep: the names this export writes again
    """Model files of an earlier export into the same folder (a runA ``model.int8.onnx`` must not sit
    beside runB's ``model.onnx`` as if it were runB's), and the earlier ``edgecnn tune`` results,
    which measured the replaced files. Files this export writes again are replaced silently."""
    for path in out_dir.iterdir():
        if path.is_file() and _MODEL_FILE.match(path.name):
            path.unlink(missing_ok=True)
            if path.name not in keep:
                log.warning("Removed %s: an earlier export's file, not produced by this one.", path)
    for name in (DEPLOY_FILE, TUNE_REPORT):  # measured on the files this export replaced
        if (out_dir / name).is_file():
            (out_dir / name).unlink(missing_ok=True)
            log.warning("Removed %s: it was tuned on the earlier export; run `edgecnn tune %s` again.",
                        out_dir / name, out_dir)


def _new_report(card: ModelCard, data: ExportData, config: ExportConfig, src: ModelSource, out_dir: Path,
                notes: list[str]) -> ExportReport:
    notes = list(notes)
    if data.shared:
        notes.append(f"No labels: calibration and evaluation share the same {len(data.test)} images, and each "
                     "variant is judged by its agreement with fp32, not by accuracy.")
    if "source_opset" in card.export:
        notes.append(f"Converted from opset {card.export['source_opset']} to {card.export['opset']}.")
    return ExportReport(source=str(src.path), source_sha256=card.export["source_sha256"], out_dir=str(out_dir),
                        card_name=card.name, layout=card.layout, opset=card.export.get("opset"), parity={},
                        variants=[], test_set={"description": data.description, "images": int(len(data.test)),
                                               "labeled": data.test_labels is not None,
                                               "shared_with_calibration": data.shared},
                        max_accuracy_drop_pp=config.max_accuracy_drop if config.quantize else None,
                        versions=card.versions, created=card.export["created"], source_kind=src.kind,
                        task=card.task, notes=notes, assumed=src.assumed, guard=config.guard)


def _export_staged(proto, card, reference, data, config, *, src, out_dir, staging, started, notes) -> ExportReport:
    report = _new_report(card, data, config, src, out_dir, notes)
    unsimplified = proto
    if config.simplify:
        proto, report.simplify = onnx_io.simplify(proto)
    par_images = data.test[: config.parity_images]
    verify = functools.partial(_verify_fp32, reference=reference, images=par_images, data=data, config=config,
                               staging=staging, report=report, started=started,
                               check_chance=config.check_chance and not src.card_from_file)
    try:
        try:
            fp32_out, fp32, card = verify(proto, card)
        except ArtifactError as err:
            if proto is unsimplified:
                raise
            # onnxslim trusts the declared shapes; a file whose declared output shape is wrong (ddddocr's
            # [1, seqlen] for a [T, 1, C] output) comes out computing something else: keep the source's graph
            log.warning("The onnxslim-simplified graph failed verification (%s); exporting the unsimplified one.",
                        err)
            report.simplify = {"applied": False, "nodes_before": report.simplify.get("nodes_before"),
                               "reason": f"the simplified graph failed verification: {err}"[:300]}
            proto = unsimplified
            fp32_out, fp32, card = verify(proto, card)
    except ArtifactError as err:
        for row in (FP32, *VARIANTS.values()):
            (out_dir / row.filename).unlink(missing_ok=True)  # nothing stale may pass for this export's result
        report.status, report.errors = "failed", [str(err)]
        report.save(out_dir)
        raise
    failures = []
    for mode in config.quantize:
        try:
            if variant(mode).runtime == "litert":
                result = _litert_variant(mode, src, card, fp32_out, fp32, data, config, staging)
            else:
                result = _variant(mode, staging / variant_filename("fp32"), card, fp32_out, fp32, data, config,
                                  staging)
        except EdgecnnError as err:  # bad calibration data, unknown excluded node...: report, then fail
            _commit(out_dir, staging, report)
            report.status, report.errors = "failed", [f"{mode}: {err}"]
            report.save(out_dir)
            raise
        report.variants.append(result)
        if not result.passed:
            failures.append(f"{mode}: {result.guard}")
    _commit(out_dir, staging, report)
    if config.triton_dir:
        report.triton = str(_write_triton(config, out_dir, report, card))
    if failures:
        report.status, report.errors = "failed", failures
    report.save(out_dir)
    if failures:
        raise AccuracyDropError("Quantized variant failed the accuracy guard: " + "; ".join(failures)
                                + f". Report: {out_dir / 'export_report.md'}; passing files were written. "
                                + guard_hints(config.quant, accuracy_aware=config.accuracy_aware,
                                              int8_failed=any(f.startswith("int8:") for f in failures),
                                              task=card.task))
    return report


def _fmt(acc: float | None) -> str:
    return "-" if acc is None else f"{100 * acc:.2f}%"


_CHANCE_MIN_IMAGES = 20
_CHANCE_Z = 1.5
_CHANCE_MAX_EXTRA = 2048  # labelled calibration images added to the held-out ones for the chance check


def _check_not_chance(right: int, n: int, card: ModelCard) -> None:
    """Accuracy no better than guessing means the preprocessing (or the label order) is wrong.

    Judged on every labelled image given (held-out and calibration alike: fp32 was fitted on
    neither). "At chance" is within 1.5 standard errors of a guessing model's accuracy: wrong
    preprocessing typically lands on or below chance (one class for every image), while a model
    that learned anything clears it on a few dozen images. Between that and the Wilson 95% lower
    bound clearing chance, the images cannot tell: a warning, not a refusal. Under 20 images
    nothing is judged; ``--no-chance-check`` skips the check.
    """
    from edgecnn.export.guard import wilson

    acc, chance = right / max(n, 1), 1.0 / card.num_classes
    if n < _CHANCE_MIN_IMAGES:
        log.warning("Only %d labelled images: too few to check that fp32 accuracy (%.1f%%) is above chance.",
                    n, 100 * acc)
        return
    low, high = wilson(right, n)
    margin = _CHANCE_Z * math.sqrt(chance * (1.0 - chance) / n)
    where = f"fp32 accuracy is {100 * acc:.1f}% on {n} labelled images (95% interval {100 * low:.1f}-{100 * high:.1f}%)"
    level = f"({100 * chance:.1f}% for {card.num_classes} classes)"
    if acc <= chance + margin:
        raise ArtifactError(
            f"{where}, at chance level {level}: the preprocessing is probably wrong "
            f"(used: {card.describe_preprocessing()}); "
            f"check {PREPROCESSING_FLAGS} and the --labels order, or pass --no-chance-check if the model is this "
            "weak. No model was written.")
    if low <= chance:
        log.warning("%s, chance is %s: these images cannot show the model beats chance; check the preprocessing "
                    "(%s) if that is unexpected.", where, level, card.describe_preprocessing())


def _chance_evidence(predictor: OnnxPredictor, test_outputs: list[np.ndarray], data: ExportData) -> tuple[int, int]:
    """Correct fp32 answers and images: the held-out images plus the labelled calibration images."""
    right = int(np.sum(test_outputs[0].argmax(axis=1) == np.asarray(data.test_labels).reshape(-1)))
    n = len(data.test)
    if data.calibration is not None and data.calibration_labels is not None and not data.shared:
        x, y = data.calibration[:_CHANCE_MAX_EXTRA], data.calibration_labels[:_CHANCE_MAX_EXTRA]
        out = _predict(predictor.outputs, x)[0]
        right, n = right + int(np.sum(out.argmax(axis=1) == y)), n + len(x)
    return right, n


def _verify_fp32(proto, card, *, reference, images, data, config, staging, report, started, check_chance):
    """Parity of the fp32 ONNX with the source (all outputs) at batch N and batch 1; returns the
    outputs on the held-out images, the fp32 result and the card (with the outputs' image axis
    when it was found at run time: a time-major sequence output)."""
    onnx_io.embed_card(proto, card)
    tmp = onnx_io.save_onnx(proto, staging / variant_filename("fp32"))
    predictor = _open(tmp, card)
    ref = _predict(reference, images)
    got = _predict(predictor.outputs, images)
    axes = predictor.batch_axes(got, len(images))
    parity = compare_outputs(ref, got, task=card.task, images=len(images))
    found = sorted({a for a in axes if a})
    if card.batch_axis is None and len(found) == 1:  # recorded, so every later reader knows it
        card = card.replace(batch_axis=found[0])
    batch1 = compare_outputs([r if a is None else take_images(r, slice(0, 1), a) for r, a in zip(ref, axes)],
                             predictor.outputs(images[:1]), task=card.task, images=1)
    report.parity = {**parity.to_dict(), "batch1_max_abs_diff": batch1.max_abs_diff,
                     "batch_sizes": [1, min(256, len(images))], "atol": config.atol}
    problems = []
    if parity.top1_agreement is not None and parity.top1_agreement < 1.0:
        problems.append(f"top-1 agreement {100 * parity.top1_agreement:.2f}% (must be 100%)")
    worst = max(parity.max_rel_diff, batch1.max_rel_diff)
    if worst > config.atol:
        problems.append(f"max |diff| {max(parity.max_abs_diff, batch1.max_abs_diff):.2e} ({worst:.2e} relative to "
                        f"the output's scale) > atol {config.atol:g}")
    if problems:
        weights = card.export.get("source_weights")
        hint = (f" The source's weights are already quantized ({weights}): it computes differently from the float "
                f"ONNX by design; pass --atol above the relative difference to accept that, or export the float "
                f"model." if weights else "")
        raise ArtifactError(f"The fp32 ONNX model does not match its source on {parity.images} held-out images: "
                            + "; ".join(problems) + "." + hint + " No model was written.")
    outputs = _predict(predictor.outputs, data.test)
    acc = accuracy(outputs[0], data.test_labels) if data.test_labels is not None and card.task == "classify" else None
    if check_chance and acc is not None and card.num_classes >= 2:
        _check_not_chance(*_chance_evidence(predictor, outputs, data), card)
    card.export["verification"] = report.parity
    card.metrics.update(_metrics(acc, len(data.test)))
    card.export["simplified"] = bool(report.simplify.get("applied"))
    onnx_io.embed_card(proto, card)
    onnx_io.save_onnx(proto, tmp)
    final = staging.parent / variant_filename("fp32")
    result = VariantResult("fp32", final.name, tmp.stat().st_size, acc, None if acc is None else 0.0,
                           parity.top1_agreement, parity.max_abs_diff, parity.mean_abs_diff, parity.images,
                           round(time.perf_counter() - started, 2), True, {"opset": card.export.get("opset")},
                           onnx_io.op_type_counts(proto), guard=f"parity with the source ({_parity_words(parity)})")
    report.variants.append(result)  # the staged file moves in with the others (_commit)
    return outputs, result, card


def _parity_words(parity: Any) -> str:
    """``max |diff| 1.2e-07 over 2 outputs``: how the fp32 file matched its source."""
    outs = f" over {parity.outputs} outputs" if parity.outputs > 1 else ""
    return f"max |diff| {parity.max_abs_diff:.2e}{outs}"


def _metrics(acc: float | None, n: int) -> dict[str, Any]:
    return {"onnx_test_images": int(n), **({"onnx_test_accuracy": round(acc, 6)} if acc is not None else {})}


def _quantize(mode: str, fp32_path: Path, path: Path, card: ModelCard, data: ExportData, config: ExportConfig) -> Any:
    try:
        return quantize_model(fp32_path, path, mode=mode, card=card, config=config.quant.for_task(card.task),
                              calibration_images=data.calibration)
    except EdgecnnError:
        raise
    except Exception as err:  # onnxruntime.quantization raises whatever its passes raise
        raise ArtifactError(f"onnxruntime could not quantize the model to {mode} ({ort_error(err)}).") from err


def _variant(mode: str, fp32_path: Path, card: ModelCard, fp32_out: list[np.ndarray], fp32: VariantResult,
             data: ExportData, config: ExportConfig, staging: Path) -> VariantResult:
    started = time.perf_counter()
    path = staging / variant_filename(mode)
    qat = config.qat if mode == "int8" else None  # int8 from a QAT model (edgecnn.export.qat), not calibration
    aa = _accuracy_aware(fp32_path, path, card, fp32_out, fp32, data, config) if mode == "int8" and not qat else None
    proto = aa.proto if aa else qat.to_onnx(fp32_path, card, path) if qat else _quantize(mode, fp32_path, path, card,
                                                                                            data, config)
    settings = {**(qat.describe(config.quant) if qat else config.quant.for_task(card.task).describe(mode)),
                "opset": onnx_io.opset_of(proto), **_fixed_input(mode, fp32_path, proto, card)}
    if aa:  # the card says which nodes stayed float
        settings.update(exclude_nodes=[*settings["exclude_nodes"], *aa.excluded_nodes], accuracy_aware=True)
    vcard = card.replace(precision=mode, metrics=dict(card.metrics),
                         export={**card.export, "opset": settings["opset"], "quantization": {"mode": mode, **settings}})
    def save(final: ModelCard) -> None:
        onnx_io.embed_card(proto, final)
        onnx_io.save_onnx(proto, path)

    result = _judge_staged(mode, path, vcard, fp32_out, fp32, data, config, save=save, started=started,
                           settings=settings, ops=onnx_io.op_type_counts(proto), note=aa.message if aa else None)
    result.accuracy_aware = aa.to_dict() if aa else None
    if aa and aa.passed and aa.no_gain:  # every node that mattered stayed float: nothing to gain over fp32
        result.passed, result.guard = False, aa.message
    return result


def _fixed_input(mode: str, fp32_path: Path, proto: Any, card: ModelCard) -> dict[str, Any]:
    """``{"fixed_input_shape": [...]}`` when quantization fixed the fp32 file's dynamic height/width
    at the card's input size (edgecnn.export.quantize.fix_input_size): the variant takes only that size."""
    def shape(model: Any) -> list[Any] | None:
        return next((i["shape"] for i in onnx_io.io_signature(model)["inputs"] if i["name"] == card.input_name), None)

    after = shape(proto)
    if after is None or after == shape(onnx_io.load_onnx(fp32_path, check=False)):
        return {}
    log.warning("%s: the input is fixed at %s for quantization (the fp32 model keeps its dynamic size).", mode, after)
    return {"fixed_input_shape": after}


def _judge_staged(mode: str, path: Path, vcard: ModelCard, fp32_out: list[np.ndarray], fp32: VariantResult,
                  data: ExportData, config: ExportConfig, *, save: Callable[[ModelCard], None], started: float,
                  settings: dict[str, Any], ops: dict[str, int], note: str | None = None) -> VariantResult:
    """Run the staged variant file on the test images, judge it against fp32 (the guard), put the
    numbers into its card, ``save`` the file with that card, and report it."""
    out = _predict(_open(path, vcard).outputs, data.test)
    task = vcard.task
    par = compare_outputs(fp32_out, out, task=task)
    metric = task_agreement(task, fp32_out, out, vcard)
    acc = accuracy(out[0], data.test_labels) if data.test_labels is not None and task == "classify" else None
    delta = None if acc is None or fp32.accuracy is None else 100 * (acc - fp32.accuracy)
    verdict, passed, guard = _judge(out, fp32_out, acc, fp32.accuracy, vcard, data, config)
    guard = f"{guard}; {note}" if note else guard
    vcard.metrics.update(_metrics(acc, len(data.test)))
    if delta is not None:
        vcard.metrics["accuracy_delta_pp"] = round(delta, 4)
    vcard.metrics[f"{metric.name}_vs_fp32"] = round(metric.value, 6)
    if verdict is not None:
        vcard.metrics["guard"] = {"outcome": verdict.outcome, "policy": verdict.policy, "images": verdict.images}
    save(vcard)
    return VariantResult(mode, path.name, path.stat().st_size, acc, None if delta is None else round(delta, 4),
                         par.top1_agreement, par.max_abs_diff, par.mean_abs_diff, par.images,
                         round(time.perf_counter() - started, 2), passed, settings, ops,
                         metric=metric.name, metric_value=round(metric.value, 6), guard=guard,
                         verdict=None if verdict is None else verdict.to_dict())


def _litert_variant(mode: str, src: ModelSource, card: ModelCard, fp32_out: list[np.ndarray], fp32: VariantResult,
                    data: ExportData, config: ExportConfig, staging: Path) -> VariantResult:
    """``model.int8.tflite``: the source Keras model through the TFLite converter, int8 weights and
    activations calibrated on the images the ONNX int8 variant uses, the card's normalization inside
    the model so that the int8 input is the pixel itself (``pixel - 128``: the runtime's whole
    preprocessing is one xor), float32 output, the card in its metadata; judged by the same guard
    against the fp32 ONNX outputs."""
    from edgecnn.export.litert import convert_litert_int8, embed_card_tflite, pixels_card
    from edgecnn.export.quantize import check_calibration_images
    from edgecnn.export.sources import load_float32_keras

    started = time.perf_counter()
    quant = config.quant
    check_calibration_images(data.calibration, card, quant.calibration_samples)
    pick = np.sort(np.random.default_rng(quant.seed).permutation(len(data.calibration))[:quant.calibration_samples])
    nhwc = card.replace(layout="nhwc")  # the Keras model's own layout
    model = tta_model(load_float32_keras(src.file), config.tta)  # the same graph as the ONNX variants
    blob = convert_litert_int8(model, nhwc, data.calibration[pick], source=str(src.path), float_output=True,
                               pixels_in=True)
    settings = {"converter": "tf.lite.TFLiteConverter", "optimizations": "DEFAULT", "ops": "TFLITE_BUILTINS_INT8",
                "input": "int8 pixels (normalization inside the model)", "output": "float32",
                "calibration_samples": int(len(pick)), "runtime": "LiteRT (XNNPack)"}
    vcard = pixels_card(nhwc).replace(precision=mode, metrics=dict(card.metrics))
    vcard = vcard.replace(export={**vcard.export, "quantization": {"mode": mode, **settings}})
    path = staging / variant_filename(mode)
    path.write_bytes(embed_card_tflite(blob, vcard))
    return _judge_staged(mode, path, vcard, fp32_out, fp32, data, config, started=started, settings=settings,
                         ops={}, save=lambda final: path.write_bytes(embed_card_tflite(blob, final)))


def _accuracy_aware(fp32_path, path, card, fp32_out, fp32, data, config) -> Any:
    """``--accuracy-aware`` int8 (edgecnn.export.accuracy_aware), judged by the guard's own metric."""
    if not config.accuracy_aware:
        return None
    return accuracy_aware_for_export(fp32_path, path, card=card, quant=config.quant.for_task(card.task),
                                     calibration_images=data.calibration,
                                     test_images=data.test, test_labels=data.test_labels, fp32_outputs=fp32_out,
                                     fp32_accuracy=fp32.accuracy, max_drop_pp=config.max_accuracy_drop)


def _judge(out: list[np.ndarray], fp32_out: list[np.ndarray], acc: float | None, fp32_acc: float | None,
           card: ModelCard, data: ExportData, config: ExportConfig) -> tuple[Verdict | None, bool, str]:
    """The accuracy guard (:mod:`edgecnn.export.guard`): the task's loss against fp32 with its 95%
    interval on the images judged, held to the budget; the verdict, pass or fail, and its words."""
    if not all(np.isfinite(o).all() for o in out):
        return None, False, "NaN or infinite outputs"
    labels = data.test_labels if card.task == "classify" and acc is not None else None
    verdict = judge_variant(card.task, fp32_out, out, card, labels=labels, budget_pp=config.max_accuracy_drop,
                            min_sqnr_db=config.min_sqnr_db, policy=config.guard, seed=config.quant.seed)
    words = verdict.text()
    if labels is not None:
        words = f"accuracy {_fmt(acc)} vs fp32 {_fmt(fp32_acc)}: {words}"
    elif card.task == "classify":
        words += " (agreement, not accuracy: judged against fp32)"
    return verdict, verdict.passed, words


def _write_triton(config: ExportConfig, out_dir: Path, report: ExportReport, card: ModelCard) -> Path:
    from edgecnn.export.triton import write_triton_model

    for v in report.variants:
        if v.passed and v.file and v.file.endswith(".onnx"):  # Triton's onnxruntime backend
            suffix = "" if v.precision == "fp32" else "_" + v.precision.replace("-", "_")
            write_triton_model(config.triton_dir, out_dir / v.file, card, name=f"{card.name}{suffix}",
                               max_batch_size=config.triton_max_batch_size)
    return Path(config.triton_dir)
