"""Operations: ``/ready`` (dependencies up?), ``/metrics`` (Prometheus), ``/docs`` offline, ``/``.

``/health`` (in app.py) says the process is alive; ``/ready`` says it can do its work: the database
answers, the vector store opens, the embedder loads. A load balancer should route on ``/ready``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel, Field
from sqlalchemy import text

from api import metrics
from api.state import AppState

log = logging.getLogger("morag.ops")
router = APIRouter(tags=["meta"])
CHECK_TIMEOUT_S = 5.0


class Check(BaseModel):
    ok: bool
    detail: str = Field(description="What was checked, or why it failed.")
    seconds: float


class Readiness(BaseModel):
    status: str = Field(description="`ready`, or `not ready` when a check failed.", examples=["ready"])
    checks: dict[str, Check]
    warnings: list[str] = Field(default_factory=list, description="Trouble ahead (not failing yet).")


_READY_EXAMPLE = {
    "status": "ready",
    "checks": {
        "database": {"ok": True, "detail": "postgresql answers", "seconds": 0.002},
        "vector_store": {"ok": True, "detail": "qdrant local mode, 1204 points", "seconds": 0.011},
        "embedder": {"ok": True, "detail": "all-MiniLM-L6-v2-onnx-int8 loaded (384-d)", "seconds": 0.0},
    },
    "warnings": [],
}
_NOT_READY_EXAMPLE = {
    "status": "not ready",
    "checks": {
        "database": {
            "ok": False,
            "detail": "ConnectionRefusedError: [Errno 111] Connection refused",
            "seconds": 0.004,
        },
        "vector_store": {"ok": True, "detail": "qdrant server, 52000 points", "seconds": 0.02},
        "embedder": {"ok": True, "detail": "all-MiniLM-L6-v2-onnx-int8 loaded (384-d)", "seconds": 0.0},
    },
    "warnings": [],
}


async def _timed(coro: Any) -> Check:
    start = time.perf_counter()
    try:
        detail = await asyncio.wait_for(coro, CHECK_TIMEOUT_S)
        return Check(ok=True, detail=detail, seconds=round(time.perf_counter() - start, 4))
    except TimeoutError:
        return Check(
            ok=False,
            detail=f"no answer in {CHECK_TIMEOUT_S:g} s",
            seconds=round(time.perf_counter() - start, 4),
        )
    except Exception as exc:
        message = getattr(exc, "message", None) or str(exc)
        return Check(
            ok=False,
            detail=f"{type(exc).__name__}: {message}"[:500],
            seconds=round(time.perf_counter() - start, 4),
        )


async def _database(state: AppState) -> str:
    async with state.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    return f"{state.engine.dialect.name} answers"


async def _vector_store(app: FastAPI, warnings: list[str]) -> str:
    indexer = app.state.indexer
    await indexer.ensure_ready()
    store = indexer.store
    points = await store.approximate_count()
    limit = app.state.morag.settings.qdrant_local_max_points
    if store.is_local and points > limit:
        warnings.append(local_mode_warning(points, limit))
    return f"qdrant {'local mode' if store.is_local else 'server'}, {points} points"


def local_mode_warning(points: int, limit: int) -> str:
    return (
        f"Qdrant local mode holds {points} points (past {limit}): searches slow down (~1 s at 20,000) "
        "and start-up too; move to a Qdrant server (docs/deployment.md, MORAG_QDRANT_URL)"
    )


async def _embedder(app: FastAPI) -> str:
    embedder = app.state.indexer.embedder
    load = getattr(embedder, "load", None)
    if load is None:  # a remote API (Gemini): probing it would cost a request per probe
        return f"{embedder.name} configured ({embedder.dimension}-d, remote, not probed)"
    await asyncio.to_thread(load)
    return f"{embedder.name} loaded ({embedder.dimension}-d)"


@router.get(
    "/ready",
    operation_id="ready",
    response_model=Readiness,
    responses={
        200: {"content": {"application/json": {"example": _READY_EXAMPLE}}},
        503: {
            "model": Readiness,
            "description": "A dependency is down; `checks` says which and why.",
            "content": {"application/json": {"example": _NOT_READY_EXAMPLE}},
        },
    },
)
async def ready(request: Request) -> JSONResponse:
    """Readiness: the database, the vector store and the embedder work (503 with the reason if not)."""
    app: FastAPI = request.app
    state: AppState = app.state.morag
    warnings: list[str] = []
    db, vs, emb = await asyncio.gather(
        _timed(_database(state)), _timed(_vector_store(app, warnings)), _timed(_embedder(app))
    )
    for w in warnings:
        log.warning("%s", w)
    body = Readiness(
        status="ready" if db.ok and vs.ok and emb.ok else "not ready",
        checks={"database": db, "vector_store": vs, "embedder": emb},
        warnings=warnings,
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "ready" else 503)


_METRICS_EXAMPLE = (
    "# HELP morag_jobs Live jobs (queued, running) by lane kind and state.\n"
    "# TYPE morag_jobs gauge\n"
    'morag_jobs{lane="gpu",state="queued"} 3.0\n'
)


@router.get(
    "/metrics",
    operation_id="metrics",
    response_class=Response,
    responses={
        200: {
            "content": {metrics.CONTENT_TYPE: {"schema": {"type": "string"}, "example": _METRICS_EXAMPLE}},
            "description": "Prometheus text format.",
        },
        503: {"description": "The database does not answer (the queue's numbers cannot be read)."},
    },
)
async def get_metrics(request: Request) -> Response:
    """Prometheus metrics: requests, uploads, queue events, jobs by lane and state, workers online."""
    app: FastAPI = request.app
    state: AppState = app.state.morag
    extra: list[GaugeMetricFamily] = []
    store = getattr(getattr(app.state, "indexer", None), "store", None)
    if store is not None and getattr(store, "_client", None) is not None:  # only when already open
        try:
            points = GaugeMetricFamily("morag_vector_points", "Points in the vector store (estimate).")
            points.add_metric([], await asyncio.wait_for(store.approximate_count(), CHECK_TIMEOUT_S))
            extra.append(points)
        except Exception as exc:  # the vector store's trouble is /ready's to report
            log.debug("vector point count skipped: %s", exc)
    try:
        body = await metrics.render(state.jobs, extra)
    except Exception as exc:
        log.warning("metrics: database unavailable: %s", exc)
        return Response(
            f"database unavailable: {type(exc).__name__}\n", status_code=503, media_type="text/plain"
        )
    return Response(body, media_type=metrics.CONTENT_TYPE)


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    """The API's documentation is the front page."""
    return RedirectResponse("/docs")


@router.get("/docs", include_in_schema=False)
async def docs() -> HTMLResponse:
    """Swagger UI from the app's own assets (works offline); "Authorize" takes an API key."""
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="morag-remote API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon.png",
        swagger_ui_parameters={"persistAuthorization": True, "displayOperationId": True},
    )


def install(app: FastAPI) -> None:
    """Routes and the Swagger UI assets (the lifespan starts the local vector store's size check)."""
    app.include_router(router)
    assets = StaticFiles(directory=str(_swagger_assets()))
    app.mount("/docs/assets", assets, name="docs-assets")


def _swagger_assets() -> Path:
    """Swagger UI 5 (reads OpenAPI 3.1) as shipped by the fastapi-offline package (MIT)."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).resolve().parent / "static"


async def start_local_store_check(app: FastAPI, state: AppState) -> None:
    """Warn in the log when a local-mode collection is past the size it handles well."""

    async def check() -> None:
        store = app.state.indexer.store
        if not store.is_local:
            return
        try:
            points = await store.approximate_count()
        except Exception as exc:  # another process holds it, or it is new: /ready reports
            log.debug("local vector store not counted: %s", exc)
            return
        if points > state.settings.qdrant_local_max_points:
            log.warning("%s", local_mode_warning(points, state.settings.qdrant_local_max_points))

    app.state.local_store_check = asyncio.create_task(check())


async def stop_local_store_check(app: FastAPI) -> None:
    task = getattr(app.state, "local_store_check", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
