"""Request-wide input checks that no single route owns."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import error_response


class StorableURL:
    """Refuse NUL characters in the path or query with 422 ``invalid_text``: their values reach SQL,
    and PostgreSQL rejects them. An ASGI middleware, not an app-wide FastAPI dependency: a
    dependency on every route cost each request a pass through FastAPI's dependency solving."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query: bytes = scope.get("query_string", b"")
            # A NUL in a decoded key or value is a %00 (or a raw NUL) in the raw query string.
            if "\x00" in scope.get("path", "") or b"%00" in query or b"\x00" in query:
                resp = error_response(422, "invalid_text", "the URL contains a NUL character")
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)
