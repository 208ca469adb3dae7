"""``python -m api serve``: logging, one or several uvicorn processes, multi-process metrics."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from api.httpprotocols import http_protocol
from api.logging_setup import configure_logging, log_config
from api.settings import Settings

log = logging.getLogger("morag.serve")


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's connection limits and timeouts from the settings (idle and slow clients are closed).

    ``http`` is uvicorn's own protocol plus a deadline on the request head (api/httpprotocols.py):
    uvicorn has no timeout for headers that trickle in.
    """
    return {
        "http": http_protocol(settings),
        "timeout_keep_alive": settings.http_keep_alive_s,
        "limit_concurrency": settings.http_limit_concurrency,
        "h11_max_incomplete_event_size": settings.http_max_header_bytes,
        "timeout_graceful_shutdown": settings.http_graceful_shutdown_s,
    }


def serve(
    settings: Settings, *, host: str, port: int, workers: int = 1, log_level: str | None = None
) -> None:
    """Run the server; ``workers`` > 1 forks that many processes sharing the port (PostgreSQL only)."""
    import uvicorn

    level = (log_level or settings.log_level).lower()  # uvicorn knows lower-case names only
    configure_logging(level, json_lines=settings.log_json)
    common = {
        "host": host,
        "port": port,
        "log_config": log_config(level, json_lines=settings.log_json),
        "log_level": level,
        "access_log": False,  # api.logging_setup writes the access log (request id, redaction)
        **server_options(settings),
    }
    if workers > 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _prometheus_multiproc_dir()  # before prometheus_client is imported: it reads this once
    if workers <= 1:
        from api.app import create_app

        uvicorn.run(create_app(settings), **common)
        return
    if settings.is_sqlite:
        log.warning("%d processes on SQLite: writes queue behind one lock; use PostgreSQL", workers)
    if not settings.qdrant_url:
        log.warning(
            "%d processes with Qdrant local mode: only one process can open %s, the others answer "
            "searches with 503 and /ready fails; set MORAG_QDRANT_URL to a Qdrant server",
            workers,
            settings.data_dir / "qdrant",
        )
    # Each process builds its own app from the same environment (Settings() in create_app).
    uvicorn.run("api.app:create_app", factory=True, workers=workers, **common)


def _prometheus_multiproc_dir() -> None:
    """Several processes share /metrics through files (prometheus-client multi-process mode).

    Its metric files must be gone at start (a previous run's would add up); nothing else is touched.
    """
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(given) if given else Path(tempfile.gettempdir()) / f"morag-metrics-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    log.info("metrics of all server processes are gathered in %s", path)
