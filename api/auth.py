"""Request authentication: API key from ``Authorization: Bearer`` or ``X-API-Key``, and scopes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from api.errors import Forbidden, Unauthorized
from api.keystore import Principal, Scope
from api.state import app_state

ANONYMOUS = Principal(key_id=None, user_id=None, user_name=None, scope=Scope.client)


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("Authorization header must be 'Bearer KEY'")
        return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key else None


async def principal(request: Request) -> Principal:
    """Who is calling; anonymous only when the operator allows it."""
    key = _presented_key(request)
    state = app_state(request)
    if key is None:
        if state.settings.allow_anonymous:
            return ANONYMOUS
        raise Unauthorized()
    who = await state.keys.authenticate(key)
    if who is None:
        raise Unauthorized("unknown or revoked API key")
    return who


def require(*scopes: Scope) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that admits only the given scopes."""
    allowed = frozenset(scopes)

    async def dependency(request: Request) -> Principal:
        who = await principal(request)
        if who.scope not in allowed:
            names = ", ".join(sorted(s.value for s in allowed))
            raise Forbidden(f"a {who.scope.value} key cannot do this (needs: {names})", code="wrong_scope")
        return who

    return dependency


client_access = require(Scope.client, Scope.admin)
worker_access = require(Scope.worker, Scope.shared_worker)
