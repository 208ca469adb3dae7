"""uvicorn's HTTP protocols with a deadline on the request head (a slowloris defence in the server).

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) and caps connections
(``limit_concurrency``), but it waits forever for a request line and headers that trickle in a
byte at a time, and for a connection that opens and sends nothing. Each connection here gets a
deadline while it waits for a request head::

    connection opens ──┐                       ┌── previous response sent (keep-alive)
                       └── deadline armed ─────┘
    request line + headers complete ──> deadline disarmed (the body and the app take what they take)
    deadline passes with the head incomplete ──> 408 (if the client started a head) and close

With httptools (uvicorn's default when it is installed) ``h11_max_incomplete_event_size`` has no
effect, so the head's size limit is enforced here as well (431 and close); h11 enforces it itself.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from api.settings import Settings

try:  # uvicorn[standard] installs httptools; without it uvicorn itself falls back to h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

log = logging.getLogger("morag.http")

_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 42\r\nconnection: close\r\n\r\nrequest headers not received within limit\n"
)
_TOO_LARGE_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 26\r\nconnection: close\r\n\r\nrequest headers too large\n"
)


class HeadDeadline:
    """One connection's timer: armed while a request head is awaited, fires ``expire`` once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float, expire: Any) -> None:
        self.loop, self.timeout_s, self.expire = loop, timeout_s, expire
        self.handle: asyncio.TimerHandle | None = None

    @property
    def armed(self) -> bool:
        return self.handle is not None

    def arm(self) -> None:
        self.disarm()
        self.handle = self.loop.call_later(self.timeout_s, self._fire)

    def disarm(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _fire(self) -> None:
        self.handle = None
        self.expire()


def _close_slow(transport: asyncio.Transport, client: Any, started: bool, timeout_s: float) -> None:
    if transport.is_closing():
        return
    if started:  # a head began and did not end: say why (nothing else was sent on this request)
        transport.write(_TIMEOUT_408)
    log.info(
        "closed connection from %s: no complete request head within %g s",
        client[0] if client else "-",
        timeout_s,
    )
    transport.close()


class H11HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline."""

    def __init__(self, *args: Any, header_timeout_s: float, max_head_bytes: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.head_deadline = HeadDeadline(self.loop, header_timeout_s, self._head_timed_out)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_deadline.arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.head_deadline.disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:  # h11 produced a Request: its head is complete
            self.head_deadline.disarm()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if not self.transport.is_closing():
            self.head_deadline.arm()  # before super(): it may start a pipelined request at once
        super().on_response_complete()
        if self.cycle is not cycle:
            self.head_deadline.disarm()

    def _head_timed_out(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being served; the deadline is armed again after its response
        # Between requests with bytes buffered: a head began (not a body the app left unread).
        started = self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])
        _close_slow(self.transport, self.client, started, self.head_deadline.timeout_s)


class HttpToolsHeadTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request-head deadline and a head size limit."""

    def __init__(self, *args: Any, header_timeout_s: float, max_head_bytes: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.head_deadline = HeadDeadline(self.loop, header_timeout_s, self._head_timed_out)
        self.max_head_bytes = max_head_bytes
        self.head_bytes = 0  # received since the deadline was armed, while the head is incomplete
        self.head_started = False  # a message began and its headers are not complete yet
        self.in_body = False  # a request's headers are complete and its body is still arriving

    def _await_head(self) -> None:
        self.head_bytes = 0
        self.head_deadline.arm()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.head_deadline.disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiting = self.head_deadline.armed
        if waiting:
            self.head_bytes += len(data)
        super().data_received(data)
        if waiting and self.head_deadline.armed and self.head_bytes > self.max_head_bytes:
            self.head_deadline.disarm()
            if not self.transport.is_closing():
                self.transport.write(_TOO_LARGE_431)
                self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_started = True

    def on_headers_complete(self) -> None:
        self.head_deadline.disarm()
        self.head_started = False
        self.in_body = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_body = False
        # Answered before its body was all in (an early 413/409): the next head is awaited now.
        if self.cycle is not None and self.cycle.response_complete and not self.transport.is_closing():
            if not self.pipeline:
                self._await_head()

    def on_response_complete(self) -> None:
        # A body still arriving (the answer came early) is not a head: wait for its end first.
        if not self.transport.is_closing() and not self.pipeline and not self.in_body:
            self._await_head()
        super().on_response_complete()

    def _head_timed_out(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being served; the deadline is armed again after its response
        _close_slow(self.transport, self.client, self.head_started, self.head_deadline.timeout_s)


@dataclass(frozen=True)
class HeadTimeoutProtocols:
    """The ``http=`` of uvicorn.Config: builds one protocol per connection.

    A module-level dataclass, so it pickles into the processes ``--workers N`` spawns.
    """

    header_timeout_s: float
    max_head_bytes: int

    def __call__(self, *args: Any, **kw: Any) -> asyncio.Protocol:
        cls: Any = HttpToolsHeadTimeoutProtocol if HttpToolsProtocol is not None else H11HeadTimeoutProtocol
        proto: asyncio.Protocol = cls(
            *args, header_timeout_s=self.header_timeout_s, max_head_bytes=self.max_head_bytes, **kw
        )
        return proto


def http_protocol(settings: Settings) -> HeadTimeoutProtocols:
    """uvicorn's protocol (httptools when installed, else h11) with the settings' head deadline."""
    return HeadTimeoutProtocols(settings.http_header_timeout_s, settings.http_max_header_bytes)
