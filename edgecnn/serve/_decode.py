"""Where request bodies are decoded: a light pool, and a low-priority heavy pool for big images.

Every request is decoded on its own (never in the batch it joins), so an image that fails costs
its own request only. Cost is the other half: a PNG declaring 5000x5000 pixels inflates 75 MB
whatever scale the model wants. Such images (over ``heavy_pixels`` declared in their header) go
to a small pool of their own whose threads run at a lower OS priority (Linux thread nice +10), so
a client sending decode bombs queues behind itself and yields the CPU to everyone else's small
images, the event loop and the model, instead of taking the light pool's threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["DecodePools", "HeavyImage", "HEAVY_PIXELS"]

HEAVY_PIXELS = 4_000_000  # 2000x2000: any camera photo; far above what a CNN's input needs


class HeavyImage(Exception):
    """Raised by a light-pool decode that found a header declaring more than ``HEAVY_PIXELS``."""


def _lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # Linux: per-thread nice
    except (AttributeError, OSError):  # other systems, or not allowed: same priority as the rest
        log.debug("Could not lower the heavy decode threads' priority.")


HEAVY_SHARE = 0.5  # of one core, at most, spent decoding heavy images over time
HEAVY_QUEUE = 8  # heavy images waiting at most; more get 503


class DecodePools:
    """The light pool (``workers`` threads) and the heavy pool (``heavy_workers``, nice +10).

    Heavy images are decoded one after another and within ``heavy_share`` of one core over time:
    after a decode of ``t`` seconds the next one starts ``t * (1 / share - 1)`` later (the answer
    itself is not delayed). A nicer thread did not keep two 5000x5000 PNG bombs a second from a
    share of a 2-core box (their inflate is CPU and memory bandwidth, whatever the priority); this
    way they queue behind themselves, and past ``heavy_queue`` waiting ones get 503 with Retry-After.
    """

    def __init__(self, workers: int, heavy_workers: int = 1, heavy_pixels: int = HEAVY_PIXELS, *,
                 heavy_share: float = HEAVY_SHARE, heavy_queue: int = HEAVY_QUEUE) -> None:
        self.heavy_pixels = heavy_pixels
        if not 0 < heavy_share <= 1:
            raise ValueError(f"heavy_share must be in (0, 1], got {heavy_share}")
        self.heavy_share, self.heavy_queue = heavy_share, heavy_queue
        self._heavy_turn: asyncio.Lock | None = None  # made in the event loop that uses it
        self._heavy_waiting = 0
        self.light = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgecnn-decode")
        self.heavy = ThreadPoolExecutor(max_workers=heavy_workers, thread_name_prefix="edgecnn-decode-heavy",
                                        initializer=_lower_priority)
        self._json_process: ProcessPoolExecutor | None = None  # started on the first large JSON body
        self._json_lock = threading.Lock()

    async def large_json(self, head: bytes) -> Any:
        """A large JSON body parsed in a worker process at nice +10 (see :mod:`edgecnn.serve._bigjson`)."""
        from edgecnn.serve._bigjson import lower_priority, parse_large

        with self._json_lock:
            if self._json_process is None:  # spawn: the server's onnxruntime threads must not cross a fork
                self._json_process = ProcessPoolExecutor(max_workers=1, initializer=lower_priority,
                                                         mp_context=multiprocessing.get_context("spawn"))
        return await asyncio.get_running_loop().run_in_executor(self._json_process, parse_large, head)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the light pool (JSON parsing, multipart splitting)."""
        return await asyncio.get_running_loop().run_in_executor(self.light, fn, *args)

    async def image(self, prepare: Callable[..., Any], data: bytes,
                    aside: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext) -> Any:
        """``prepare(data, light_pixels)`` on the light pool, or on the heavy one when it raises
        :class:`HeavyImage` (then called with ``None``: no limit but the server's max pixels),
        inside ``aside()`` (the batcher's: a batch does not wait for a request decoding a bomb),
        one heavy image at a time within the heavy CPU share.

        Raises:
            ServeError: 503 when ``heavy_queue`` heavy images are already waiting.
        """
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.light, prepare, data, self.heavy_pixels)
        except HeavyImage:
            pass
        if self._heavy_waiting >= self.heavy_queue:
            from edgecnn.serve.errors import ServeError

            raise ServeError(503, "busy_with_large_images", f"{self._heavy_waiting} images over "
                             f"{self.heavy_pixels:,} pixels are waiting to be decoded; retry in a moment, or send "
                             "a smaller image.", {"Retry-After": "2"})
        turn = self._heavy_turn = self._heavy_turn or asyncio.Lock()
        with aside():
            self._heavy_waiting += 1
            try:
                await turn.acquire()
            finally:
                self._heavy_waiting -= 1
            started = loop.time()
            try:
                return await loop.run_in_executor(self.heavy, prepare, data, None)
            finally:  # the CPU share: the next heavy image waits in proportion, this answer does not
                loop.call_later((loop.time() - started) * (1.0 / self.heavy_share - 1.0), turn.release)

    def shutdown(self) -> None:
        for pool in (self.light, self.heavy, self._json_process):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
