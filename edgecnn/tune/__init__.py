"""Deploy stage: ``edgecnn tune EXPORT_DIR`` measures every variant x backend x threads x batch size here.

An export directory holds the variants ``edgecnn export`` verified (fp32, int8, fp16, ...). The
tuner runs each of them on each backend that can (onnxruntime with and without IO binding;
OpenVINO in f32, and in bf16 for the fp32 and int8 files where the CPU has it; LiteRT for the
``model.int8.tflite`` of ``-q litert-int8``), at each thread count and batch size asked for, and
joins every configuration with

- its quality, measured on the same held-out images for all of them: accuracy against the
  labels and the drop in percentage points from fp32 on onnxruntime (without labels, or for
  detection and segmentation, the task's agreement with fp32: top-1 agreement, mAP@0.5, mIoU,
  and for raw models the outputs' cosine similarity;
  see :func:`edgecnn.export.verify.task_agreement`);
- its size on disk;
- its latency (p50 of the whole per-call work: input in, outputs out) and throughput.

Then it keeps the configurations within the accuracy budget, re-measures the fastest few and
each backend's fastest interleaved (one noisy first pass must not decide), and writes ``deploy.json``
(:mod:`edgecnn.runtime.deploy`) and ``tune_report.json``. The Pareto front (latency, accuracy
drop, size) is in the report and the table.

A stage on top of the runtime: it reads the export directory's artifacts (``export_report.json``
through :class:`edgecnn.export.report.ExportReport`) and judges with the export's own metrics
(:mod:`edgecnn.export.verify`); it never imports training, serving or TensorFlow. The modules:
:mod:`~edgecnn.tune.config` (the options, nothing heavy: the CLI builds ``--help`` from it),
:mod:`~edgecnn.tune.candidates`, :mod:`~edgecnn.tune.quality`, :mod:`~edgecnn.tune.measure`,
:mod:`~edgecnn.tune.report` and :mod:`~edgecnn.tune.tuner` (:func:`tune`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgecnn.tune.config import OBJECTIVES, TuneConfig, default_threads

if TYPE_CHECKING:
    from edgecnn.tune.candidates import Candidate
    from edgecnn.tune.measure import Cell, finalist_cells
    from edgecnn.tune.report import TuneReport
    from edgecnn.tune.tuner import tune

__all__ = ["OBJECTIVES", "TuneConfig", "default_threads", "tune", "TuneReport", "Candidate", "Cell",
           "finalist_cells"]

# The measuring modules import numpy and the runtime: loaded on first use, so that importing the
# options (the CLI's --help) stays cheap.
_LAZY = {"tune": "tuner", "TuneReport": "report", "Candidate": "candidates", "Cell": "measure",
         "finalist_cells": "measure"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"edgecnn.tune.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'edgecnn.tune' has no attribute {name!r}")
