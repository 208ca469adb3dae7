"""What a processor is: a pure function of a local input (file or URL) to markdown + metadata.

Processors never talk to the morag server. They run in a worker thread; they report progress
through ``ctx.progress(fraction, message)``, which raises ``JobCanceled`` when the job was
canceled, so long loops stop promptly. They raise ``worker.errors.ProcessingError`` subclasses
for failures a user can act on (``BadInput`` for corrupt input, ``TransientError`` for network
trouble, ...); anything else is reported as an internal, retryable error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

ProgressFn = Callable[[float, str], None]


def _no_progress(fraction: float, message: str) -> None:
    return None


@dataclass
class ProcessorConfig:
    """Worker-wide settings processors read (from the command line / MORAG_WORKER_* env)."""

    device: str = "auto"  # auto | cuda | cpu
    whisper_model: str = "base"  # a model name or a local CTranslate2 directory
    docling_artifacts: Path | None = None  # local copy of docling's layout models
    allow_private_urls: bool = False  # let web/media URL jobs reach loopback/private addresses
    cookies_file: Path | None = None  # the worker's own Netscape cookies.txt
    cookies_from_browser: str | None = None
    max_download_bytes: int = 2 * 1024**3
    fetch_timeout_s: float = 60.0
    ffmpeg_timeout_s: float = 600.0  # the longest one ffmpeg/ffprobe call may run


@dataclass
class JobInput:
    """One job as a processor sees it."""

    content_type: str
    options: dict[str, Any]
    temp_dir: Path  # private to this job, removed when it ends; created before the processor runs
    #               unless the processor says ``uses_temp_dir = False``
    path: Path | None = None  # the downloaded input file, if the job had one
    url: str | None = None  # the source URL, if the job is a URL job
    cookies_file: Path | None = None  # cookies for `url` handed by the server (Netscape format)
    file_name: str | None = None  # the name the user uploaded the file under
    progress: ProgressFn = _no_progress


@dataclass
class ProcessResult:
    markdown: str
    metadata: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)  # binary outputs (thumbnails, ...)


class Processor(Protocol):
    #: content types this processor handles (values of protocol.states.ContentType)
    content_types: tuple[str, ...]

    def available(self) -> tuple[bool, str]:
        """(True, "") when its libraries/tools are installed, else (False, how to fix it)."""
        ...

    def process(self, job: JobInput, config: ProcessorConfig) -> ProcessResult:
        """Process one job; raise worker.errors.ProcessingError subclasses on failure."""
        ...
