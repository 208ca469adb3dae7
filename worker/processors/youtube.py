"""The ``youtube`` processor: any yt-dlp-supported media URL -> transcript markdown.

The worker downloads the media itself (the server never proxies media): audio only where the site
offers it, or the site's own subtitles when the job asks for ``prefer_subtitles``. yt-dlp failures
become errors a person can act on: sign-in walls ask for cookies, private/removed/blocked media is
not retried, network trouble is.
"""

from __future__ import annotations

import importlib.util
import shutil
from http.cookiejar import MozillaCookieJar
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from protocol.urlguard import UnsafeURL, check_url
from worker import netguard
from worker.errors import AuthRequired, BadInput, JobCanceled, ProcessingError, TransientError
from worker.processors import transcript
from worker.processors.audio import media_available, transcribe_file
from worker.processors.base import JobInput, ProcessorConfig, ProcessResult
from worker.processors.js_runtime import yt_dlp_options
from worker.processors.transcript import Segment

COOKIE_HINT = (
    "add cookies for this site (PUT /api/v1/cookies with a Netscape cookies.txt) or start the worker "
    "with --cookies FILE / --cookies-from-browser BROWSER"
)
DOWNLOAD_SPAN = 0.3  # share of the progress bar the download takes; transcription takes the rest
# Checked in this order: "Private video. Sign in if you've been granted access" is private, not auth.
_BAD_INPUT = (
    "private video", "video unavailable", "has been removed", "no longer available", "been terminated",
    "available in your country", "geo restrict", "unsupported url", "not a valid url",
    "http error 404", "http error 410", "does not exist", "no video formats", "format is not available",
    "copyright", "is not available",
)  # fmt: skip
_AUTH = (
    "sign in to confirm", "not a bot", "login required", "log in", "sign in", "--cookies",
    "members-only", "join this channel", "confirm your age", "age-restricted",
)  # fmt: skip
_NETWORK = (
    "timed out", "timeout", "connection refused", "connection reset", "temporary failure",
    "name or service not known", "network is unreachable", "remote end closed", "incomplete read",
)  # fmt: skip


def _status(exc: BaseException | None) -> int | None:
    """The HTTP status somewhere in the cause chain of a yt-dlp error, if any."""
    seen = 0
    while exc is not None and seen < 10:
        status = getattr(exc, "status", None)
        if isinstance(status, int):
            return status
        nxt = getattr(exc, "cause", None) or exc.__cause__ or (getattr(exc, "exc_info", None) or (0, None))[1]
        exc, seen = (nxt if isinstance(nxt, BaseException) and nxt is not exc else None), seen + 1
    return None


def classify(exc: BaseException) -> ProcessingError:
    """The worker error for a yt-dlp failure (DownloadError/ExtractorError/transport errors)."""
    message = str(exc).replace("ERROR: ", "").strip() or type(exc).__name__
    text = message.lower()
    status = _status(exc)
    if any(p in text for p in _BAD_INPUT) or type(exc).__name__ in {"UnsupportedError", "GeoRestrictedError"}:
        return BadInput(f"the media cannot be downloaded: {message}")
    if any(p in text for p in _AUTH) or status in {401, 403}:
        return AuthRequired(f"the site refused access ({message}): {COOKIE_HINT}")
    if status is not None and (status >= 500 or status == 429):
        return TransientError(f"the site answered HTTP {status}; will retry: {message}")
    if status is not None and 400 <= status < 500:
        return BadInput(f"the site answered HTTP {status}: {message}")
    if any(p in text for p in _NETWORK):
        return TransientError(f"network error downloading the media: {message}")
    # Unknown yt-dlp failures are retried a bounded number of times by the server.
    return TransientError(f"downloading the media failed: {message}")


def _browser_cookies(browser: str, url: str, out: Path) -> Path:
    """Cookies for ``url``'s site read from a local browser profile, written as cookies.txt."""
    import browser_cookie3

    loader = getattr(browser_cookie3, browser.lower().replace("-", "_"), None)
    if browser.lower() in {"load", "all_browsers"} or not callable(loader):
        raise AuthRequired(f"unknown browser {browser!r} for --cookies-from-browser; {COOKIE_HINT}")
    host = urlsplit(url).hostname or ""
    domain = ".".join(host.split(".")[-2:])  # youtube.com covers www./m./music. subdomains
    try:
        jar = loader(domain_name=domain)
    except Exception as exc:  # no profile: FileNotFoundError; no keyring: KeyError; BrowserCookieError
        raise AuthRequired(
            f"could not read {browser} cookies on this worker ({type(exc).__name__}: {exc}); {COOKIE_HINT}"
        ) from exc
    mozilla = MozillaCookieJar(str(out))
    for cookie in jar:
        mozilla.set_cookie(cookie)
    mozilla.save(ignore_discard=True, ignore_expires=True)
    return out


def cookie_file(job: JobInput, config: ProcessorConfig) -> Path | None:
    """A private copy of the cookies to use (yt-dlp rewrites its cookie file on exit)."""
    copy = job.temp_dir / "cookies.txt"
    for source in (job.cookies_file, config.cookies_file):
        if source is not None:
            if not Path(source).is_file():
                raise AuthRequired(f"the cookies file {source} does not exist on this worker")
            shutil.copyfile(source, copy)
            return copy
    if config.cookies_from_browser and job.url:
        return _browser_cookies(config.cookies_from_browser, job.url, copy)
    return None


class _Logger:
    """Keeps yt-dlp's output off the worker's console; warnings are kept for the metadata."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def debug(self, msg: str) -> None:
        return None

    info = debug

    def warning(self, msg: str) -> None:
        self.warnings.append(msg)

    def error(self, msg: str) -> None:
        return None


def _pick_subtitles(info: dict[str, Any], language: str | None) -> tuple[str, dict[str, Any], bool] | None:
    """(language, track, automatic) of the best VTT/SRT subtitle track; manual before automatic."""
    for automatic, tracks in (
        (False, info.get("subtitles") or {}),
        (True, info.get("automatic_captions") or {}),
    ):
        langs = sorted(tracks, key=lambda lang: (not (language and lang.startswith(language)), lang))
        if automatic and not language:
            langs = [lang for lang in langs if lang.startswith("en")] or langs[:1]
        for lang in langs:
            for track in tracks[lang]:
                if track.get("ext") in {"vtt", "srt"} and (track.get("url") or track.get("data")):
                    return lang, track, automatic
    return None


class YoutubeProcessor:
    """Media URL (YouTube and anything yt-dlp supports) -> transcript from subtitles or Whisper."""

    content_types = ("youtube",)

    def available(self) -> tuple[bool, str]:
        if importlib.util.find_spec("yt_dlp") is None:
            return False, "yt-dlp is not installed: pip install '.[worker,media]'"
        return media_available()

    def _options(
        self, job: JobInput, config: ProcessorConfig, cookies: Path | None, canceled: list[JobCanceled]
    ) -> dict[str, Any]:

        def hook(d: dict[str, Any]) -> None:
            total = d.get("total_bytes") or d.get("total_bytes_estimate")
            if d.get("status") == "downloading" and total:
                done = d.get("downloaded_bytes") or 0
                try:
                    job.progress(DOWNLOAD_SPAN * min(1.0, done / total), f"downloading {done >> 20} MiB")
                except JobCanceled as exc:
                    import yt_dlp

                    canceled.append(exc)  # per job: one processor instance serves concurrent jobs
                    raise yt_dlp.utils.DownloadCancelled(str(exc)) from exc

        return {
            # Only yt-dlp's own downloaders (their sockets pass the address guard): no ffmpeg,
            # rtmpdump or aria2c fetching from another process.
            "format": (
                "bestaudio[protocol^=http]/bestaudio[protocol^=m3u8]/best[protocol^=http]/best[protocol^=m3u8]"
            ),
            "external_downloader": {"default": "native"},
            "hls_prefer_native": True,
            "concurrent_fragment_downloads": 1,  # fragments in this (guarded) thread
            "outtmpl": str(job.temp_dir / "media.%(ext)s"),
            "noplaylist": True,
            "quiet": True,
            "noprogress": True,
            "logger": _Logger(),
            "progress_hooks": [hook],
            "cookiefile": str(cookies) if cookies else None,
            "socket_timeout": config.fetch_timeout_s,
            "max_filesize": config.max_download_bytes,
            "retries": 2,
            "fragment_retries": 2,
            "extractor_retries": 1,
            "cachedir": False,
            **yt_dlp_options(),  # Deno for YouTube's JavaScript challenges
        }

    def process(self, job: JobInput, config: ProcessorConfig) -> ProcessResult:
        import yt_dlp

        if not job.url:
            raise BadInput("a media URL job needs a URL")
        try:
            check_url(job.url, allow_private=config.allow_private_urls)
        except UnsafeURL as exc:
            raise BadInput(f"refusing {job.url}: {exc}") from exc
        prefer_subs = job.options.get("prefer_subtitles", False)
        if not isinstance(prefer_subs, bool):
            raise BadInput(f"option 'prefer_subtitles' must be true or false, not {prefer_subs!r}")
        cookies = cookie_file(job, config)
        job.progress(0.0, "fetching media information")
        subs: list[Segment] = []
        sub_info: dict[str, Any] = {}
        media: Path | None = None
        canceled: list[JobCanceled] = []
        netguard.refuse_external_downloads()
        with netguard.guarded(config.allow_private_urls) as guard:
            try:
                with yt_dlp.YoutubeDL(self._options(job, config, cookies, canceled)) as ydl:
                    info = ydl.sanitize_info(ydl.extract_info(job.url, download=False))
                    if info.get("_type") in {"playlist", "multi_video"}:
                        entries = [e for e in info.get("entries") or [] if e]
                        if len(entries) != 1:
                            n = len(entries)
                            raise BadInput(f"{job.url} is a playlist of {n} items: submit each item")
                        info = entries[0]
                    picked = _pick_subtitles(info, job.options.get("language")) if prefer_subs else None
                    if picked is not None:
                        lang, track, automatic = picked
                        raw = track.get("data") or ydl.urlopen(track["url"]).read().decode("utf-8", "replace")
                        subs = transcript.parse_subtitles(raw)
                        sub_info = {"subtitle_language": lang, "subtitle_automatic": automatic}
                    if not subs:
                        done = ydl.process_ie_result(info, download=True)
                        files = [
                            Path(d["filepath"])
                            for d in done.get("requested_downloads") or []
                            if d.get("filepath")
                        ]
                        media = next((f for f in files if f.is_file()), None)
            except yt_dlp.utils.DownloadCancelled as exc:
                raise (canceled[0] if canceled else JobCanceled(str(exc))) from exc
            except (yt_dlp.utils.YoutubeDLError, OSError) as exc:
                if guard.refused:  # yt-dlp may word it as a network error: it is the guard, not retried
                    raise BadInput(f"refusing {job.url}: it leads to {', '.join(guard.refused[:3])}") from exc
                raise classify(exc) from exc
        if guard.refused and not subs and media is None:
            raise BadInput(f"refusing {job.url}: it leads to {', '.join(guard.refused[:3])}")
        if not subs and media is None:
            raise BadInput(
                f"nothing was downloaded from {job.url} (no media, or larger than "
                f"{config.max_download_bytes >> 20} MiB)"
            )
        return self._result(job, config, info, subs, sub_info, media)

    def _result(
        self,
        job: JobInput,
        config: ProcessorConfig,
        info: dict[str, Any],
        subs: list[Segment],
        sub_info: dict[str, Any],
        media: Path | None,
    ) -> ProcessResult:
        title = str(info.get("title") or job.url)
        meta: dict[str, Any] = {
            "source_url": job.url,
            "title": title,
            "uploader": info.get("uploader"),
            "duration": info.get("duration"),
            "webpage_url": info.get("webpage_url") or job.url,
            "extractor": info.get("extractor_key") or info.get("extractor"),
        }
        lines = [("Source", str(meta["webpage_url"]))]
        if meta["uploader"]:
            lines.append(("Uploader", str(meta["uploader"])))
        if subs:
            lang = sub_info["subtitle_language"]
            kind = "automatic captions" if sub_info["subtitle_automatic"] else "subtitles"
            lines += [("Duration", transcript.format_timestamp(meta["duration"] or subs[-1].end)),
                      ("Transcript", f"the site's {kind} ({lang})"),
                      ("Words", str(transcript.word_count(subs)))]  # fmt: skip
            meta.update(sub_info, transcript_source="subtitles", language=lang, diarization=False)
            meta.update(word_count=transcript.word_count(subs), segments=[s.as_dict() for s in subs])
            gap = transcript.DEFAULT_PARAGRAPH_GAP_S
            segments = subs
        else:
            assert media is not None
            result = transcribe_file(media, job, config, span=(DOWNLOAD_SPAN, 1.0))
            lines += result.meta_lines()
            meta.update(result.metadata(), transcript_source="whisper")
            meta["duration"] = meta["duration"] or result.duration
            gap, segments = result.options.paragraph_gap_s, result.segments
        job.progress(1.0, "done")
        return ProcessResult(markdown=transcript.render(title, lines, segments, gap), metadata=meta)
