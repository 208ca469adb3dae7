"""WebProcessor against a local HTTP server on 127.0.0.1 (allow_private_urls=True set explicitly)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from protocol import urlguard
from tests.fixtures import documents as fx
from worker.errors import AuthRequired, BadInput, TransientError
from worker.processors import web
from worker.processors.base import JobInput, ProcessorConfig, ProcessResult
from worker.processors.web import WebProcessor

COOKIE = "session=s3cret"
EMPTY_HTML = "<html><head><title>Nothing</title></head><body><div></div></body></html>"


class Server(ThreadingHTTPServer):
    routes: dict[str, tuple[int, str, bytes, dict[str, str]]]
    seen: list[str]


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        return None

    def do_GET(self) -> None:
        self.server.seen.append(self.path)
        if self.path == "/members" and COOKIE not in (self.headers.get("Cookie") or ""):
            self._send(403, "text/plain", b"forbidden")
            return
        status, ctype, body, headers = self.server.routes.get(
            self.path, (404, "text/plain", b"not found", {})
        )
        self._send(status, ctype, body, headers)

    def _send(self, status: int, ctype: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        headers = dict(headers or {})
        no_length = headers.pop("X-No-Length", None)  # body ends when the connection closes
        for key, value in headers.items():
            self.send_header(key, value)
        if not no_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    pdf = fx.make_pdf(tmp_path_factory.mktemp("web") / "p.pdf", pages=2).read_bytes()
    srv = Server(("127.0.0.1", 0), Handler)
    port = srv.server_address[1]
    html = fx.HTML.encode()
    srv.routes = {
        "/article": (200, "text/html; charset=utf-8", html, {}),
        "/members": (200, "text/html", html, {}),
        "/paper": (200, "application/pdf", pdf, {}),
        "/hop": (302, "text/plain", b"", {"Location": "/article"}),
        "/to-private": (302, "text/plain", b"", {"Location": f"http://127.0.0.1:{port}/article"}),
        "/gone": (410, "text/plain", b"gone", {}),
        "/boom": (500, "text/plain", b"error", {}),
        "/big": (
            200,
            "text/html",
            b"<p>" + b"x" * 5000 + b"</p>",
            {"X-No-Length": "1", "Connection": "close"},
        ),
        "/empty": (200, "text/html", EMPTY_HTML.encode(), {}),
        "/clip": (200, "video/mp4", b"\0" * 100, {}),
    }
    srv.seen = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def base(server: Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def run(url: str, tmp_path: Path, cookies: Path | None = None, **cfg: object) -> ProcessResult:
    config = ProcessorConfig(**{"allow_private_urls": True, "fetch_timeout_s": 10.0, **cfg})  # type: ignore[arg-type]
    temp = tmp_path / "job"
    temp.mkdir(exist_ok=True)
    job = JobInput("web", {}, temp, url=url, cookies_file=cookies)
    return WebProcessor().process(job, config)


def test_article_content_and_metadata(server: Server, tmp_path: Path) -> None:
    res = run(base(server) + "/hop", tmp_path)  # a same-site redirect is followed
    md, meta = res.markdown, res.metadata
    assert f"# {fx.HEADING}" in md and f"## {fx.SUBHEADING}" in md and "- bravo item" in md
    assert "| Northwind | 4200 |" in md and "|---|---|" in md
    assert "Copyright footer" not in md  # boilerplate dropped
    assert meta["title"] == fx.HEADING and meta["author"] == "Ada Lovelace" and meta["date"] == "2024-05-17"
    assert meta["canonical_url"] == "https://example.org/reports/q1"
    assert {"text": "annual summary", "url": "https://example.org/annual"} in meta["links"]
    assert meta["final_url"].endswith("/article") and meta["source_url"].endswith("/hop")


def test_cookie_from_cookies_file_is_sent(server: Server, tmp_path: Path) -> None:
    with pytest.raises(AuthRequired, match="add cookies"):
        run(base(server) + "/members", tmp_path)
    jar = tmp_path / "cookies.txt"
    name, value = COOKIE.split("=")
    jar.write_text(f"# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\t{name}\t{value}\n")
    assert run(base(server) + "/members", tmp_path, cookies=jar).metadata["title"] == fx.HEADING


def test_direct_private_url_refused_by_default(server: Server, tmp_path: Path) -> None:
    before = len(server.seen)
    with pytest.raises(BadInput, match="private or loopback"):
        run(base(server) + "/article", tmp_path, allow_private_urls=False)
    assert len(server.seen) == before  # nothing was requested


def test_redirect_to_private_address_refused(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 'public' name (fake DNS: public for the first check, our server for the socket): the
    connection itself is checked, so nothing is requested (more in test_netguard.py)."""
    real = socket.getaddrinfo

    def guard_dns(host: str, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        if host == "public.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 0))]
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    def connect_dns(host: str, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        return real("127.0.0.1" if host == "public.example" else host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(urlguard, "socket", SimpleNamespace(getaddrinfo=guard_dns))
    monkeypatch.setattr(socket, "getaddrinfo", connect_dns)
    port = server.server_address[1]
    server.seen.clear()
    with pytest.raises(BadInput, match=r"refused to fetch http://public\.example.*private or loopback"):
        run(f"http://public.example:{port}/to-private", tmp_path, allow_private_urls=False)
    assert server.seen == []  # the private address was never requested


def test_non_http_scheme_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="only http and https"):
        run("file:///etc/passwd", tmp_path)


def test_pdf_page_is_processed_as_document(server: Server, tmp_path: Path) -> None:
    artifacts = tmp_path / "no-models"
    artifacts.mkdir()
    res = run(base(server) + "/paper", tmp_path, docling_artifacts=artifacts)
    assert res.metadata["format"] == "pdf" and res.metadata["page_count"] == 2
    assert "marker2word" in res.markdown and res.metadata["http_content_type"] == "application/pdf"


def test_media_without_media_processor_is_bad_input(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BadInput, match="submit it as content type video"):
        run(base(server) + "/clip", tmp_path)


@pytest.mark.parametrize(
    ("path", "error", "message", "cfg"),
    [
        ("/gone", BadInput, "answered 410", {}),
        ("/nowhere", BadInput, "answered 404", {}),
        ("/boom", TransientError, "answered 500", {}),
        ("/big", BadInput, "larger than this worker's limit of 1000 bytes", {"max_download_bytes": 1000}),
        ("/article", BadInput, "more than this worker's limit of 100 bytes", {"max_download_bytes": 100}),
        ("/empty", BadInput, "no readable content", {}),
    ],
)
def test_errors(server: Server, tmp_path: Path, path: str, error: type, message: str, cfg: dict) -> None:
    with pytest.raises(error, match=message):
        run(base(server) + path, tmp_path, **cfg)


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientError, match="ConnectError"):
        run(f"http://127.0.0.1:{port}/", tmp_path)
