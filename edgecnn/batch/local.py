"""The local engine: images decoded in worker threads, answered in batches by the runtime core.

Decoding threads fit chunks of ``batch_size`` images with the runtime's one loader, a bounded
number of chunks ahead, so memory stays flat however many images there are; the calling thread
runs each chunk through
:meth:`~edgecnn.runtime.core.InferenceModel.run_pixels` and the task head, and writes each shard
when its last chunk is answered (:meth:`edgecnn.batch.job.Plan.write`).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from edgecnn.batch.inputs import Decoder
from edgecnn.batch.job import Plan, Progress
from edgecnn.batch.rows import error_row, result_row
from edgecnn.runtime.core import InferenceModel

__all__ = ["run_local", "answer_chunk"]

Fitted = list[tuple[np.ndarray | None, Any, str | None]]


def run_local(model: InferenceModel, plan: Plan, progress: Progress) -> tuple[int, int, list[str]]:
    """Answer every shard still to do; returns (rows written, error rows, notes)."""
    decoder = Decoder.of(model)
    size = plan.config.batch_size
    chunks = [(k, list(plan.names(k)[i:i + size])) for k in plan.todo for i in range(0, len(plan.names(k)), size)]
    rows: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    written = errors = 0
    with _decoded(decoder, plan, chunks) as results:
        for (k, names), fitted in zip(chunks, results):
            answered = answer_chunk(model, names, fitted, columns=plan.model, params=plan.config.params())
            errors += sum(r["error"] is not None for r in answered)
            rows[k] += answered
            progress(len(names))
            if len(rows[k]) == len(plan.names(k)):
                plan.write(k, rows.pop(k))
                written += len(plan.names(k))
    return written, errors, []


@contextlib.contextmanager
def _decoded(decoder: Decoder, plan: Plan, chunks: list[tuple[int, list[str]]]) -> Iterator[Iterator[Fitted]]:
    """The fitted images of each chunk, in order: from the .npz array, in this thread (``workers``
    0), or from ``workers`` decoding threads at most ``2 x workers + 1`` chunks ahead.

    Threads, not processes: Pillow decodes and resizes without the GIL, and a thread hands its pixels
    over without pickling them. Measured on 2 cores (docs/benchmarks.md): the CIFAR-10 CNN at 3,450 /
    3,830 images/s with 1 / 2 threads against 2,310 / 3,020 with spawned processes; MobileNetV2 154
    against 116. Forked processes were faster for the CNN but deadlock: a child that frees an
    onnxruntime session it inherited waits forever on the parent's thread pool.
    """
    array, workers = plan.inputs.array, plan.config.workers
    if array is not None or workers == 0:
        yield (_fit_here(decoder, names, array) for _, names in chunks)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="edgecnn-decode") as pool:
        yield _ahead(pool, decoder, chunks, depth=2 * workers + 1)


def _fit_here(decoder: Decoder, names: list[str], array: np.ndarray | None) -> Fitted:
    if array is None:
        return decoder.fit_many(names)
    return [decoder.fit(array[int(n.rsplit("#", 1)[1])]) for n in names]


def _ahead(pool: ThreadPoolExecutor, decoder: Decoder, chunks: list[tuple[int, list[str]]], *,
           depth: int) -> Iterator[Fitted]:
    pending: collections.deque[Future[Fitted]] = collections.deque()
    todo = iter(chunks)
    for _, names in todo:
        pending.append(pool.submit(decoder.fit_many, names))
        if len(pending) >= depth:
            break
    while pending:
        fitted = pending.popleft().result()
        nxt = next(todo, None)
        if nxt is not None:
            pending.append(pool.submit(decoder.fit_many, nxt[1]))
        yield fitted


def answer_chunk(model: InferenceModel, names: Sequence[str], fitted: Fitted, *, columns: dict[str, str],
                 params: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of one chunk (every engine's): the decoded images answered in one batch with the
    head's ``params``, the others error rows; ``columns`` are the model / model_sha256 values."""
    good = {i: px for i, (px, _, err) in enumerate(fitted) if err is None and px is not None}
    ok = list(good)
    answers: dict[int, dict[str, Any]] = {}
    if ok:
        pixels = np.stack(list(good.values()))
        fits = [fitted[i][1] for i in ok]
        results = model.postprocess(model.run_pixels(pixels), fits, **params)
        answers = {i: model.result_dict(r) for i, r in zip(ok, results)}
    task = model.card.task
    rows = []
    for i, name in enumerate(names):
        if i in answers:
            fit = fitted[i][1]
            rows.append(result_row(task, name, answers[i], width=fit.width, height=fit.height, model=columns))
        else:
            rows.append(error_row(name, fitted[i][2] or "not decoded", model=columns))
    return rows
