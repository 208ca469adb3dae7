"""The FastAPI application: ``create_app(settings)`` builds one; nothing happens at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from api import db, logfilter, openapi_doc
from api.background import BackgroundService
from api.bodylimit import JSONBodyLimit
from api.cookies import CookieSource
from api.errors import documented, install_handlers
from api.events import JobEvents
from api.fastpath import FastRoutes, plan_routes
from api.guards import StorableURL
from api.indexing.service import Indexer
from api.indexing.stage import IndexingStage, index_config
from api.jobs import JobStore
from api.keycache import KeyCache
from api.logging_setup import RequestContextMiddleware
from api.maintenance import upkeep_services
from api.metrics import MetricsListener, MetricsMiddleware
from api.notifier import Notifier
from api.ratelimit import RateLimit
from api.routes import files, manage, ops, search, tasks, ui, worker
from api.settings import Settings
from api.state import AppState
from api.webhooks import WebhookSender

VERSION = "0.1.0"
log = logging.getLogger("morag.api")


def create_app(settings: Settings | None = None, *, run_migrations: bool = True) -> FastAPI:
    """Build the server; the lifespan migrates the database and starts the upkeep loops."""
    settings = settings or Settings()
    logfilter.install()  # no lease token or download signature in the access log

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        url = settings.resolved_database_url()
        if run_migrations:
            await db.upgrade(url)
        engine = db.make_engine(url)
        notifier = Notifier(
            settings.claim_recheck_s, settings.claim_standby_lane_rate, settings.notify_peers_check_s
        )
        await notifier.start(url)
        secret = settings.secret_bytes()
        jobs = JobStore(engine, settings, notifier)
        events = JobEvents()
        indexer = Indexer(index_config(settings))  # models load lazily
        indexing = IndexingStage(jobs, settings, indexer, events)
        webhook_sender = WebhookSender(jobs, settings, secret)
        # What a job's change triggers, all of it: indexing (ingest results), webhooks (final jobs),
        # metrics, and the waits on a job's end (/process/*).
        events.listen(indexing, webhook_sender, MetricsListener(), notifier.ends)
        services: list[BackgroundService] = [*upkeep_services(jobs, settings), indexing, webhook_sender]
        app.state.morag = AppState(
            settings=settings,
            engine=engine,
            notifier=notifier,
            secret=secret,
            jobs=jobs,
            events=events,
            cookies=CookieSource(engine, secret),
            keys=KeyCache(engine, settings.key_cache_ttl_s),
        )
        app.state.indexer = indexer
        for service in services:
            service.start()
        await ops.start_local_store_check(app, app.state.morag)
        try:
            yield
        finally:
            await ops.stop_local_store_check(app)
            for service in reversed(services):
                await service.stop()
            await indexer.close()
            await notifier.stop()
            await db.dispose(engine)

    app = FastAPI(
        title="morag-remote",
        version=VERSION,
        summary="Ingestion server for multimodal RAG with remote, user-owned workers.",
        lifespan=lifespan,
        docs_url=None,  # served by api/routes/ops.py from local assets (works offline)
        redoc_url=None,
        generate_unique_id_function=openapi_doc.operation_id,
    )
    openapi_doc.install(app)  # bearer security scheme, examples (api/openapi_doc.py)
    install_handlers(app)
    # Every worker route may answer these (docs/protocol.md, "Status codes a worker can get").
    app.include_router(worker.router, responses=documented(401, 403, 404, 409, 413, 422, 429))
    app.include_router(files.router)
    app.include_router(tasks.router)
    app.include_router(search.router)
    app.include_router(manage.router)  # retry, webhook log, prune, documents, admin overview
    app.include_router(ui.router)  # the dashboard at /ui
    ops.install(app)  # /ready, /metrics, /docs (offline), / -> /docs
    # Each add_middleware wraps the ones before it: the limits run inside the request context and
    # metrics, so a 413 or 429 is logged and counted like any answer, yet no body is read before them.
    # The fast routes are planned from the declarations above (a route they cannot serve stops here).
    app.add_middleware(FastRoutes, routes=plan_routes(app) if settings.fast_routes else {})
    app.add_middleware(StorableURL)  # no NUL in the path or query (api/guards.py)
    app.add_middleware(JSONBodyLimit, settings=settings)
    app.add_middleware(RateLimit, settings=settings)  # refused before the body is read
    app.add_middleware(MetricsMiddleware)  # request durations, upload bytes (api/metrics.py)
    app.add_middleware(RequestContextMiddleware)  # request id, task id, access log (api/logging_setup.py)

    @app.get(
        "/health",
        tags=["meta"],
        responses={200: {"content": {"application/json": {"example": {"status": "ok", "version": VERSION}}}}},
    )
    async def health() -> dict[str, Any]:
        """Liveness: the server is up."""
        return {"status": "ok", "version": VERSION}

    return app
