"""The client API in one router: ingest, immediate processing, status and cookies."""

from __future__ import annotations

from fastapi import APIRouter

from api.routes import cookies, ingest, process, status

router = APIRouter()
router.include_router(process.router)
router.include_router(ingest.router)
router.include_router(status.router)
router.include_router(cookies.router)
