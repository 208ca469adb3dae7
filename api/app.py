"""The FastAPI application: ``create_app(settings)`` builds one; nothing happens at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

from api import cookies, db, indexer, webhooks
from api.errors import documented, install_handlers
from api.guards import storable_url
from api.maintenance import Maintenance
from api.notifier import Notifier
from api.routes import files, manage, search, tasks, ui, worker
from api.settings import Settings
from api.state import AppState

VERSION = "0.1.0"
log = logging.getLogger("morag.api")


def create_app(settings: Settings | None = None, *, run_migrations: bool = True) -> FastAPI:
    """Build the server; the lifespan migrates the database and starts the upkeep loops."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.resolved_database_url()
        if run_migrations:
            await db.upgrade(url)
        engine = db.make_engine(url)
        notifier = Notifier()
        await notifier.start(url)
        state = AppState(settings=settings, engine=engine, notifier=notifier, secret=settings.secret_bytes())
        app.state.morag = state
        for hook in app.state.startup_hooks:
            await hook(app, state)
        upkeep = Maintenance(state)
        upkeep.start()
        try:
            yield
        finally:
            await upkeep.stop()
            for hook in reversed(app.state.shutdown_hooks):
                await hook(app, state)
            await notifier.stop()
            await engine.dispose()

    app = FastAPI(
        title="morag-remote",
        version=VERSION,
        summary="Ingestion server for multimodal RAG with remote, user-owned workers.",
        lifespan=lifespan,
        dependencies=[Depends(storable_url)],
    )
    # Client API: users' cookies for workers, webhooks on final states.
    # Indexing: ingest results -> chunks -> embeddings -> vector store (server side only).
    app.state.startup_hooks = [cookies.startup, webhooks.startup, indexer.start_indexing]
    app.state.shutdown_hooks = [webhooks.shutdown, indexer.stop_indexing]
    install_handlers(app)
    # Every worker route may answer these (docs/protocol.md, "Status codes a worker can get").
    app.include_router(worker.router, responses=documented(401, 403, 404, 409, 422))
    app.include_router(files.router)
    app.include_router(tasks.router)
    app.include_router(search.router)
    app.include_router(manage.router)  # retry, webhook log, prune, documents, admin overview
    app.include_router(ui.router)  # the dashboard at /ui

    @app.get("/health", tags=["meta"])
    async def health() -> dict[str, Any]:
        """Liveness: the server is up."""
        return {"status": "ok", "version": VERSION}

    return app
