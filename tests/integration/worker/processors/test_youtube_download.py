"""Media-URL jobs end to end through yt-dlp's generic extractor against a local HTTP server.

The server only serves media to requests carrying the session cookie, like a site behind a
sign-in, so the cookie plumbing is exercised for real.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fixtures import media
from worker.errors import AuthRequired, BadInput, JobCanceled, TransientError
from worker.processors.base import JobInput, ProcessorConfig
from worker.processors.youtube import YoutubeProcessor

COOKIE = "session=letmein"
VTT = """WEBVTT

00:00:00.000 --> 00:00:03.500
The quick brown fox jumps over the lazy dog.

00:00:06.000 --> 00:00:09.000
Subtitles beat transcription when they exist.
"""


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, tuple[bytes, str]] = {}

    def log_message(self, format: str, *args: object) -> None:
        return None

    def _answer(self, body: bool) -> None:
        path = self.path.split("?")[0]
        if path.startswith("/boom"):
            self.send_error(503)
            return
        if path not in self.files:
            self.send_error(404)
            return
        if path.endswith(".mp4") and COOKIE not in (self.headers.get("Cookie") or ""):
            self.send_error(403, "sign in first")
            return
        data, ctype = self.files[path]
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a local server with a speech video, an HTML page embedding it, and subtitles."""
    d = tmp_path_factory.mktemp("site")
    wav = media.speech_wav(d / "speech.wav")
    video = media.make_video(d / "talk.mp4", wav, seconds=13)
    _Handler.files = {
        "/talk.mp4": (video.read_bytes(), "video/mp4"),
        "/page.html": (
            b"<html><head><title>A talk</title></head><body><video controls>"
            b'<source src="/talk.mp4" type="video/mp4">'
            b'<track kind="subtitles" src="/talk.en.vtt" srclang="en" label="English"></video></body></html>',
            "text/html",
        ),
        "/talk.en.vtt": (VTT.encode(), "text/vtt"),
    }
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cookies(tmp_path: Path) -> Path:
    path = tmp_path / "site-cookies.txt"
    name, value = COOKIE.split("=")
    path.write_text(f"# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t4102444800\t{name}\t{value}\n")
    return path


def _job(tmp_path: Path, url: str, cookies: Path | None = None, **options: object) -> JobInput:
    work = tmp_path / "job"
    work.mkdir(exist_ok=True)
    opts = {"model": str(media.tiny_en_model()), **options}
    return JobInput(content_type="youtube", options=opts, temp_dir=work, url=url, cookies_file=cookies)


CONFIG = ProcessorConfig(device="cpu", allow_private_urls=True, fetch_timeout_s=5)


def test_direct_mp4_needs_cookie_and_transcribes_with_it(server: str, cookies: Path, tmp_path: Path) -> None:
    with pytest.raises(AuthRequired, match="cookies"):
        YoutubeProcessor().process(_job(tmp_path, f"{server}/talk.mp4"), CONFIG)
    progress: list[float] = []
    original = cookies.read_text()
    job = _job(tmp_path, f"{server}/talk.mp4", cookies)
    job.progress = lambda fraction, message: progress.append(fraction)
    result = YoutubeProcessor().process(job, CONFIG)
    heard = " ".join(seg["text"] for seg in result.metadata["segments"])
    assert media.word_error_rate(media.SENTENCE, heard) < 0.4
    assert result.metadata["transcript_source"] == "whisper"
    assert result.metadata["webpage_url"] == f"{server}/talk.mp4"
    assert "[00:00]" in result.markdown
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert cookies.read_text() == original  # yt-dlp rewrote a copy, never the server's file
    assert (job.temp_dir / "cookies.txt").read_text() != original


def test_page_with_video_tag_prefers_its_subtitles(server: str, cookies: Path, tmp_path: Path) -> None:
    result = YoutubeProcessor().process(
        _job(tmp_path, f"{server}/page.html", cookies, prefer_subtitles=True), CONFIG
    )
    assert result.metadata["transcript_source"] == "subtitles"
    assert result.metadata["segments"][1] == {
        "start": 6.0,
        "end": 9.0,
        "text": "Subtitles beat transcription when they exist.",
    }
    assert "[00:06] Subtitles beat transcription" in result.markdown


def test_404_is_bad_input(server: str, cookies: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="404"):
        YoutubeProcessor().process(_job(tmp_path, f"{server}/missing.mp4", cookies), CONFIG)


def test_server_error_and_refused_connection_are_transient(server: str, tmp_path: Path) -> None:
    with pytest.raises(TransientError, match="503"):
        YoutubeProcessor().process(_job(tmp_path, f"{server}/boom.mp4"), CONFIG)
    with pytest.raises(TransientError):
        YoutubeProcessor().process(_job(tmp_path, "http://127.0.0.1:9/talk.mp4"), CONFIG)


def test_private_address_refused_unless_allowed(server: str, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="private or loopback"):
        YoutubeProcessor().process(_job(tmp_path, f"{server}/talk.mp4"), ProcessorConfig(device="cpu"))


def test_cancel_during_download_stops(server: str, cookies: Path, tmp_path: Path) -> None:
    def cancel(fraction: float, message: str) -> None:
        if message.startswith("downloading"):
            raise JobCanceled("canceled by the user")

    job = _job(tmp_path, f"{server}/talk.mp4", cookies)
    job.progress = cancel
    with pytest.raises(JobCanceled):
        YoutubeProcessor().process(job, CONFIG)
