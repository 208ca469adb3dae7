"""The worker's settings: one object per process, from flags or ``MORAG_WORKER_*`` variables."""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from worker.processors.base import ProcessorConfig

ENV_PREFIX = "MORAG_WORKER_"
_TRUE = {"1", "true", "yes", "on"}


def env_name(option: str) -> str:
    """``--temp-dir`` -> ``MORAG_WORKER_TEMP_DIR``."""
    return ENV_PREFIX + option.lstrip("-").replace("-", "_").upper()


def env_bool(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def split_list(value: str | list[str] | None) -> list[str] | None:
    """``"gpu, cpu"`` -> ``["gpu", "cpu"]``; empty -> None (meaning: the default)."""
    if value is None:
        return None
    items = value if isinstance(value, list) else value.split(",")
    out = [i.strip() for i in items if i.strip()]
    return out or None


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
    cookies: Path | None = None
    cookies_from_browser: str | None = None
    allow_private_urls: bool = False
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
    def jobs_dir(self) -> Path:
        return self.temp_dir / "jobs"

    def processor_config(self) -> ProcessorConfig:
        """What processors read of these settings."""
        return ProcessorConfig(
            device=self.device,
            whisper_model=self.whisper_model,
            allow_private_urls=self.allow_private_urls,
            cookies_file=self.cookies,
            cookies_from_browser=self.cookies_from_browser,
        )
