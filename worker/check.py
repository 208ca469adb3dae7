"""``python -m worker check``: validate the whole setup at once, with a fix for every failure.

Each check returns a ``Check`` (ok / warn / fail, what was found, how to fix it). The exit code is
0 only when no check failed; warnings (an optional processor not installed) do not fail.
docs/worker-setup.md has a troubleshooting entry for every check here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from protocol import PROTOCOL_VERSION
from protocol.errors import ErrorCode
from protocol.models import HelloResponse
from protocol.states import Scope
from worker.client import AuthFailed, ServerError, ServerRejected, WorkerClient
from worker.config import WorkerConfig
from worker.cookies import check_browser, check_cookies_file
from worker.runner import detect_lanes

MEDIA_TYPES = {"audio", "video", "youtube"}


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def gpu_summary(csv_line: str) -> str:
    """``NVIDIA H200, 143771 MiB, 143153 MiB`` -> ``NVIDIA H200 (143771 MiB total, 143153 MiB free)``."""
    parts = [p.strip() for p in csv_line.split(",")]
    if len(parts) != 3:
        return csv_line.strip()
    name, total, free = parts
    return f"{name} ({total} total, {free} free)"


def cuda_devices() -> tuple[int, str]:
    """(CUDA devices CTranslate2 sees, a memory summary from nvidia-smi when it is there)."""
    try:
        import ctranslate2

        count = int(ctranslate2.get_cuda_device_count())
    except Exception:  # not installed, or a CUDA runtime that does not load
        count = 0
    summary = ""
    if count and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
            summary = "; ".join(gpu_summary(line) for line in out.splitlines() if line.strip())
        except (OSError, subprocess.SubprocessError):
            summary = ""
    return count, summary


def describe_device(device: str) -> str:
    """What processes this worker's jobs, for the server's worker list (``--device``: auto, cuda, cpu)."""
    gpus, summary = cuda_devices() if device != "cpu" else (0, "")
    if gpus:
        return f"cuda: {summary or f'{gpus} GPU(s)'}"[:200]
    return f"cpu: {os.cpu_count() or 1} cores"


def unreachable_fix(server: str, message: str) -> str:
    """The fix for a server that could not be reached, told apart by what the connection said."""
    text = message.lower()
    if "wrong_version_number" in text or "wrong version number" in text:
        plain = "http://" + server.split("://", 1)[-1]
        return (
            f"the server answers plain HTTP at this address, not HTTPS: use --server {plain} "
            "(or ask the operator for the HTTPS address, e.g. behind a TLS proxy)"
        )
    if "certificate_verify_failed" in text or "certificate verify failed" in text:
        return (
            "this machine does not trust the server's TLS certificate: install its CA "
            "(update-ca-certificates) or point SSL_CERT_FILE at the CA bundle"
        )
    return (
        f"is the server running and reachable from here? try: curl {server}/health ; "
        "check --server, firewalls and proxies"
    )


async def check_server(
    config: WorkerConfig, client: WorkerClient
) -> tuple[list[Check], HelloResponse | None]:
    """Server reachable, protocol compatible, key valid and of a worker scope."""
    try:
        hello = await client.hello()
    except AuthFailed as exc:
        reach = Check("server reachable", "ok", f"{config.server} answered")
        if exc.code == ErrorCode.wrong_scope:
            return [
                reach,
                Check(
                    "API key",
                    "fail",
                    exc.message,
                    "this is not a worker key: python -m api keys create --user NAME --scope worker",
                ),
            ], None
        return [
            reach,
            Check(
                "API key",
                "fail",
                exc.message,
                "check --api-key; ask the operator for a worker key (keys may have been revoked)",
            ),
        ], None
    except ServerRejected as exc:
        return [
            Check(
                "server reachable",
                "fail",
                exc.message,
                "is --server the morag-remote base URL (no /api/v1 suffix)?",
            )
        ], None
    except ServerError as exc:
        return [
            Check("server reachable", "fail", exc.message, unreachable_fix(config.server, exc.message))
        ], None
    out = [Check("server reachable", "ok", f"{config.server} (server {hello.server_version})")]
    major = hello.protocol_version.split(".")[0]
    if major != PROTOCOL_VERSION.split(".")[0]:
        out.append(
            Check(
                "protocol version",
                "fail",
                f"server {hello.protocol_version}, worker {PROTOCOL_VERSION}",
                "install the worker version that matches the server: pip install -U '.[worker]'",
            )
        )
    else:
        out.append(Check("protocol version", "ok", hello.protocol_version))
    out.append(
        Check("API key", "ok", f"{hello.scope} key of user {hello.user or '-'}; lease {hello.lease_s:.0f} s")
    )
    return out, hello


def check_lanes(config: WorkerConfig, hello: HelloResponse | None, gpus: int) -> Check:
    """Which lanes the worker will serve, and whether that fits the machine and the key."""
    if hello is not None and hello.scope == Scope.shared_worker:
        return Check("lanes", "ok", "default (shared worker key: jobs of every user)")
    lanes = config.lanes or detect_lanes()
    bad = [lane for lane in lanes if lane not in ("gpu", "cpu")]
    if bad:
        return Check("lanes", "fail", f"unknown lane(s) {bad}", "use --lanes gpu,cpu (or one of them)")
    if "gpu" in lanes and gpus == 0:
        return Check(
            "lanes",
            "fail",
            "gpu lane requested but no CUDA device is visible",
            "install the NVIDIA driver + CUDA 12 runtime, or use --lanes cpu",
        )
    return Check("lanes", "ok", ",".join(lanes) + ("" if config.lanes else " (detected)"))


def check_cuda(config: WorkerConfig, gpus: int, memory: str) -> Check:
    if gpus:
        return Check("CUDA", "ok", f"{gpus} device(s)" + (f": {memory}" if memory else ""))
    if config.device == "cuda":
        return Check(
            "CUDA",
            "fail",
            "--device cuda but CTranslate2 sees no CUDA device",
            "install the NVIDIA driver and CUDA 12 + cuDNN 9 libraries (see docs/worker-setup.md), "
            "or use --device auto/cpu",
        )
    return Check("CUDA", "ok", "no CUDA device: processing on the CPU")


def check_processors(config: WorkerConfig) -> tuple[list[Check], list[str]]:
    """One line per processor; requested-but-missing ones fail, other missing ones only warn."""
    from worker.processors import REGISTRY, availability

    out, served = [], []
    wanted = set(config.content_types or [])
    for ct in config.content_types or []:
        if ct not in REGISTRY:
            out.append(
                Check(
                    f"processor {ct}",
                    "fail",
                    "unknown content type",
                    f"--content-types takes: {', '.join(REGISTRY)}",
                )
            )
    for ct in REGISTRY:
        try:
            ok, why = availability(ct)
        except Exception as exc:  # a processor that crashes on import is a broken install
            ok, why = False, f"{type(exc).__name__}: {exc}"
        if ok and (not wanted or ct in wanted):
            served.append(ct)
            out.append(Check(f"processor {ct}", "ok", "available"))
        elif ok:
            out.append(Check(f"processor {ct}", "ok", "available (not requested)"))
        else:
            status = "fail" if ct in wanted else "warn"
            out.append(Check(f"processor {ct}", status, "not available", why))
    return out, served


def check_ffmpeg(config: WorkerConfig) -> Check:
    """ffmpeg is needed for video only (audio files and media URLs are decoded by PyAV)."""
    path = shutil.which("ffmpeg")
    if path and shutil.which("ffprobe"):
        return Check("ffmpeg", "ok", path)
    status = "fail" if "video" in (config.content_types or []) else "warn"
    return Check(
        "ffmpeg",
        status,
        "ffmpeg/ffprobe not on PATH: video is not offered (audio and media URLs work without it)",
        "apt install ffmpeg / brew install ffmpeg / winget install ffmpeg",
    )


def check_youtube(config: WorkerConfig, served: list[str]) -> Check | None:
    """YouTube needs Deno and yt-dlp-ejs (other sites the youtube type downloads from do not)."""
    if "youtube" not in served:
        return None
    from worker.processors.js_runtime import youtube_ready

    ok, detail = youtube_ready()
    if ok:
        return Check("youtube (JavaScript runtime)", "ok", detail)
    status = "fail" if "youtube" in (config.content_types or []) else "warn"
    missing, _, fix = detail.partition(": ")
    return Check("youtube (JavaScript runtime)", status, f"{missing} (other media sites work)", fix)


def check_whisper(config: WorkerConfig, served: list[str]) -> Check:
    """Load the Whisper model once (only when this worker will transcribe)."""
    if not MEDIA_TYPES & set(served):
        return Check("whisper model", "ok", "not needed (no audio/video processor served)")
    from worker.processors.whisper import load_model

    start = time.monotonic()
    try:
        loaded = load_model(config.whisper_model, config.device)
    except Exception as exc:
        return Check(
            "whisper model",
            "fail",
            f"{config.whisper_model!r}: {exc}",
            "give a model name the hub has (tiny, base, small, medium, large-v3) with network access, "
            "or a local CTranslate2 directory with --whisper-model /path/to/model",
        )
    took = time.monotonic() - start
    return Check(
        "whisper model", "ok", f"{loaded.name} on {loaded.device} ({loaded.compute_type}), {took:.1f} s"
    )


def check_temp_dir(config: WorkerConfig) -> Check:
    path = config.temp_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path) as fh:
            fh.write(b"ok")
            fh.flush()
    except OSError as exc:
        return Check(
            "temp dir",
            "fail",
            f"{path} is not writable ({exc})",
            "choose a writable directory with --temp-dir (or MORAG_WORKER_TEMP_DIR)",
        )
    free_gb = shutil.disk_usage(path).free / 1e9
    if free_gb < config.min_free_gb:
        return Check(
            "temp dir",
            "fail",
            f"{path}: only {free_gb:.1f} GB free (want {config.min_free_gb:g})",
            "free disk space or point --temp-dir at a larger disk",
        )
    return Check("temp dir", "ok", f"{path} writable, {free_gb:.1f} GB free")


def check_cookies(config: WorkerConfig) -> list[Check]:
    out = []
    if config.cookies:
        ok, detail = check_cookies_file(Path(config.cookies))
        out.append(
            Check(
                "cookies file",
                "ok" if ok else "fail",
                detail,
                ""
                if ok
                else "export cookies.txt (Netscape format) with a browser extension; "
                "see docs/worker-setup.md#cookies",
            )
        )
    if config.cookies_from_browser:
        ok, detail = check_browser(config.cookies_from_browser)
        out.append(
            Check(
                "browser cookies",
                "ok" if ok else "fail",
                detail,
                ""
                if ok
                else "run the worker in the desktop session of the browser's user, "
                "or export a cookies.txt and use --cookies FILE",
            )
        )
    if not out:
        out.append(Check("cookies", "ok", "none configured (only needed for sign-in-only media)"))
    return out


def render(checks: list[Check]) -> str:
    marks = {"ok": "[ OK ]", "warn": "[WARN]", "fail": "[FAIL]"}
    lines = []
    for c in checks:
        lines.append(f"{marks[c.status]} {c.name}: {c.detail}")
        if c.fix and c.status != "ok":
            lines.append(f"       fix: {c.fix}")
    failed = sum(c.status == "fail" for c in checks)
    lines.append("all checks passed" if not failed else f"{failed} check(s) failed")
    return "\n".join(lines)


async def collect(config: WorkerConfig, client: WorkerClient | None = None) -> list[Check]:
    """Every check, in the order a person fixes them."""
    own = client is None
    client = client or WorkerClient(
        config.server, config.api_key, timeout_s=10, retry_base_s=0.5, max_tries=2, max_time_s=10
    )
    try:
        checks, hello = await check_server(config, client)
    finally:
        if own:
            await client.aclose()
    gpus, memory = cuda_devices()
    checks.append(check_lanes(config, hello, gpus))
    checks.append(check_cuda(config, gpus, memory))
    proc_checks, served = check_processors(config)
    checks.append(check_ffmpeg(config))
    checks.extend(proc_checks)
    youtube = check_youtube(config, served)
    if youtube is not None:
        checks.append(youtube)
    checks.append(check_whisper(config, served))
    checks.append(check_temp_dir(config))
    checks.extend(check_cookies(config))
    return checks


async def run_checks(config: WorkerConfig, client: WorkerClient | None = None) -> int:
    """Print the checklist; 0 only if nothing failed."""
    checks = await collect(config, client)
    print(render(checks), flush=True)
    return 1 if any(c.status == "fail" for c in checks) else 0
