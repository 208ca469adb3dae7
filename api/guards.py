"""Request-wide input checks that no single route owns."""

from __future__ import annotations

from fastapi import Request

from api.errors import Unprocessable


async def storable_url(request: Request) -> None:
    """Refuse NUL characters in the path or query: their values reach SQL, and PostgreSQL rejects them."""
    if "\x00" in request.scope.get("path", "") or any(
        "\x00" in key or "\x00" in value for key, value in request.query_params.multi_items()
    ):
        raise Unprocessable("the URL contains a NUL character", code="invalid_text")
