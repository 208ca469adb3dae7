"""Slow and idle clients against the real ``python -m api serve`` (api/httpprotocols.py).

The header deadline is 1 s here: a head trickled a byte a second gets 408 and is closed; so is a
connection that opens and sends nothing, and a keep-alive connection whose next head trickles;
other connections are served meanwhile, and a long-poll longer than the deadline is not cut.
"""

from __future__ import annotations

import asyncio
import functools
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from api.httpprotocols import H11HeadTimeoutProtocol, HeadTimeoutProtocols, http_protocol
from api.settings import Settings
from tests.integration.conftest import LiveServer, LiveServerFactory, free_port

pytestmark = pytest.mark.timeout(90)
T = TypeVar("T")

TIMEOUT_S = 1.0
MARGIN_S = 2.5  # a loaded 2-core machine


@pytest.fixture
def server(live_server: LiveServerFactory) -> LiveServer:
    return live_server(
        env={"MORAG_HTTP_HEADER_TIMEOUT_S": str(TIMEOUT_S), "MORAG_HTTP_MAX_HEADER_BYTES": "8192"}
    )


def _trickle(sock: socket.socket, first: bytes, limit_s: float) -> tuple[float, bytes]:
    """Send ``first``, then one header byte every 0.7 s until the server closes; (seconds, bytes read).

    0.7 s, not 1 s: a byte sent just as the server closes would be answered with a reset.
    """
    began = time.monotonic()
    sock.sendall(first)
    got = b""
    while time.monotonic() - began < limit_s:
        ready, _, _ = select.select([sock], [], [], 0.7)
        try:
            if ready:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                got += chunk
            else:
                sock.sendall(b"a")
        except OSError:  # reset: closed while we wrote
            break
    return time.monotonic() - began, got


def _connect(server: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _trickled_head(server: LiveServer) -> tuple[float, bytes]:
    with _connect(server) as sock:
        return _trickle(sock, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ", TIMEOUT_S + 10)


def _silent(server: LiveServer) -> tuple[float, bytes]:
    with _connect(server) as sock:
        began = time.monotonic()
        sock.settimeout(TIMEOUT_S + 10)
        got = sock.recv(4096)
        return time.monotonic() - began, got


def _keep_alive_then_trickle(server: LiveServer) -> tuple[float, bytes]:
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b"}" not in first:
            first += sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200 ")
        # The keep-alive timeout (5 s) stops counting at the first byte; the head deadline does not.
        return _trickle(sock, b"GET /health HTTP/1.1\r\n", TIMEOUT_S + 10)


def _in_thread(fn: Callable[[LiveServer], T], server: LiveServer) -> Callable[[], T]:
    out: list[T] = []
    thread = threading.Thread(target=lambda: out.append(fn(server)))
    thread.start()

    def result() -> T:
        thread.join()
        return out[0]

    return result


def test_slow_and_silent_connections_are_closed_while_others_are_served(server: LiveServer) -> None:
    trickled = _in_thread(_trickled_head, server)
    silent = _in_thread(_silent, server)
    kept_alive = _in_thread(_keep_alive_then_trickle, server)
    served = []
    for _ in range(5):  # new connections, each a normal request, while the slow ones wait
        time.sleep(0.3)
        served.append(httpx.get(f"{server.url}/health", timeout=5).status_code)
    assert served == [200] * 5

    took, got = trickled()
    assert TIMEOUT_S * 0.9 <= took <= TIMEOUT_S + MARGIN_S, (took, got)
    assert got.startswith(b"HTTP/1.1 408 "), got
    took, got = silent()
    assert TIMEOUT_S * 0.9 <= took <= TIMEOUT_S + MARGIN_S, (took, got)
    assert got == b""  # closed without an answer: no request was begun
    took, got = kept_alive()
    assert took <= TIMEOUT_S + MARGIN_S, (took, got)
    assert got.startswith(b"HTTP/1.1 408 "), got


def test_long_poll_is_not_cut_and_oversized_heads_are_refused(server: LiveServer) -> None:
    body = {"worker_id": "w1", "lanes": ["cpu"], "content_types": ["echo"], "wait_s": 3}
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.worker_key}"}) as c:
        for _ in range(2):  # the second one on the same keep-alive connection
            began = time.monotonic()
            resp = c.post("/worker/claim", json=body, timeout=15)
            assert resp.status_code == 204, resp.text
            assert (
                time.monotonic() - began >= 2.2
            )  # past twice the head deadline (MORAG_CLAIM_WAIT_SPREAD: 2.25-3 s)

    ok = httpx.get(f"{server.url}/health", headers={"X-Pad": "a" * 4000}, timeout=5)
    assert ok.status_code == 200
    with _connect(server) as sock:  # MORAG_HTTP_MAX_HEADER_BYTES=8192 (httptools ignores uvicorn's)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20_000)
        got = b""
        sock.settimeout(5)
        while chunk := sock.recv(4096):
            got += chunk
    status = got.split(b"\r\n", 1)[0]
    assert status in (b"HTTP/1.1 431 Request Header Fields Too Large", b"HTTP/1.1 400 Bad Request"), got


def test_settings_reach_the_protocol() -> None:
    factory = http_protocol(Settings(http_header_timeout_s=2.5, http_max_header_bytes=9000))
    assert factory == HeadTimeoutProtocols(2.5, 9000)
    assert Settings().http_header_timeout_s == 10.0


async def _tiny_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(TIMEOUT_S * 2.5)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_h11_protocol_has_the_same_deadline() -> None:
    """Without httptools uvicorn (and we) use h11: the same deadline there, the size limit is h11's."""
    port = free_port()
    factory = functools.partial(H11HeadTimeoutProtocol, header_timeout_s=TIMEOUT_S, max_head_bytes=8192)
    config = uvicorn.Config(
        _tiny_app,
        host="127.0.0.1",
        port=port,
        http=factory,
        lifespan="off",
        log_config=None,
        access_log=False,
    )
    config.h11_max_incomplete_event_size = 8192
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run)
    thread.start()
    try:
        target = LiveServer(data_dir=Path("."), port=port, env={})
        deadline = time.monotonic() + 20
        while not srv.started and time.monotonic() < deadline:
            time.sleep(0.05)
        took, got = _trickled_head(target)
        assert took <= TIMEOUT_S + MARGIN_S and got.startswith(b"HTTP/1.1 408 "), (took, got)
        took, got = _silent(target)
        assert TIMEOUT_S * 0.9 <= took <= TIMEOUT_S + MARGIN_S and got == b"", (took, got)
        with _connect(target) as sock:  # the app takes longer than the deadline: not cut
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(10)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
            took, got = _trickle(sock, b"GET / HTTP/1.1\r\n", TIMEOUT_S + 10)  # keep-alive, then slow
        assert took <= TIMEOUT_S + MARGIN_S and got.startswith(b"HTTP/1.1 408 "), (took, got)
    finally:
        srv.should_exit = True
        thread.join(10)
