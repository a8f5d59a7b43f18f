"""Give memory back to the OS after upload bursts (glibc ``malloc_trim``).

A burst of large uploads (100 concurrent 8 MB bodies: 2.1 GB) left the process at its peak RSS
long after: CPython hands large buffers to malloc, glibc raises its mmap threshold after the
first frees, so later bodies land in its heap arenas (one per thread that touched them), and
freed arena memory stays mapped. Once the server is idle again after at least ``threshold``
bytes of bodies, one ``malloc_trim(0)`` in a worker thread returns it. Elsewhere (musl, macOS,
Windows) there is no such call and this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["TrimMiddleware", "malloc_trim", "fix_mmap_threshold"]


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def fix_mmap_threshold(threshold: int = 1 << 20) -> bool:
    """Serve every allocation over ``threshold`` bytes with its own mmap, returned on free.

    glibc raises its mmap threshold each time it frees an mmapped chunk (up to 32 MiB): after the
    first 5 MB request body, later ones land in the heap arenas, and what fragmentation keeps there
    ``malloc_trim`` cannot return (RSS +24% after hostile bodies, issue 21 §1.4). Fixing the
    threshold stops that adjustment. False where the C library has no ``mallopt``.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return False
    return bool(mallopt is not None and mallopt(_M_MMAP_THRESHOLD, threshold))


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return None if libc is None else libc.malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _load_trim()


def malloc_trim() -> bool:
    """Release free heap memory to the OS; False where the C library has no ``malloc_trim``."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class TrimMiddleware:
    """Counts request body bytes; trims the heap when no request is in flight after ``threshold`` bytes."""

    def __init__(self, app: Any, threshold: int = 8 * 1024 * 1024) -> None:
        self.app = app
        self.threshold = threshold
        self.in_flight = 0
        self.pending = 0  # body bytes received since the last trim
        self.trims = 0

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or _TRIM is None:
            await self.app(scope, receive, send)
            return

        async def counting_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                self.pending += len(message.get("body", b""))
            return message

        self.in_flight += 1
        try:
            await self.app(scope, counting_receive, send)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self.pending >= self.threshold:
                self.pending = 0
                self.trims += 1
                asyncio.get_running_loop().run_in_executor(None, malloc_trim)
