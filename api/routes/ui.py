"""The dashboard at ``/ui``: static files served by the app itself (works offline, no build step).

The page keeps the API key in ``sessionStorage`` only and calls the same client API as curl does.
A strict Content-Security-Policy allows scripts, styles and requests of this origin only.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from api.errors import NotFound
from api.ui import STATIC

router = APIRouter(include_in_schema=False)
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
FILES = {p.name: p for p in STATIC.iterdir() if p.suffix in _TYPES}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> FileResponse:
    path = FILES.get(name)
    if path is None:
        raise NotFound("no such dashboard file", code="not_found")
    return FileResponse(path, media_type=_TYPES[path.suffix] + "; charset=utf-8", headers=HEADERS)


@router.get("/ui")
async def dashboard_root() -> RedirectResponse:
    """The dashboard lives at /ui/ (relative asset paths)."""
    return RedirectResponse("/ui/")


@router.get("/ui/")
async def dashboard() -> FileResponse:
    """The dashboard page."""
    return _file("index.html")


@router.get("/ui/{name}")
async def dashboard_file(name: str) -> FileResponse:
    """One of the dashboard's files (a fixed list; nothing else on disk is reachable)."""
    return _file(name)
