"""The client API in one router: ingest, immediate processing, status and cookies."""

from __future__ import annotations

from fastapi import APIRouter

from api.errors import documented
from api.routes import cookies, ingest, process, status, webhooks

# What any client route may answer besides its own errors: no key, a worker's key, too large, bad input.
router = APIRouter(responses=documented(401, 403, 413, 422, 429))
router.include_router(process.router)
router.include_router(ingest.router)
router.include_router(status.router)
router.include_router(cookies.router)
router.include_router(webhooks.router)
