"""Each variant's file, made in the staging folder from the verified fp32 file and waiting for the
accuracy guard: one maker per runtime of the variant table (:mod:`edgecnn.export.variants`).

- ``onnxruntime`` rows (int8, int8-dynamic, fp16): :func:`edgecnn.export.quantize.quantize_model`
  on the fp32 ONNX file; static int8 from a QAT model (``ExportConfig.qat``) or through the
  accuracy-aware search (``--accuracy-aware``) instead when asked.
- ``litert`` rows (litert-int8): the source Keras model through the TFLite converter.

The export job (:mod:`edgecnn.export.job`) judges what comes back and writes the final card.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecnn.card import ModelCard
from edgecnn.errors import ArtifactError, EdgecnnError
from edgecnn.export import onnx as onnx_io
from edgecnn.export.accuracy_aware import AccuracyAwareResult, AccuracyAwareSummary, accuracy_aware_for_export
from edgecnn.export.config import ExportConfig
from edgecnn.export.images import ExportData
from edgecnn.export.quantize import quantize_model
from edgecnn.export.report import VariantResult
from edgecnn.export.sources import ModelSource
from edgecnn.export.variants import variant
from edgecnn.export.verify import ort_error

if TYPE_CHECKING:
    from edgecnn.export.qat import QATModel

log = logging.getLogger(__name__)

__all__ = ["Fp32Baseline", "StagedVariant", "stage_variant"]


@dataclass(frozen=True, kw_only=True)
class Fp32Baseline:
    """The verified fp32 file in the staging folder: what every variant is made from and judged against.

    Attributes:
        path: the staged ``model.onnx``.
        card: its card (parity and test metrics included).
        outputs: its outputs on the held-out test images.
        result: its row of the report.
    """

    path: Path
    card: ModelCard
    outputs: list[np.ndarray]
    result: VariantResult


@dataclass(frozen=True, kw_only=True)
class StagedVariant:
    """A variant's file in the staging folder, before the guard judged it.

    Attributes:
        mode: the variant's name (``-q``).
        path: the staged file.
        card: its card so far (precision and quantization settings; the guard adds the metrics).
        save: writes the file again with its final card.
        settings: the quantization settings, for the report.
        ops: its op-type counts (empty for a non-ONNX file).
        started: ``time.perf_counter()`` when making it began.
        note: a line the guard's words end with (the accuracy-aware search's outcome).
        accuracy_aware: the accuracy-aware search's summary for the report, when it ran.
        refused: why the variant fails whatever the guard says (accuracy-aware int8 with no gain over fp32).
    """

    mode: str
    path: Path
    card: ModelCard
    save: Callable[[ModelCard], None]
    settings: dict[str, Any]
    ops: dict[str, int]
    started: float
    note: str | None = None
    accuracy_aware: AccuracyAwareSummary | None = None
    refused: str | None = None


def stage_variant(mode: str, *, base: Fp32Baseline, src: ModelSource, data: ExportData, config: ExportConfig,
                  staging: Path) -> StagedVariant:
    """The ``mode`` variant's file in ``staging``, made by the maker of its runtime.

    Raises:
        EdgecnnError: when it cannot be made (bad calibration data, an unknown excluded node, a
            quantizer or converter failure).
    """
    make = _MAKERS[variant(mode).runtime]
    return make(mode, base=base, src=src, data=data, config=config, staging=staging)


def _stage_onnx(mode: str, *, base: Fp32Baseline, src: ModelSource, data: ExportData, config: ExportConfig,
                staging: Path) -> StagedVariant:
    """An onnxruntime.quantization variant of the fp32 file (static int8 from QAT or the
    accuracy-aware search when asked)."""
    started = time.perf_counter()
    card, path = base.card, staging / variant(mode).filename
    calibrated = variant(mode).calibrated  # static int8: the one ONNX mode that QAT and the search replace
    qat = config.qat if calibrated else None
    aa = _accuracy_aware(base, path, data, config) if calibrated and not qat else None
    if aa:
        proto = aa.proto
    elif qat:
        proto = qat.to_onnx(base.path, card, path)
    else:
        proto = _quantize(mode, base.path, path, card, data, config)
    settings = {**_describe(mode, card, config, qat), "opset": onnx_io.opset_of(proto),
                **_fixed_input(mode, base.path, proto, card)}
    if aa:  # the card says which nodes stayed float
        settings.update(exclude_nodes=[*settings["exclude_nodes"], *aa.excluded_nodes], accuracy_aware=True)
    vcard = card.replace(precision=mode, metrics=dict(card.metrics),
                         export={**card.export, "opset": settings["opset"], "quantization": {"mode": mode, **settings}})

    def save(final: ModelCard) -> None:
        onnx_io.embed_card(proto, final)
        onnx_io.save_onnx(proto, path)

    return StagedVariant(mode=mode, path=path, card=vcard, save=save, settings=settings,
                         ops=onnx_io.op_type_counts(proto), started=started, note=aa.message if aa else None,
                         accuracy_aware=aa.summary() if aa else None,
                         refused=aa.message if aa and aa.passed and aa.no_gain else None)


def _describe(mode: str, card: ModelCard, config: ExportConfig, qat: QATModel | None) -> dict[str, Any]:
    """The quantization settings of ``mode`` for the report and the card."""
    return qat.describe(config.quant) if qat else config.quant.for_mode(mode, task=card.task).describe()


def _quantize(mode: str, fp32_path: Path, path: Path, card: ModelCard, data: ExportData, config: ExportConfig) -> Any:
    try:
        return quantize_model(fp32_path, path, card=card, config=config.quant.for_mode(mode, task=card.task),
                              calibration_images=data.calibration)
    except EdgecnnError:
        raise
    except Exception as err:  # onnxruntime.quantization raises whatever its passes raise
        raise ArtifactError(f"onnxruntime could not quantize the model to {mode} ({ort_error(err)}).") from err


def _accuracy_aware(base: Fp32Baseline, path: Path, data: ExportData,
                    config: ExportConfig) -> AccuracyAwareResult | None:
    """``--accuracy-aware`` int8 (edgecnn.export.accuracy_aware), judged by the guard's own metric."""
    if not config.accuracy_aware:
        return None
    card = base.card
    return accuracy_aware_for_export(base.path, path, card=card, quant=config.quant.static_int8(task=card.task),
                                     calibration_images=data.calibration,
                                     test_images=data.test, test_labels=data.test_labels, fp32_outputs=base.outputs,
                                     fp32_accuracy=base.result.accuracy, max_drop_pp=config.max_accuracy_drop)


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


def _stage_litert(mode: str, *, base: Fp32Baseline, src: ModelSource, data: ExportData, config: ExportConfig,
                  staging: Path) -> StagedVariant:
    """``model.int8.tflite``: the source Keras model through the TFLite converter, int8 weights and
    activations calibrated on the images the ONNX int8 variant uses, the card's normalization inside
    the model so that the int8 input is the pixel itself (``pixel - 128``: the runtime's whole
    preprocessing is one xor), float32 output, the card in its metadata; judged by the same guard
    against the fp32 ONNX outputs."""
    from edgecnn.export.litert import convert_litert_int8, embed_card_tflite, pixels_card
    from edgecnn.export.quantize import check_calibration_images
    from edgecnn.export.sources import load_float32_keras
    from edgecnn.export.tta import tta_model

    started = time.perf_counter()
    card, quant = base.card, config.quant
    images = check_calibration_images(data.calibration, card, quant.calibration_samples)
    pick = np.sort(np.random.default_rng(quant.seed).permutation(len(images))[:quant.calibration_samples])
    nhwc = card.replace(layout="nhwc")  # the Keras model's own layout
    model = tta_model(load_float32_keras(src.file), config.tta)  # the same graph as the ONNX variants
    blob = convert_litert_int8(model, nhwc, images[pick], source=str(src.path), float_output=True,
                               pixels_in=True)
    settings = {"converter": "tf.lite.TFLiteConverter", "optimizations": "DEFAULT", "ops": "TFLITE_BUILTINS_INT8",
                "input": "int8 pixels (normalization inside the model)", "output": "float32",
                "calibration_samples": int(len(pick)), "runtime": "LiteRT (XNNPack)"}
    vcard = pixels_card(nhwc).replace(precision=mode, metrics=dict(card.metrics))
    vcard = vcard.replace(export={**vcard.export, "quantization": {"mode": mode, **settings}})
    path = staging / variant(mode).filename

    def save(final: ModelCard) -> None:
        path.write_bytes(embed_card_tflite(blob, final))

    save(vcard)
    return StagedVariant(mode=mode, path=path, card=vcard, save=save, settings=settings, ops={}, started=started)


# The maker of each runtime of the variant table.
_MAKERS: dict[str, Callable[..., StagedVariant]] = {"onnxruntime": _stage_onnx, "litert": _stage_litert}
