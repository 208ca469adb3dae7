"""SSRF: no processor request and no webhook reaches an internal listener (finding #1).

Two real servers: an "internal" listener on 127.0.0.1 that counts every TCP connection it
accepts, and a "public" site on 127.0.0.2 (this test declares that one address public by
patching ``urlguard.is_public_address``; every other loopback address stays private). The
attacks: a name that resolves to a public address first and to 127.0.0.1 on the next lookup
(DNS rebinding), a public URL redirecting to 127.0.0.1, and a public page whose ``<video src>``
points at 127.0.0.1 (yt-dlp's generic extractor). The internal listener must count 0.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from protocol import netguard as http_guard
from protocol import urlguard
from worker import netguard
from worker.errors import BadInput
from worker.processors.base import JobInput, ProcessorConfig
from worker.processors.web import WebProcessor
from worker.processors.youtube import YoutubeProcessor

PUBLIC_IP = "127.0.0.2"


class Listener(ThreadingHTTPServer):
    connections = 0
    pages: dict[str, tuple[int, str, bytes, dict[str, str]]]

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.connections += 1
        return True


class Handler(BaseHTTPRequestHandler):
    server: Listener

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_GET(self) -> None:
        status, ctype, body, headers = self.server.pages.get(self.path, (200, "video/mp4", b"\0" * 64, {}))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def do_HEAD(self) -> None:
        self.do_GET()


def _serve(host: str) -> Iterator[Listener]:
    srv = Listener((host, 0), Handler)
    srv.pages = {}
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def internal() -> Iterator[Listener]:
    yield from _serve("127.0.0.1")


@pytest.fixture
def public(internal: Listener, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    real = urlguard.is_public_address

    def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return str(ip) == PUBLIC_IP or real(ip)

    monkeypatch.setattr(urlguard, "is_public_address", is_public)
    for srv in _serve(PUBLIC_IP):
        port = internal.server_address[1]
        srv.pages = {
            "/to-internal": (302, "text/plain", b"", {"Location": f"http://127.0.0.1:{port}/secret"}),
            "/page.html": (
                200,
                "text/html",
                b"<html><head><title>A talk</title></head><body><video controls>"
                + f'<source src="http://127.0.0.1:{port}/secret.mp4" type="video/mp4">'.encode()
                + b"</video></body></html>",
                {},
            ),
        }
        yield srv


@pytest.fixture
def rebinding(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """``rebind.example``: 1.2.3.4 on the first lookup, 127.0.0.1 on every later one."""
    real = socket.getaddrinfo
    calls = {"n": 0}

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.example":
            calls["n"] += 1
            ip = "1.2.3.4" if calls["n"] == 1 else "127.0.0.1"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port or 0))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lambda: calls["n"]


def _job(tmp_path: Path, kind: str, url: str) -> JobInput:
    work = tmp_path / "job"
    work.mkdir(exist_ok=True)
    return JobInput(content_type=kind, options={}, temp_dir=work, url=url)


CONFIG = ProcessorConfig(device="cpu", allow_private_urls=False, fetch_timeout_s=5)


@pytest.mark.parametrize("processor", [WebProcessor, YoutubeProcessor])
def test_dns_rebinding_never_reaches_internal(
    processor: Any, internal: Listener, rebinding: Callable[[], int], tmp_path: Path
) -> None:
    url = f"http://rebind.example:{internal.server_address[1]}/secret"
    with pytest.raises(BadInput, match=r"private or loopback|refus"):
        processor().process(_job(tmp_path, "web" if processor is WebProcessor else "youtube", url), CONFIG)
    assert rebinding() >= 2  # the name was looked up again after the first check
    assert internal.connections == 0


@pytest.mark.parametrize("processor", [WebProcessor, YoutubeProcessor])
def test_public_redirect_to_internal_refused(
    processor: Any, public: Listener, internal: Listener, tmp_path: Path
) -> None:
    url = f"http://{PUBLIC_IP}:{public.server_address[1]}/to-internal"
    with pytest.raises(BadInput, match=r"127\.0\.0\.1"):
        processor().process(_job(tmp_path, "web" if processor is WebProcessor else "youtube", url), CONFIG)
    assert public.connections >= 1  # the public hop was fetched
    assert internal.connections == 0


def test_video_tag_pointing_inside_refused(public: Listener, internal: Listener, tmp_path: Path) -> None:
    url = f"http://{PUBLIC_IP}:{public.server_address[1]}/page.html"
    with pytest.raises(BadInput, match=r"127\.0\.0\.1"):
        YoutubeProcessor().process(_job(tmp_path, "youtube", url), CONFIG)
    assert public.connections >= 1
    assert internal.connections == 0


def test_allowing_private_addresses_still_works(internal: Listener, tmp_path: Path) -> None:
    """Operators and tests may allow loopback explicitly: then the listener is reached."""
    internal.pages = {"/a": (200, "text/html", b"<html><body><p>hello inside</p></body></html>", {})}
    config = ProcessorConfig(device="cpu", allow_private_urls=True, fetch_timeout_s=5)
    url = f"http://127.0.0.1:{internal.server_address[1]}/a"
    assert "hello inside" in WebProcessor().process(_job(tmp_path, "web", url), config).markdown
    assert internal.connections == 1


def test_guard_is_per_thread(internal: Listener) -> None:
    """Only the guarded (processor) thread is checked: the worker's own client may reach 127.0.0.1."""
    port = internal.server_address[1]
    result: list[BaseException | None] = []

    def other_thread() -> None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            result.append(None)
        except OSError as exc:
            result.append(exc)

    with netguard.guarded(allow_private=False) as guard:
        with pytest.raises(netguard.RefusedConnection):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
    assert result == [None] and guard.refused == ["127.0.0.1"]
    deadline = time.monotonic() + 5
    while internal.connections < 1 and time.monotonic() < deadline:  # accepted by the server thread
        time.sleep(0.01)
    assert internal.connections == 1  # the unguarded thread's connection only


def test_webhook_transport_refuses_rebinding(internal: Listener, rebinding: Callable[[], int]) -> None:
    """The webhook sender's transport: checked lookup and connection are one lookup."""

    async def post() -> None:
        async with httpx.AsyncClient(transport=http_guard.async_transport(allow_private=False)) as client:
            urlguard.check_url(f"http://rebind.example:{internal.server_address[1]}/hook")  # 1.2.3.4: passes
            await client.post(f"http://rebind.example:{internal.server_address[1]}/hook", content=b"{}")

    with pytest.raises(urlguard.UnsafeURL, match=r"127\.0\.0\.1"):
        asyncio.run(post())
    assert rebinding() == 2 and internal.connections == 0


def test_webhook_transport_refuses_redirect_target_and_literal(internal: Listener) -> None:
    async def post() -> None:
        async with httpx.AsyncClient(transport=http_guard.async_transport(allow_private=False)) as client:
            await client.post(f"http://[::ffff:127.0.0.1]:{internal.server_address[1]}/hook", content=b"{}")

    with pytest.raises(urlguard.UnsafeURL):
        asyncio.run(post())
    assert internal.connections == 0


def test_ffmpeg_downloads_refused_inside_a_guard() -> None:
    """ffmpeg fetches from its own process, out of the socket hook's reach: refused while guarded."""
    from yt_dlp.downloader import external
    from yt_dlp.utils import DownloadError

    netguard.refuse_external_downloads()
    with netguard.guarded(allow_private=False) as guard:
        with pytest.raises(DownloadError, match="ffmpeg"):
            external.FFmpegFD.real_download(None, "out.mp4", {"url": "http://127.0.0.1/live.m3u8"})
    assert guard.refused == ["ffmpeg download of http://127.0.0.1/live.m3u8"]
