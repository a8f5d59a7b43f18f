"""``edgecnn export``: any model source -> verified fp32 ONNX + quantized variants + report.

Sources (:mod:`edgecnn.export.sources`): an edgecnn run directory, a ``.keras``/``.h5`` file, a
TensorFlow SavedModel, a ``.tflite`` or an ``.onnx`` file. The export itself is an
:class:`edgecnn.export.job.ExportJob`: every file is written to a staging folder inside the output
folder and moved into place only after it passed verification, so an interrupted or failed export
leaves no ``.onnx`` that looks valid (and no empty folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecnn.card import ModelCard
from edgecnn.export.config import ExportConfig
from edgecnn.export.images import select_data
from edgecnn.export.job import ExportJob
from edgecnn.export.report import ExportReport
from edgecnn.presets import ModelOverrides

__all__ = ["ExportConfig", "export_model", "export_run", "export_onnx_file", "load_test_data"]


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
        ConfigError: a variant the source cannot make, or another export writing ``out_dir``.
        DataError: unusable calibration/evaluation data.
        AccuracyDropError: a quantized variant lost more than ``config.max_accuracy_drop``.
    """
    job = ExportJob.prepare(source, out_dir=out_dir, config=config or ExportConfig(),
                            calibration_data=calibration_data, overrides=overrides)
    return job.run()


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
