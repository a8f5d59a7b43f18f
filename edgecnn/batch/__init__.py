"""Batch inference over many images into Parquet (``edgecnn batch``): the local engine, and Ray Data.

``run_batch(model, source, BatchConfig(out=...))`` answers every input of a folder, glob, list or
``.npz`` into resumable Parquet shards (:mod:`edgecnn.batch.job`); ``engine="ray"`` runs the same job
as a Ray Data pipeline, and :func:`ray_predictor` gives users who already hold a Ray Dataset the
callable class to ``map_batches`` with. Names load on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BatchConfig", "BatchSummary", "run_batch", "list_inputs", "ray_predictor"]

_HOMES = {"BatchConfig": "edgecnn.batch.job", "BatchSummary": "edgecnn.batch.job", "run_batch": "edgecnn.batch.run",
          "list_inputs": "edgecnn.batch.inputs", "ray_predictor": "edgecnn.batch.ray_engine"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
