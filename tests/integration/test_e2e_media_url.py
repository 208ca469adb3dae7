"""End to end: a media URL behind a sign-in, the user's cookies uploaded through the API.

A local site serves a talk only to requests carrying its session cookie. Without cookies the
job fails at once with a message that says to add them; after `PUT /api/v1/cookies` the claim
hands those cookies (and only those) to the worker, yt-dlp sends them, Whisper transcribes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fixtures import media

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
COOKIE = "session=letmein"


class _Site(BaseHTTPRequestHandler):
    video = b""
    seen_cookies: list[str] = []

    def log_message(self, format: str, *args: object) -> None:
        return None

    def _answer(self, body: bool) -> None:
        self.seen_cookies.append(self.headers.get("Cookie") or "")
        if self.path.split("?")[0] != "/talk.mp4":
            self.send_error(404)
        elif COOKIE not in (self.headers.get("Cookie") or ""):
            self.send_error(403, "Sign in to confirm you are not a bot")
        else:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(self.video)))
            self.end_headers()
            if body:
                self.wfile.write(self.video)

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    wav = media.speech_wav(tmp_path / "speech.wav")
    _Site.video = media.make_video(tmp_path / "talk.mp4", wav, seconds=13).read_bytes()
    _Site.seen_cookies = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_cookies_uploaded_through_the_api_reach_the_worker(live_server, site, tmp_path):
    server = live_server()
    worker = server.start_worker(
        tmp_path / "worker.log",
        "--lanes",
        "gpu,cpu",
        "--content-types",
        "youtube",
        "--allow-private-urls",
        "--whisper-model",
        str(media.tiny_en_model()),
        "--temp-dir",
        str(tmp_path / "work"),
        "--claim-wait",
        "2",
    )
    url = f"{site}/talk.mp4"
    try:
        first = server.api("POST", "/ingest/url", json={"url": url, "content_type": "youtube"}).json()[
            "task_id"
        ]
        refused = server.wait_final(first)
        cookies = (
            "# Netscape HTTP Cookie File\n"
            "127.0.0.1\tFALSE\t/\tFALSE\t0\tsession\tletmein\n"
            ".example.com\tTRUE\t/\tFALSE\t0\tother\tnot-for-this-site\n"
        )
        r = server.api("PUT", "/cookies", content=cookies.encode(), headers={"Content-Type": "text/plain"})
        assert r.status_code == 200, r.text
        assert "letmein" not in r.text  # never returned in full
        second = server.api("POST", "/ingest/url", json={"url": url, "content_type": "youtube"}).json()[
            "task_id"
        ]
        done = server.wait_final(second)
    finally:
        worker.kill()
        worker.wait(10)
    worker_log = (tmp_path / "worker.log").read_text()[-3000:]
    assert refused["status"] == "failed" and refused["attempts"] == 1, (refused, worker_log)
    assert refused["error_class"] == "auth_required" and "cookies" in refused["error"].lower()
    assert done["status"] == "succeeded", (done, worker_log)
    assert "fox" in done["result"]["markdown"].lower()
    assert any(COOKIE in c for c in _Site.seen_cookies)
    assert not any("not-for-this-site" in c for c in _Site.seen_cookies)  # only the site's own cookies
