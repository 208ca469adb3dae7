"""Per-job progress (one line per step on the terminal, the same numbers in heartbeats) and logging.

A job's overall fraction maps its phases onto one scale: download 0-10 %, processing 10-95 %,
upload 95-100 %, so the user's task status moves forward steadily whatever the phase.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any

log = logging.getLogger("morag.worker")

PHASES = {"download": (0.0, 0.10), "processing": (0.10, 0.95), "upload": (0.95, 1.0)}


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class JobProgress:
    """Where one job stands; thread-safe (the processor reports from its own thread)."""

    def __init__(self, job_id: str, content_type: str, *, min_interval_s: float = 1.0) -> None:
        self.job_id, self.content_type = job_id, content_type
        self.phase, self.fraction, self.message = "claimed", 0.0, "claimed"
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._last_line = 0.0
        self._last_phase = ""
        self._last_pct = -1

    def update(self, phase: str, fraction: float, message: str = "") -> None:
        """Record progress within ``phase`` (0..1) and print a line when it moved enough."""
        lo, hi = PHASES.get(phase, (0.0, 1.0))
        fraction = min(max(fraction, 0.0), 1.0)
        with self._lock:
            self.phase = phase
            self.fraction = round(lo + (hi - lo) * fraction, 4)
            self.message = f"{phase}: {message}" if message else phase
            now = time.monotonic()
            pct = int(fraction * 100)
            due = phase != self._last_phase or (pct == 100 and self._last_pct != 100)
            if not due and now - self._last_line < self.min_interval_s:
                return
            self._last_line, self._last_phase, self._last_pct = now, phase, pct
        log.info(
            "job %s [%s] %-10s %3d%% %s",
            self.job_id,
            self.content_type,
            phase,
            pct,
            message,
            extra={"job_id": self.job_id, "phase": phase, "progress": self.fraction},
        )

    def download(self, have: int, total: int | None) -> None:
        frac = have / total if total else 0.0
        size = f"{human_bytes(have)} of {human_bytes(total)}" if total else human_bytes(have)
        self.update("download", frac, size)

    def snapshot(self) -> tuple[float, str]:
        """(overall fraction, message) for a heartbeat."""
        with self._lock:
            return self.fraction, self.message


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and any job fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("job_id", "phase", "progress"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    """Log to stderr as text lines or JSON lines (``--log-format``)."""
    # Neither format prints the caller's file and line, the thread or the process: not looking
    # them up for each record is the logging module's documented optimization (a few lines per
    # job; the caller lookup alone was ~1% of a busy worker's samples).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("morag")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # httpx logs every request at INFO: too chatty for a worker that long-polls.
    logging.getLogger("httpx").setLevel(logging.WARNING)
