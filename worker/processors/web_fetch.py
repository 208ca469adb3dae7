"""Fetch one URL for a web job: every connection checked by the address guard, size and time limits, cookies.

Redirects are followed by hand so that each hop's target passes ``protocol.urlguard`` before any
request goes to it (a public page must not redirect the worker into the user's network). httpx
errors are translated here into worker errors: the processor never sees an httpx exception.
"""

from __future__ import annotations

import http.cookiejar
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from protocol import netguard
from protocol.urlguard import UnsafeURL, check_url
from worker.errors import AuthRequired, BadInput, TransientError
from worker.processors.base import JobInput, ProcessorConfig

MAX_REDIRECTS = 10
USER_AGENT = "morag-remote-worker/0.1 (+https://github.com/morag)"


@dataclass
class Fetched:
    url: str  # after redirects
    content_type: str  # media type only, lower-case, no parameters
    path: Path  # the body, on disk in the job's temp dir
    size: int


def load_cookies(path: Path | None) -> http.cookiejar.CookieJar:
    """A Netscape cookies.txt as a cookie jar (empty without a file)."""
    jar = http.cookiejar.MozillaCookieJar()
    if path is None:
        return jar
    try:
        jar.load(str(path), ignore_discard=True, ignore_expires=True)
    except (http.cookiejar.LoadError, OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"the cookies file is not a readable Netscape cookies.txt: {exc}") from exc
    for cookie in jar:
        if cookie.expires == 0:  # browser exports write 0 for session cookies; cookiejar reads "expired"
            cookie.expires = None
            cookie.discard = True
    return jar


def guard(url: str, config: ProcessorConfig) -> None:
    """Raise BadInput unless the URL is http(s) and (unless allowed) public."""
    try:
        check_url(url, allow_private=config.allow_private_urls)
    except UnsafeURL as exc:
        raise BadInput(f"refused to fetch {url}: {exc}") from exc


def _raise_for_status(response: httpx.Response, url: str) -> None:
    code = response.status_code
    if code < 400:
        return
    if code in (401, 403):
        raise AuthRequired(
            f"{url} answered {code}: the page needs a sign-in; add cookies for this site "
            "(PUT /api/v1/cookies or the worker's --cookies) and retry"
        )
    if code in (404, 410):
        raise BadInput(f"{url} answered {code}: the page does not exist (any more)")
    if code == 429 or code >= 500:
        raise TransientError(f"{url} answered {code}: the site is unavailable or rate-limiting; will retry")
    raise BadInput(f"{url} answered {code}")


def _save_body(response: httpx.Response, dest: Path, limit: int, deadline: float, url: str) -> int:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadInput(f"{url} is {int(declared)} bytes, more than this worker's limit of {limit} bytes")
    size = 0
    with dest.open("wb") as out:
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise BadInput(f"{url} is larger than this worker's limit of {limit} bytes")
            if time.monotonic() > deadline:
                raise TransientError(f"fetching {url} took longer than the time limit")
            out.write(chunk)
    return size


def fetch(url: str, job: JobInput, config: ProcessorConfig) -> Fetched:
    """Download ``url`` into the job's temp dir, checking each hop; raise worker errors on failure."""
    deadline = time.monotonic() + config.fetch_timeout_s
    jar = load_cookies(job.cookies_file or config.cookies_file)
    dest = job.temp_dir / "download"
    timeout = httpx.Timeout(config.fetch_timeout_s, connect=min(config.fetch_timeout_s, 15.0))
    headers = {"User-Agent": USER_AGENT, "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    try:
        # Each connection is checked where it is opened: a name that answers a public address to
        # guard() and a private one to the socket (DNS rebinding) is still refused.
        transport = netguard.transport(allow_private=config.allow_private_urls)
        with httpx.Client(
            cookies=jar, timeout=timeout, headers=headers, follow_redirects=False, transport=transport
        ) as client:
            for _hop in range(MAX_REDIRECTS + 1):
                guard(url, config)
                with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = str(response.url.join(response.headers["location"]))
                        continue
                    _raise_for_status(response, url)
                    size = _save_body(response, dest, config.max_download_bytes, deadline, url)
                    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
                    return Fetched(url=str(response.url), content_type=ctype, path=dest, size=size)
    except UnsafeURL as exc:
        raise BadInput(f"refused to fetch {url}: {exc}") from exc
    except httpx.TimeoutException as exc:
        raise TransientError(f"fetching {url} timed out: {exc}") from exc
    except httpx.InvalidURL as exc:
        raise BadInput(f"invalid URL {url}: {exc}") from exc
    except httpx.HTTPError as exc:  # connection refused/reset, DNS failure, protocol errors
        raise TransientError(f"fetching {url} failed: {type(exc).__name__}: {exc}") from exc
    raise BadInput(f"{url}: more than {MAX_REDIRECTS} redirects")
