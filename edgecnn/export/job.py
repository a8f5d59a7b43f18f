"""One export as an object: :class:`ExportJob` holds the source, its card, the options, the images,
the staging folder and the verified fp32 file, and its methods are the export's steps.

:meth:`ExportJob.run`: a locked staging folder in the output folder -> the fp32 file verified
against its source (parity at batch N and 1, the chance check) -> each variant made
(:mod:`edgecnn.export.staged`) and judged against fp32 (the accuracy guard,
:mod:`edgecnn.export.guard`) -> the files that passed moved into place -> Triton -> the report,
written last. The card changes only through :meth:`edgecnn.card.ModelCard.replace`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn import __version__
from edgecnn.card import ModelCard
from edgecnn.errors import AccuracyDropError, ArtifactError, ConfigError, DataError, EdgecnnError
from edgecnn.export import onnx as onnx_io
from edgecnn.export._staging import commit, staging_folder
from edgecnn.export.chance import chance_evidence, check_not_chance
from edgecnn.export.config import ExportConfig
from edgecnn.export.guard import Verdict, guard_hints, judge_variant
from edgecnn.export.images import SYNTHETIC_NOTE, ExportData, fp32_only_data, select_data
from edgecnn.export.report import REPORT_MARKDOWN, ExportReport, SelfContainedResult, VariantResult
from edgecnn.export.self_contained import make_self_contained, self_contained_name, why_not
from edgecnn.export.self_contained_check import agreement
from edgecnn.export.sources import ModelSource, load_source
from edgecnn.export.staged import Fp32Baseline, StagedVariant, stage_variant
from edgecnn.export.variants import FP32, VARIANTS, variant
from edgecnn.export.verify import (
    OnnxPredictor,
    Parity,
    accuracy,
    compare_outputs,
    ort_error,
    predict_outputs,
    task_agreement,
)
from edgecnn.presets import ModelOverrides, short_list
from edgecnn.runtime.core import take_images

log = logging.getLogger(__name__)

__all__ = ["ExportJob", "open_staged", "run_outputs"]


class ExportJob:
    """One export of a loaded source into ``out_dir``.

    Built by :meth:`prepare` (or directly, from a loaded source); :meth:`run` does the rest. What a
    step leaves for the next ones: ``staging`` (the staging folder), ``report`` (the report being
    filled in) and ``fp32`` (the verified fp32 file).

    Args:
        src: the loaded source.
        card: the export's fp32 card (export metadata included).
        config: the export's options.
        data: calibration and held-out images.
        out_dir: where the files go.
        started: ``time.perf_counter()`` when the export began (the fp32 row's seconds count from it).
        notes: lines for the report.
    """

    staging: Path
    report: ExportReport
    fp32: Fp32Baseline

    def __init__(self, *, src: ModelSource, card: ModelCard, config: ExportConfig, data: ExportData, out_dir: Path,
                 started: float, notes: Sequence[str] = ()) -> None:
        self.src, self.card, self.config, self.data = src, card, config, data
        self.out_dir, self.started, self.notes = out_dir, started, list(notes)

    @classmethod
    def prepare(cls, source: str | Path, *, out_dir: str | Path | None, config: ExportConfig,
                calibration_data: str | Path | None, overrides: ModelOverrides | None) -> ExportJob:
        """Load the source and choose the images: everything before the first file is written.

        Raises:
            ArtifactError: a missing, corrupt or unconvertible source, or a card that cannot be built.
            ConfigError: a variant that cannot be made from this kind of source.
            DataError: unusable calibration or evaluation data.
        """
        started = time.perf_counter()
        src = load_source(source, overrides=overrides, opset=config.opset, layout=config.layout, tta=config.tta)
        for mode in config.quantize:
            variant(mode).check_source(src.kind)
        if config.self_contained and (refused := why_not(src.card)):
            raise ConfigError(refused)
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
            notes.append(f"Test-time augmentation ({config.tta}) is inside the graph: each image runs through the "
                         "network twice, so it costs 2x the FLOPs and about 2x the latency of the plain export.")
        if card.class_names != src.card.class_names:
            names = short_list(list(card.class_names))
            notes.append(f"Labels taken from the class folders of {calibration_data}: {names}.")
        return cls(src=src, card=_export_card(card, src, tta=config.tta), config=config, data=data,
                   out_dir=Path(out_dir) if out_dir else src.default_out, started=started, notes=notes)

    # ------------------------------------------------------------------------------ the run

    def run(self) -> ExportReport:
        """Verify, make, judge and write everything; returns the report (also written to ``out_dir``).

        Raises:
            DataError: held-out images that do not fit the model.
            ArtifactError: fp32 parity failure, or fp32 accuracy at chance with guessed preprocessing.
            ConfigError: another export is writing the folder.
            AccuracyDropError: a variant failed the accuracy guard (the passing files were written).
        """
        self._check_data()
        with staging_folder(self.out_dir) as staging:
            self.staging = staging
            self.report = self._new_report()
            self._verify_fp32_or_fail()
            self._make_variants()
            if self.config.self_contained:
                self._make_self_contained()
            return self._finish()

    def _check_data(self) -> None:
        card, data = self.card, self.data
        h, w = card.input_size
        if data.test.ndim != 4 or data.test.shape[1:] != (h, w, card.channels) or len(data.test) < 2:
            raise DataError(f"Held-out images must be (N >= 2, {h}, {w}, {card.channels}), got {data.test.shape}.")
        if data.test_labels is not None and len(data.test_labels) and int(data.test_labels.max()) >= card.num_classes:
            raise DataError(f"Test labels go up to {int(data.test_labels.max())} but the model has "
                            f"{card.num_classes} classes ({', '.join(card.class_names[:5])}...): the data does not "
                            "belong to this model.")

    def _new_report(self) -> ExportReport:
        card, data, config = self.card, self.data, self.config
        notes = list(self.notes)
        if data.shared:
            notes.append(f"No labels: calibration and evaluation share the same {len(data.test)} images, and each "
                         "variant is judged by its agreement with fp32, not by accuracy.")
        if "source_opset" in card.export:
            notes.append(f"Converted from opset {card.export['source_opset']} to {card.export['opset']}.")
        return ExportReport(source=str(self.src.path), source_sha256=card.export["source_sha256"],
                            out_dir=str(self.out_dir), card_name=card.name, layout=card.layout,
                            opset=card.export.get("opset"), parity={}, variants=[],
                            test_set={"description": data.description, "images": int(len(data.test)),
                                      "labeled": data.test_labels is not None,
                                      "shared_with_calibration": data.shared},
                            max_accuracy_drop_pp=config.max_accuracy_drop if config.quantize else None,
                            versions=card.versions, created=card.export["created"], source_kind=self.src.kind,
                            task=card.task, notes=notes, assumed=self.src.assumed, guard=config.guard)

    def _add(self, result: VariantResult) -> None:
        """One more judged variant in the report."""
        self.report = replace(self.report, variants=[*self.report.variants, result])

    def _fail(self, errors: list[str]) -> None:
        """Write the report of a failed export (the caller raises)."""
        self.report = replace(self.report, status="failed", errors=errors)
        self.report.save(self.out_dir)

    # ---------------------------------------------------------------------------------- fp32

    def _verify_fp32_or_fail(self) -> None:
        """The fp32 file verified (the onnxslim-simplified graph, else the source's own); on failure
        no model file of this or an earlier export stays in the folder, and the report says why.

        Raises:
            ArtifactError: when neither graph passes.
        """
        proto = unsimplified = self.src.proto
        if self.config.simplify:
            proto, simplified = onnx_io.simplify(proto)
            self.report = replace(self.report, simplify=simplified)
        try:
            try:
                self.fp32 = self.verify_fp32(proto)
            except ArtifactError as err:
                if proto is unsimplified:
                    raise
                # onnxslim trusts the declared shapes; a file whose declared output shape is wrong (ddddocr's
                # [1, seqlen] for a [T, 1, C] output) comes out computing something else: keep the source's graph
                log.warning("The onnxslim-simplified graph failed verification (%s); exporting the unsimplified one.",
                            err)
                self.report = replace(self.report, simplify={
                    "applied": False, "nodes_before": self.report.simplify.get("nodes_before"),
                    "reason": f"the simplified graph failed verification: {err}"[:300]})
                self.fp32 = self.verify_fp32(unsimplified)
        except ArtifactError as err:
            for row in (FP32, *VARIANTS.values()):
                (self.out_dir / row.filename).unlink(missing_ok=True)  # nothing stale may pass for this export's
            self._fail([str(err)])
            raise

    def verify_fp32(self, proto: Any) -> Fp32Baseline:
        """Stage ``proto`` as the fp32 file and check it: parity with the source on every output at
        batch N and batch 1, then (guessed preprocessing, labelled data) the chance check. The card
        gains the outputs' image axis when it was found at run time (a time-major sequence output),
        the parity numbers and the test metrics.

        Raises:
            ArtifactError: for a parity failure or accuracy at chance.
        """
        card = self.card
        onnx_io.embed_card(proto, card)
        path = onnx_io.save_onnx(proto, self.staging / FP32.filename)
        predictor = open_staged(path, card)
        parity, card = self._check_parity(predictor, card)
        outputs = run_outputs(predictor.outputs, self.data.test)
        acc = self._accuracy(outputs, card)
        if self.config.check_chance and not self.src.card_from_file and acc is not None and card.num_classes >= 2:
            evidence = chance_evidence(lambda x: run_outputs(predictor.outputs, x), outputs, self.data)
            check_not_chance(*evidence, card)
        card = card.replace(export={**card.export, "verification": self.report.parity,
                                    "simplified": bool(self.report.simplify.get("applied"))},
                            metrics={**card.metrics, **_test_metrics(acc, len(self.data.test))})
        onnx_io.embed_card(proto, card)
        onnx_io.save_onnx(proto, path)
        result = VariantResult(precision=FP32.name, file=FP32.filename, size_bytes=path.stat().st_size, accuracy=acc,
                               accuracy_delta_pp=None if acc is None else 0.0, top1_agreement=parity.top1_agreement,
                               max_abs_diff=parity.max_abs_diff, mean_abs_diff=parity.mean_abs_diff,
                               images=parity.images, seconds=round(time.perf_counter() - self.started, 2),
                               passed=True, settings={"opset": card.export.get("opset")},
                               ops=onnx_io.op_type_counts(proto),
                               guard=f"parity with the source ({_parity_words(parity)})")
        self._add(result)  # the staged file moves in with the others (commit)
        return Fp32Baseline(path=path, card=card, outputs=outputs, result=result)

    def _check_parity(self, predictor: OnnxPredictor, card: ModelCard) -> tuple[Parity, ModelCard]:
        """Parity with the source on the first ``parity_images`` held-out images, into the report.

        Raises:
            ArtifactError: when top-1 answers differ or the largest difference exceeds ``atol``.
        """
        images = self.data.test[: self.config.parity_images]
        ref = run_outputs(self.src.reference, images)
        got = run_outputs(predictor.outputs, images)
        axes = predictor.batch_axes(got, len(images))
        parity = compare_outputs(ref, got, task=card.task, images=len(images))
        found = sorted({a for a in axes if a})
        if card.batch_axis is None and len(found) == 1:  # recorded, so every later reader knows it
            card = card.replace(batch_axis=found[0])
        batch1 = compare_outputs([r if a is None else take_images(r, slice(0, 1), a) for r, a in zip(ref, axes)],
                                 predictor.outputs(images[:1]), task=card.task, images=1)
        atol = self.config.atol
        self.report = replace(self.report, parity={**parity.to_dict(), "batch1_max_abs_diff": batch1.max_abs_diff,
                                                   "batch_sizes": [1, min(256, len(images))], "atol": atol})
        problems = []
        if parity.top1_agreement is not None and parity.top1_agreement < 1.0:
            problems.append(f"top-1 agreement {100 * parity.top1_agreement:.2f}% (must be 100%)")
        worst = max(parity.max_rel_diff, batch1.max_rel_diff)
        if worst > atol:
            problems.append(f"max |diff| {max(parity.max_abs_diff, batch1.max_abs_diff):.2e} ({worst:.2e} relative "
                            f"to the output's scale) > atol {atol:g}")
        if problems:
            weights = card.export.get("source_weights")
            hint = (f" The source's weights are already quantized ({weights}): it computes differently from the "
                    f"float ONNX by design; pass --atol above the relative difference to accept that, or export the "
                    f"float model." if weights else "")
            raise ArtifactError(f"The fp32 ONNX model does not match its source on {parity.images} held-out images: "
                                + "; ".join(problems) + "." + hint + " No model was written.")
        return parity, card

    def _accuracy(self, outputs: list[np.ndarray], card: ModelCard) -> float | None:
        """Top-1 accuracy on the held-out images: classifiers with labelled images only."""
        labels = self.data.test_labels
        return accuracy(outputs[0], labels) if labels is not None and card.task == "classify" else None

    # ------------------------------------------------------------------------------ variants

    def _make_variants(self) -> None:
        """Make and judge each variant in turn; a variant that cannot be made fails the export
        (the files judged so far are kept, with the report saying why)."""
        for mode in self.config.quantize:
            try:
                staged = stage_variant(mode, base=self.fp32, src=self.src, data=self.data, config=self.config,
                                       staging=self.staging)
                result = self.judge(staged)
            except EdgecnnError as err:  # bad calibration data, unknown excluded node...: report, then fail
                self.report = replace(self.report, variants=commit(self.out_dir, self.staging, self.report.variants))
                self._fail([f"{mode}: {err}"])
                raise
            self._add(result)

    def judge(self, staged: StagedVariant) -> VariantResult:
        """Run the staged variant on the held-out images, judge it against fp32 (the guard), save
        the file with the numbers in its card, and report it."""
        base, vcard = self.fp32, staged.card
        out = run_outputs(open_staged(staged.path, vcard).outputs, self.data.test)
        par = compare_outputs(base.outputs, out, task=vcard.task)
        metric = task_agreement(vcard.task, base.outputs, out, vcard)
        acc = self._accuracy(out, vcard)
        delta = None if acc is None or base.result.accuracy is None else round(100 * (acc - base.result.accuracy), 4)
        verdict, passed, guard = self._guard(out, acc, vcard)
        metrics = {**vcard.metrics, **_test_metrics(acc, len(self.data.test))}
        if delta is not None:
            metrics["accuracy_delta_pp"] = delta
        metrics[f"{metric.name}_vs_fp32"] = round(metric.value, 6)
        if verdict is not None:
            metrics["guard"] = {"outcome": verdict.outcome, "policy": verdict.policy, "images": verdict.images}
        staged.save(vcard.replace(metrics=metrics))
        guard = f"{guard}; {staged.note}" if staged.note else guard
        if staged.refused:  # e.g. every node that mattered stayed float: nothing to gain over fp32
            passed, guard = False, staged.refused
        return VariantResult(precision=staged.mode, file=staged.path.name, size_bytes=staged.path.stat().st_size,
                             accuracy=acc, accuracy_delta_pp=delta, top1_agreement=par.top1_agreement,
                             max_abs_diff=par.max_abs_diff, mean_abs_diff=par.mean_abs_diff, images=par.images,
                             seconds=round(time.perf_counter() - staged.started, 2), passed=passed,
                             settings=staged.settings, ops=staged.ops, metric=metric.name,
                             metric_value=round(metric.value, 6), guard=guard,
                             accuracy_aware=staged.accuracy_aware,
                             verdict=None if verdict is None else verdict.to_dict())

    def _guard(self, out: list[np.ndarray], acc: float | None, card: ModelCard) -> tuple[Verdict | None, bool, str]:
        """The accuracy guard (:mod:`edgecnn.export.guard`): the task's loss against fp32 with its 95%
        interval on the images judged, held to the budget; the verdict, pass or fail, and its words."""
        if not all(np.isfinite(o).all() for o in out):
            return None, False, "NaN or infinite outputs"
        config = self.config
        labels = self.data.test_labels if card.task == "classify" and acc is not None else None
        verdict = judge_variant(card.task, self.fp32.outputs, out, card, labels=labels,
                                budget_pp=config.max_accuracy_drop, min_sqnr_db=config.min_sqnr_db,
                                policy=config.guard, seed=config.quant.seed)
        words = verdict.text()
        if labels is not None:
            words = f"accuracy {_pct(acc)} vs fp32 {_pct(self.fp32.result.accuracy)}: {words}"
        elif card.task == "classify":
            words += " (agreement, not accuracy: judged against fp32)"
        return verdict, verdict.passed, words

    def _make_self_contained(self) -> None:
        """``--self-contained``: each ONNX file that passed gets its self-contained twin
        (:mod:`edgecnn.export.self_contained`), checked against it on the held-out images
        (:mod:`edgecnn.export.self_contained_check`)."""
        from edgecnn.runtime.loading import load_model

        for v in self.report.variants:
            if not (v.passed and v.file and v.file.endswith(".onnx")):
                continue
            started = time.perf_counter()
            staged = self.staging / v.file
            proto = onnx_io.load_onnx(staged, check=False)
            made, _ = make_self_contained(proto, onnx_io.read_card(proto) or self.fp32.card)
            path = onnx_io.save_onnx(made, self.staging / self_contained_name(v.file))
            check = agreement(load_model(staged), load_model(path), self.data.test)
            result = SelfContainedResult(precision=v.precision, file=path.name, size_bytes=path.stat().st_size,
                                         images=len(self.data.test), metric=check.metric, value=round(check.value, 6),
                                         passed=check.passed, seconds=round(time.perf_counter() - started, 2),
                                         detail=check.detail)
            self.report = replace(self.report, self_contained=[*self.report.self_contained, result])

    # ---------------------------------------------------------------------------- the end

    def _finish(self) -> ExportReport:
        """Move the files that passed into place, write Triton's repository and the report.

        Raises:
            AccuracyDropError: when a variant failed the guard (after everything was written).
        """
        out_dir = self.out_dir
        twins = self.report.self_contained
        self.report = replace(self.report, variants=commit(out_dir, self.staging, self.report.variants,
                                                           also=[t.file for t in twins if t.passed and t.file]),
                              self_contained=[t if t.passed else replace(t, file=None) for t in twins])
        if self.config.triton_dir:
            self.report = replace(self.report, triton=str(self._write_triton()))
        failed = [v for v in self.report.variants if not v.passed]
        differ = [f"{t.precision} self-contained: {t.metric.replace('_', ' ')} {t.value:.4f} ({t.detail})"
                  for t in twins if not t.passed]
        if failed or differ:
            self.report = replace(self.report, status="failed",
                                  errors=[f"{v.precision}: {v.guard}" for v in failed] + differ)
        report = self.report
        report.save(out_dir)
        if differ and not failed:
            raise ArtifactError("A self-contained file does not answer as its variant run by the runtime: "
                                + "; ".join(differ) + ". It was not written; the other files were. Report: "
                                + f"{out_dir / REPORT_MARKDOWN}.")
        if failed:
            quant = self.config.quant
            raise AccuracyDropError("Quantized variant failed the accuracy guard: " + "; ".join(report.errors)
                                    + f". Report: {out_dir / REPORT_MARKDOWN}; passing files were written. "
                                    + guard_hints(quant, accuracy_aware=self.config.accuracy_aware,
                                                  int8_failed=any(v.precision == "int8" for v in failed),
                                                  task=self.card.task))
        return report

    def _write_triton(self) -> Path:
        from edgecnn.export.triton import write_triton_model

        triton_dir = Path(self.config.triton_dir or "")
        card = self.fp32.card
        for v in self.report.variants:
            if v.passed and v.file and variant(v.precision).runtime == "onnxruntime":  # Triton's onnxruntime backend
                suffix = "" if v.precision == FP32.name else "_" + v.precision.replace("-", "_")
                write_triton_model(triton_dir, self.out_dir / v.file, card, name=f"{card.name}{suffix}",
                                   max_batch_size=self.config.triton_max_batch_size)
        return triton_dir


# ------------------------------------------------------------------------ running a staged file


def open_staged(path: Path, card: ModelCard) -> OnnxPredictor:
    """The staged file in onnxruntime; if it cannot load, the one-line error carries onnxruntime's cause.

    Raises:
        ArtifactError: when the file does not load.
    """
    try:
        return OnnxPredictor(path, card)
    except ArtifactError as err:
        if err.__cause__ is None:
            raise
        raise ArtifactError(f"onnxruntime cannot load the {card.precision} model (opset "
                            f"{card.export.get('opset')}): {ort_error(err.__cause__)}.") from err


def run_outputs(fn: Callable[[np.ndarray], list[np.ndarray]], images: np.ndarray) -> list[np.ndarray]:
    """Every output of ``fn`` on ``images``, in batches of 256.

    Raises:
        ArtifactError: when the model fails at run time (onnxruntime, LiteRT or Keras), in one line.
    """
    try:
        return predict_outputs(fn, images, batch_size=256)
    except EdgecnnError:
        raise
    except Exception as err:  # onnxruntime, LiteRT or Keras failing at run time
        raise ArtifactError(f"Running the model on {len(images)} images failed ({ort_error(err)}). "
                            "No model was written.") from err


# --------------------------------------------------------------------------------------- helpers


def _export_card(card: ModelCard, src: ModelSource, *, tta: str) -> ModelCard:
    """``card`` as the fp32 export's: precision fp32, the versions that made it, where it came from."""
    export = {"opset": onnx_io.opset_of(src.proto), "source": str(src.path), "source_kind": src.kind,
              "source_sha256": onnx_io.sha256_file(src.file), "source_run": str(src.run_dir) if src.run_dir else None,
              "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    if src.source_opset is not None and src.source_opset != export["opset"]:
        export["source_opset"] = src.source_opset
    if src.weights:
        export["source_weights"] = src.weights
    if tta != "none":
        export["tta"] = tta
    return card.replace(precision="fp32", versions={**card.versions, **_versions(with_tf=src.uses_tensorflow)},
                        export=export)


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


def _parity_words(parity: Parity) -> str:
    """``max |diff| 1.2e-07 over 2 outputs``: how the fp32 file matched its source."""
    outs = f" over {parity.outputs} outputs" if parity.outputs > 1 else ""
    return f"max |diff| {parity.max_abs_diff:.2e}{outs}"


def _test_metrics(acc: float | None, n: int) -> dict[str, Any]:
    return {"onnx_test_images": int(n), **({"onnx_test_accuracy": round(acc, 6)} if acc is not None else {})}


def _pct(acc: float | None) -> str:
    return "-" if acc is None else f"{100 * acc:.2f}%"
