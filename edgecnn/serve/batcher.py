"""Dynamic micro-batching: concurrent requests for one model run as one batched session call.

A worker task per model takes the first queued request, then gathers more until the batch holds
``max_batch`` rows or ``max_delay_ms`` has passed (it does not wait when no other request is
being decoded, so a lone client pays no delay), runs the batch in the model's own thread and
hands each request back its own rows. Requests arrive decoded: images are decoded per request on
the server's decode pool, so a slow or hostile image costs its own request only, never the
batch it would have joined. Admission is bounded: past ``queue_size`` requests in the system
(decoding, queued or running; a request is admitted once its body has fully arrived) a new one is
refused with 503 and ``Retry-After`` instead of waiting without end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecnn.serve.errors import ServeError
from edgecnn.serve.models import ServedModel

log = logging.getLogger(__name__)

__all__ = ["MicroBatcher"]


@dataclass
class _Job:
    """One request: its preprocessed (N, ...) tensor and how each row's image was fitted to it."""

    future: asyncio.Future
    top_k: int
    x: np.ndarray
    fits: list[Any]
    raw: bool = False  # the model's own output tensors (v2) instead of the task's answer
    mask: bool = False  # a segmenter's answer carries its class map

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


class MicroBatcher:
    """The request queue and batching worker of one served model.

    Args:
        model: the model whose batches this runs.
        max_batch: most rows per session call (the model's ``max_batch``).
        max_delay_s: longest the first request of a batch waits for others.
        queue_size: most requests admitted at once.
        retry_after_s: the ``Retry-After`` a refused client is told.
        on_batch: called with the rows and seconds of every session call (the metrics' histograms).
    """

    def __init__(self, model: ServedModel, *, max_batch: int, max_delay_s: float, queue_size: int,
                 retry_after_s: int = 1, on_batch: Callable[[int, float], None] | None = None) -> None:
        self.model = model
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.queue_size = queue_size
        self.retry_after_s = retry_after_s
        self._on_batch = on_batch or (lambda rows, seconds: None)
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._admitted = 0
        self._aside = 0  # admitted requests decoding a heavy image (see aside)
        self._closing = False
        self._worker: asyncio.Task | None = None
        # One thread per model: batches of a model run one after the other (onnxruntime already
        # spreads one call over the intra-op threads), and requests' decoding never waits for them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"edgecnn-{model.name}")

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return self._queue.qsize()

    @property
    def admitted(self) -> int:
        """Requests in the system: queued, being decoded or running."""
        return self._admitted

    async def start(self) -> None:
        """Warm the model up (first call allocates) and start the worker."""
        h, w = self.model.card.input_size
        x = np.zeros((1, h, w, self.model.card.channels), np.uint8)  # pixels: the path images take
        await asyncio.get_running_loop().run_in_executor(self._executor, self.model.infer, x)
        self._worker = asyncio.create_task(self._run(), name=f"edgecnn-batcher-{self.model.name}")

    def check_capacity(self) -> None:
        """Refuse at once when every place is taken: called before a body is read too, so that an
        overloaded server answers a fast-retrying client for the price of its headers, not of its
        upload (retry storms had cut useful throughput 18-fold).

        Raises:
            ServeError: 503 with Retry-After when every place is taken or the server is stopping.
        """
        if self._closing:
            raise ServeError(503, "shutting_down", "The server is shutting down; retry on another instance.",
                             {"Retry-After": str(self.retry_after_s)})
        if self._admitted >= self.queue_size:
            raise ServeError(503, "overloaded", f"Model {self.model.name!r} has {self._admitted} requests in "
                             f"flight (the limit is {self.queue_size}); retry after {self.retry_after_s} s.",
                             {"Retry-After": str(self.retry_after_s)})

    @contextlib.contextmanager
    def aside(self) -> Iterator[None]:
        """Mark an admitted request as far from ready (decoding an image over the heavy-pixel
        budget): a batch does not wait ``max_delay`` for it. Counting such requests kept every
        other request waiting the full delay while decode bombs were in flight (18% of the
        legitimate throughput)."""
        self._aside += 1
        try:
            yield
        finally:
            self._aside -= 1

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold one of the ``queue_size`` places for the duration of a request.

        Raises:
            ServeError: 503 with Retry-After when every place is taken or the server is stopping.
        """
        self.check_capacity()
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    async def submit(self, x: np.ndarray, fits: list[Any], *, top_k: int, raw: bool = False,
                     mask: bool = False) -> list[Any]:
        """Queue a preprocessed (N, ...) tensor; returns one result per row (the task's answer, a
        segmenter's with its class map when ``mask``), or with ``raw`` the model's output tensors
        cut to this request's rows.

        Raises:
            ServeError: 503 when the model is not running.
        """
        if self._worker is None or self._worker.done():
            raise ServeError(503, "not_ready", "The model is not ready yet; retry shortly.",
                             {"Retry-After": str(self.retry_after_s)})
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(future, top_k, x, fits, raw, mask))
        return await future  # cancelled by the request's timeout: the worker then skips the job

    async def stop(self, timeout_s: float) -> None:
        """Refuse new requests, let queued ones finish (up to ``timeout_s``), then stop the worker."""
        self._closing = True
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except TimeoutError:
            log.warning("%s: %d queued requests did not finish within %.0f s.", self.model.name, self.queued, timeout_s)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(ServeError(503, "shutting_down", "The server stopped before it ran."))
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------------------- worker
    async def _run(self) -> None:
        carry: _Job | None = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            carry = None
            batch = [first] if not first.future.done() else []
            rows = sum(j.rows for j in batch)
            taken = 1
            deadline = asyncio.get_running_loop().time() + self.max_delay_s
            while rows < self.max_batch:
                job = await self._next(deadline, waiting=len(batch))
                if job is None:
                    break
                taken += 1
                if job.future.done():  # timed out while queued
                    continue
                if batch and rows + job.rows > self.max_batch:
                    carry = job  # first of the next batch
                    taken -= 1
                    break
                batch.append(job)
                rows += job.rows
            try:
                if batch:
                    await self._execute(batch, rows)
            finally:
                for _ in range(taken):
                    self._queue.task_done()

    async def _next(self, deadline: float, waiting: int) -> _Job | None:
        """The next queued job, waiting until ``deadline`` only while another request could still join."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
        remaining = deadline - asyncio.get_running_loop().time()
        # Every admitted request is in this batch: nobody is being read or decoded, so waiting
        # would only add max_delay to a lone client's latency.
        if remaining <= 0 or self._admitted - self._aside <= waiting:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), remaining)
        except TimeoutError:
            return None

    async def _execute(self, batch: list[_Job], rows: int) -> None:
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._executor, self._compute, batch)
        except Exception as err:  # noqa: BLE001 - every waiting request must hear about it
            log.exception("%s: a batch of %d failed.", self.model.name, rows)
            results = [err] * len(batch)
        for job, result in zip(batch, results):
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    def _compute(self, batch: list[_Job]) -> list[Any]:
        """Run one session call on every job's rows, split the results per request. Pixels
        (uint8) and preprocessed tensors (float) are two calls: they enter the model differently."""
        results: list[Any] = [None] * len(batch)
        for pixels in (True, False):
            group = [i for i, j in enumerate(batch) if (j.x.dtype == np.uint8) == pixels]
            if not group:
                continue
            x = batch[group[0]].x if len(group) == 1 else np.concatenate([batch[i].x for i in group])
            t0 = time.perf_counter()
            outputs = self.model.infer(x)
            self._on_batch(int(x.shape[0]), time.perf_counter() - t0)
            start = 0
            for i in group:
                job = batch[i]
                n = job.rows
                mine = [_rows(o, start, n, x.shape[0]) for o in outputs]
                results[i] = mine if job.raw else self.model.results(mine, job.fits, job.top_k, mask=job.mask)
                start += n
        return results


def _rows(output: np.ndarray, start: int, n: int, total: int) -> np.ndarray:
    """A job's rows of a batched output (an output without a batch axis is shared as it is)."""
    return output[start:start + n] if output.ndim and output.shape[0] == total else output


def retry_after(timeout_s: float) -> int:
    """A whole-second Retry-After for a server whose requests take up to ``timeout_s``."""
    return max(1, math.ceil(min(timeout_s, 5.0)))
