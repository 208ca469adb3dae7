"""Media-URL processor without a network: error classification, cookies, URL guard."""

from __future__ import annotations

from http.cookiejar import Cookie, CookieJar
from pathlib import Path

import pytest
import yt_dlp
from yt_dlp.networking.exceptions import HTTPError, TransportError

from worker.errors import AuthRequired, BadInput, TransientError
from worker.processors import youtube
from worker.processors.base import JobInput, ProcessorConfig
from worker.processors.youtube import YoutubeProcessor, classify, cookie_file


def _download_error(message: str, cause: Exception | None = None) -> yt_dlp.utils.DownloadError:
    exc_info = (type(cause), cause, None) if cause else None
    return yt_dlp.utils.DownloadError(f"ERROR: {message}", exc_info)


class _Response:
    def __init__(self, status: int) -> None:
        self.status, self.reason, self.headers, self.url = status, "x", {}, "https://example.com/v"

    def read(self, *args: object) -> bytes:
        return b""

    def close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("message", "cause", "expected"),
    [
        (
            "[youtube] abc: Sign in to confirm you\u2019re not a bot. Use --cookies-from-browser",
            None,
            AuthRequired,
        ),
        ("[youtube] abc: Private video. Sign in if you've been granted access to this video", None, BadInput),
        ("[youtube] abc: Video unavailable. This video has been removed by the uploader", None, BadInput),
        ("[youtube] abc: The uploader has not made this video available in your country", None, BadInput),
        ("Unsupported URL: https://example.com/", None, BadInput),
        ("Unable to download webpage: HTTP Error 404: Not Found", None, BadInput),
        ("Unable to download webpage: HTTP Error 403: Forbidden", HTTPError(_Response(403)), AuthRequired),
        (
            "Unable to download webpage: HTTP Error 502: Bad Gateway",
            HTTPError(_Response(502)),
            TransientError,
        ),
        ("Unable to download webpage: timed out", TransportError("timed out"), TransientError),
        ("[Errno 111] Connection refused", None, TransientError),
    ],
)
def test_classify(message: str, cause: Exception | None, expected: type) -> None:
    err = classify(_download_error(message, cause))
    assert type(err) is expected
    if expected is AuthRequired:
        assert "PUT /api/v1/cookies" in err.message and "--cookies" in err.message


def _job(
    tmp_path: Path, url: str = "https://www.youtube.com/watch?v=x", cookies: Path | None = None
) -> JobInput:
    return JobInput(content_type="youtube", options={}, temp_dir=tmp_path, url=url, cookies_file=cookies)


def test_server_cookies_win_and_are_copied(tmp_path: Path) -> None:
    server, own = tmp_path / "server.txt", tmp_path / "own.txt"
    server.write_text("# Netscape HTTP Cookie File\nserver\n")
    own.write_text("# Netscape HTTP Cookie File\nown\n")
    work = tmp_path / "work"
    work.mkdir()
    copy = cookie_file(_job(work, cookies=server), ProcessorConfig(cookies_file=own))
    assert copy is not None and copy != server and copy.parent == work and "server" in copy.read_text()
    copy = cookie_file(_job(work), ProcessorConfig(cookies_file=own))
    assert copy is not None and copy != own and "own" in copy.read_text()
    assert cookie_file(_job(work), ProcessorConfig()) is None


@pytest.mark.parametrize(
    "failure", [KeyError("DBUS_SESSION_BUS_ADDRESS"), FileNotFoundError("no profile"), RuntimeError("locked")]
)
def test_browser_cookie_failures_are_explained(tmp_path: Path, monkeypatch, failure: Exception) -> None:
    import browser_cookie3

    def broken(domain_name: str = "") -> CookieJar:
        raise failure

    monkeypatch.setattr(browser_cookie3, "chrome", broken)
    with pytest.raises(AuthRequired, match=r"could not read chrome cookies.*PUT /api/v1/cookies"):
        cookie_file(_job(tmp_path), ProcessorConfig(cookies_from_browser="chrome"))


def test_browser_cookies_written_as_netscape_file(tmp_path: Path, monkeypatch) -> None:
    import browser_cookie3

    seen: list[str] = []

    def chrome(domain_name: str = "") -> CookieJar:
        seen.append(domain_name)
        jar = CookieJar()
        jar.set_cookie(Cookie(0, "SID", "secret", None, False, ".youtube.com", True, True, "/", True,
                              True, 4102444800, False, None, None, {}))  # fmt: skip
        return jar

    monkeypatch.setattr(browser_cookie3, "chrome", chrome)
    path = cookie_file(_job(tmp_path), ProcessorConfig(cookies_from_browser="Chrome"))
    assert path is not None and seen == ["youtube.com"]
    assert ".youtube.com\tTRUE\t/\tTRUE\t4102444800\tSID\tsecret" in path.read_text()


def test_unknown_browser_is_explained(tmp_path: Path) -> None:
    with pytest.raises(AuthRequired, match="unknown browser"):
        cookie_file(_job(tmp_path), ProcessorConfig(cookies_from_browser="netscape-navigator"))


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.mp4", "http://127.0.0.1/a.mp4", "http://10.0.0.8/"]
)
def test_unsafe_urls_refused_before_any_download(tmp_path: Path, monkeypatch, url: str) -> None:
    monkeypatch.setattr(youtube, "cookie_file", lambda *a: pytest.fail("must refuse before anything else"))
    with pytest.raises(BadInput, match="refusing"):
        YoutubeProcessor().process(_job(tmp_path, url), ProcessorConfig())


def test_job_without_url_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput):
        YoutubeProcessor().process(_job(tmp_path, url=""), ProcessorConfig())
