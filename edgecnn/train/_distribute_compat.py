"""Workarounds for Keras 3's ``model.fit`` under ``tf.distribute.MultiWorkerMirroredStrategy``.

Keras 3 (3.15.1 with TensorFlow 2.21 here) runs ``fit`` under ``MirroredStrategy`` but fails
under ``MultiWorkerMirroredStrategy`` with more than one worker, twice:

1. ``TensorFlowTrainer._maybe_symbolic_build`` reduces the first (distributed) input batch with
   ``strategy.reduce("MEAN", (x, y))`` to get its shapes; the collective strategy cannot reduce a
   tuple across workers: ``ValueError: Attempt to convert a value (PerReplica:{...})``.
2. ``reduce_per_replica`` reduces each step's metric logs (scalars) with
   ``strategy.reduce("MEAN", v, axis=0)``: ``Invalid reduction dimension 0 for input with 0
   dimensions``.

Upstream: https://github.com/keras-team/keras/issues/20585 and
https://github.com/tensorflow/tensorflow/issues/72388 (TensorFlow's own multi-worker Keras
tutorial fails the same way since TF 2.16). The fixes: (1) take the shapes from this worker's
local batch, which has the same spec as every replica's, and (2) average the scalar logs over
the workers with ``axis=None``, which is what ``MirroredStrategy`` computes locally.

Both patches are applied only inside :func:`multi_worker_fit_fixes`, for a multi-worker run, and
restored afterwards. Remove this module when ``tests/train/test_distribute.py`` passes without
it (a Keras release that closes keras-team/keras#20585).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

__all__ = ["multi_worker_fit_fixes"]


@contextlib.contextmanager
def multi_worker_fit_fixes() -> Iterator[None]:
    """Patch Keras's TensorFlow trainer for ``MultiWorkerMirroredStrategy`` inside the block."""
    trainer: Any = importlib.import_module("keras.src.backend.tensorflow.trainer")  # patched: a module as Any
    tf = importlib.import_module("tensorflow")
    tree = importlib.import_module("keras").tree
    original_reduce = trainer.reduce_per_replica
    original_build = trainer.TensorFlowTrainer._maybe_symbolic_build

    def multi_worker(strategy: Any) -> bool:
        return trainer._collective_all_reduce_multi_worker(strategy)

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy, reduction)

    def maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> Any:
        strategy = self._distribute_strategy
        if iterator is None or strategy is None or not multi_worker(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            batch = next(it)
            local = tree.map_structure(
                lambda v: strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues) else v, batch)
            with strategy.scope():
                self._symbolic_build(data_batch=local)
            break
        return None

    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    try:
        yield
    finally:
        trainer.reduce_per_replica = original_reduce
        trainer.TensorFlowTrainer._maybe_symbolic_build = original_build
