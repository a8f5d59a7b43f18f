"""uvicorn's httptools protocol with the limits it lacks: header size, header time, JSON 4xx.

uvicorn bounds neither the size of a request's headers on its httptools (llhttp) parser nor the
time a client may take to send them: eight clients streaming 100 MB of headers took 1 GB of
memory and 97 s of CPU before authentication ran, and 500 slowloris connections were never
closed. This protocol counts the bytes of each request's head (request line plus headers) and
answers 431 past ``max_header_bytes``: the URL and headers the parser completes are counted as
they arrive (a 20 KB head read in one chunk), and so is every chunk that falls wholly inside one
unfinished head (a header streamed forever); bytes of earlier requests pipelined on the same
connection never count towards a later one's head (50 pipelined requests got a 431 and a reset);
it closes a connection whose head is not complete
``header_timeout_s`` after it began; and it answers the parser's own 400 with the same JSON error
body as every other error. Everything else is uvicorn's, so its keep-alive, flow control and
graceful shutdown are unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from edgecnn.serve.errors import error_body

log = logging.getLogger(__name__)

__all__ = ["LimitedHttpToolsProtocol", "protocol_class"]


class _HeadTooLarge(Exception):
    """Raised inside a parser callback: the request's head is over the limit."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with a bounded request head in size and time (set per server
    through :func:`protocol_class`)."""

    max_header_bytes = 16 * 1024
    header_timeout_s = 10.0
    max_connections: int | None = None
    on_reject: Any = None  # called with (status, code) for the metrics

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # whole chunks received inside the current, unfinished head
        self._parsed_bytes = 0  # its URL and headers, as the parser completes them
        self._in_head = False
        self._head_began_in_chunk = False
        self._too_large = False
        self._began = False  # a request started arriving (an idle keep-alive is closed quietly)
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_since: float | None = None  # between requests (a keep-alive waiting): when it became idle

    # A request's head starts with the connection (or, on keep-alive, when the parser sees the
    # next request begin) and ends at on_headers_complete.
    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._idle_since = time.monotonic()
        self._start_head()
        if self.max_connections is not None and len(self.server_state.connections) > self.max_connections:
            self._make_room()

    def _make_room(self) -> None:
        """Over ``max_connections``: close the connection idle the longest for this one; with none
        idle, answer this one 503 (all the others are mid-request)."""
        idle = [c for c in self.server_state.connections
                if c is not self and getattr(c, "_idle_since", None) is not None and not c.transport.is_closing()]
        if idle:
            min(idle, key=lambda c: c._idle_since).transport.close()
            return
        if self.on_reject is not None:
            self.on_reject(503, "too_many_connections")
        self._send_json_and_close(503, "too_many_connections", f"The server holds its limit of {self.max_connections} "
                                  "connections, all busy; retry in a moment.")

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._head_began_in_chunk = False
        super().data_received(data)
        # Still inside the head it was already in when this chunk came: all of the chunk was head (a
        # chunk in which a head begins also carries the requests before it; the parser counts that head).
        if self._in_head and not self._head_began_in_chunk and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._reject(431, "headers_too_large", self._too_large_message())

    def on_message_begin(self) -> None:
        self._idle_since = None
        super().on_message_begin()
        if not self._in_head:  # keep-alive: the next request's head begins
            self._start_head()
        self._head_began_in_chunk, self._parsed_bytes, self._began = True, 0, True

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.pipeline:  # nothing queued behind it: the connection waits for the next request
            self._idle_since = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._parsed_bytes += n
        if self._parsed_bytes > self.max_header_bytes:
            self._too_large = True
            raise _HeadTooLarge  # stops the parser; uvicorn answers through send_400_response

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def _start_head(self) -> None:
        self._in_head, self._head_bytes, self._parsed_bytes, self._began = True, 0, 0, False
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            if self._head_bytes or self._parsed_bytes or self._began:
                self._reject(408, "header_timeout", f"The request headers did not arrive within "
                             f"{self.header_timeout_s:g} s.")
            else:  # an idle connection that never sent a request: just close it
                self.transport.close()

    def _reject(self, status: int, code: str, message: str) -> None:
        self._in_head = False
        self._stop_head_timer()
        if self.on_reject is not None:
            self.on_reject(status, code)
        self._send_json_and_close(status, code, message)

    def _too_large_message(self) -> str:
        return (f"The request line and headers are over {self.max_header_bytes} bytes; send fewer or shorter "
                "headers.")

    def send_400_response(self, msg: str) -> None:  # the parser's own 400: JSON like every error
        if self._too_large:  # the parser stopped because the head outgrew the limit
            self._reject(431, "headers_too_large", self._too_large_message())
            return
        if self.on_reject is not None:
            self.on_reject(400, "invalid_http")
        self._send_json_and_close(400, "invalid_http", f"{msg.rstrip('.')}: the request is not valid HTTP/1.1.")

    def _send_json_and_close(self, status: int, code: str, message: str) -> None:
        if self.transport.is_closing():
            return
        body = error_body(status, code, message)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n", b"content-length: ", str(len(body)).encode(), b"\r\n",
                 b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def protocol_class(*, max_header_bytes: int, header_timeout_s: float, max_connections: int | None = None,
                   on_reject: Any = None) -> type:
    """A :class:`LimitedHttpToolsProtocol` subclass with these limits (uvicorn takes a class)."""
    return type("EdgecnnHttpProtocol", (LimitedHttpToolsProtocol,),
                {"max_header_bytes": max_header_bytes, "header_timeout_s": header_timeout_s,
                 "max_connections": max_connections,
                 "on_reject": staticmethod(on_reject) if on_reject else None})
