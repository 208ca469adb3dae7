"""The worker's settings: one object per process, from flags or ``MORAG_WORKER_*`` variables.

This module is the one source of the worker's defaults (``WorkerConfig``'s fields; the command
line reads them from there) and of its retry delays (``backoff_delay``).
"""

from __future__ import annotations

import os
import random
import socket
import tempfile
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from worker.processors.base import ProcessorConfig

ENV_PREFIX = "MORAG_WORKER_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_name(option: str) -> str:
    """``--temp-dir`` -> ``MORAG_WORKER_TEMP_DIR``."""
    return ENV_PREFIX + option.lstrip("-").replace("-", "_").upper()


def env_bool(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def parse_bool(value: str) -> bool:
    """``true``/``1``/``yes``/``on`` or ``false``/``0``/``no``/``off``; anything else is an error."""
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"not a yes/no value: {value!r} (use true or false)")


def split_list(value: str | list[str] | None) -> list[str] | None:
    """``"gpu, cpu"`` -> ``["gpu", "cpu"]``; empty -> None (meaning: the default)."""
    if value is None:
        return None
    items = value if isinstance(value, list) else value.split(",")
    out = [i.strip() for i in items if i.strip()]
    return out or None


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """The wait before retry number ``attempt`` (0-based): full-jitter exponential backoff.

    The one backoff formula of the worker: the HTTP client's retries and the claim loop's waits
    after an outage both use it.
    """
    ceiling = min(cap, base * 2 ** min(attempt, 30))
    return (rng or random).uniform(0, max(ceiling, 0.0))


def default_temp_dir() -> Path:
    return Path(os.environ.get(env_name("temp-dir")) or Path(tempfile.gettempdir()) / "morag-worker")


@dataclass
class WorkerConfig:
    """Everything a worker process is told; defaults run on one machine with nothing else installed."""

    api_key: str = ""
    server: str = "http://127.0.0.1:8000"
    lanes: list[str] | None = None  # None: gpu when a CUDA device is found, else cpu
    content_types: list[str] | None = None  # None: every type whose processor is installed
    concurrency: int = 1
    name: str = field(default_factory=socket.gethostname)
    temp_dir: Path = field(default_factory=default_temp_dir)
    spool_dir: Path | None = None  # results waiting for the server; default temp_dir/spool
    device: str = "auto"
    whisper_model: str = "base"
    docling_artifacts: Path | None = None  # a local copy of docling's layout models (offline PDFs)
    cookies: Path | None = None
    cookies_from_browser: str | None = None
    allow_private_urls: bool = False
    max_download_mb: float = 2048.0  # the most a URL job may download
    fetch_timeout_s: float = 60.0  # network timeout of URL jobs
    ffmpeg_timeout_s: float = 600.0  # the longest one ffmpeg/ffprobe call may run
    isolation: str = "process"  # process: each slot's jobs run in a child process the worker can kill
    kill_after_s: float = 1.0  # a stopped child gets this long after SIGTERM before SIGKILL
    spool_after_s: float = 1.0  # results of jobs that ran this long go to disk before they are sent
    prefetch: int = -1  # jobs leased ahead of free slots while jobs are short; -1: as the slots start them
    #                    within prefetch_below_s, 1-8 per slot (Runner.prefetch)
    prefetch_below_s: float = 0.1  # prefetch only while the recent jobs ran shorter than this
    prefetch_wait_s: float = 1.0  # a prefetched job waiting this long (at least 2x prefetch_below_s)
    #                               for a slot goes back to the queue (0: never)
    standby: int = 1  # 1: a standby claim is open while every slot and prefetched place is taken
    pipeline: int = 2  # jobs written to a busy slot's child behind its current one (process slots)
    pipeline_below_s: float = 0.02  # ...only while the recent jobs ran shorter than this
    once: bool = False
    log_format: str = "text"
    grace_s: float = 30.0  # on SIGINT/SIGTERM: time to finish current jobs before giving them back
    claim_wait_s: float = 20.0
    retry_base_s: float = 1.0
    retry_cap_s: float = 30.0
    request_timeout_s: float = 30.0
    min_free_gb: float = 2.0  # `worker check` wants this much free space in temp_dir

    @property
    def spool(self) -> Path:
        return self.spool_dir or self.temp_dir / "spool"

    @property
    def give_back_after_s(self) -> float | None:
        """How long a prefetched job waits for a slot before it goes back to the queue (None: ever)."""
        if self.prefetch_wait_s <= 0:
            return None
        return max(self.prefetch_wait_s, 2 * self.prefetch_below_s)

    @property
    def jobs_dir(self) -> Path:
        return self.temp_dir / "jobs"

    def processor_config(self) -> ProcessorConfig:
        """What processors read of these settings."""
        return ProcessorConfig(
            device=self.device,
            whisper_model=self.whisper_model,
            docling_artifacts=self.docling_artifacts,
            allow_private_urls=self.allow_private_urls,
            cookies_file=self.cookies,
            cookies_from_browser=self.cookies_from_browser,
            max_download_bytes=int(self.max_download_mb * 1024**2),
            fetch_timeout_s=self.fetch_timeout_s,
            ffmpeg_timeout_s=self.ffmpeg_timeout_s,
        )


def default_of(name: str) -> Any:
    """A field's default (None for those computed at start, such as the host name)."""
    for f in fields(WorkerConfig):
        if f.name == name:
            return None if f.default is MISSING else f.default
    raise KeyError(name)
