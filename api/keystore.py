"""Users and API keys: every statement on the users and api_keys tables."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from api.errors import Conflict, NotFound
from api.ids import utcnow
from api.models import ApiKey, User
from protocol.states import Scope

__all__ = ["Principal", "Scope"]

USERS = User.__table__  # type: ignore[attr-defined]
KEYS = ApiKey.__table__  # type: ignore[attr-defined]
KEY_PREFIX = "mrg_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, its user and scope (anonymous: key_id and user_id None)."""

    key_id: str | None
    user_id: int | None
    user_name: str | None
    scope: Scope
    cpu_fallback: bool = True
    shared_fallback: bool = True

    @property
    def is_worker(self) -> bool:
        return self.scope in (Scope.worker, Scope.shared_worker)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_user(engine: AsyncEngine, name: str, shared_fallback: bool = True) -> int:
    async with engine.begin() as conn:
        try:
            res = await conn.execute(
                USERS.insert()
                .values(name=name, created_at=utcnow(), cpu_fallback=True, shared_fallback=shared_fallback)
                .returning(USERS.c.id)
            )
        except IntegrityError as exc:
            raise Conflict(f"user {name!r} already exists", code="user_exists") from exc
        return int(res.scalar_one())


async def get_user_id(engine: AsyncEngine, name: str) -> int:
    async with engine.begin() as conn:
        uid = (await conn.execute(select(USERS.c.id).where(USERS.c.name == name))).scalar()
    if uid is None:
        raise NotFound(f"no user named {name!r}", code="user_not_found")
    return int(uid)


async def set_user_fallback(
    engine: AsyncEngine, name: str, *, cpu: bool | None = None, shared: bool | None = None
) -> None:
    values: dict[str, bool] = {}
    if cpu is not None:
        values["cpu_fallback"] = cpu
    if shared is not None:
        values["shared_fallback"] = shared
    async with engine.begin() as conn:
        res = await conn.execute(update(USERS).where(USERS.c.name == name).values(**values))
    if res.rowcount == 0:
        raise NotFound(f"no user named {name!r}", code="user_not_found")


async def list_users(engine: AsyncEngine) -> list[dict[str, object]]:
    async with engine.begin() as conn:
        rows = (await conn.execute(select(USERS).order_by(USERS.c.id))).mappings().all()
    return [dict(r) for r in rows]


async def create_key(engine: AsyncEngine, user_name: str, scope: Scope) -> tuple[str, str]:
    """A new key for a user: returns (key_id, key). The key itself is never stored."""
    user_id = await get_user_id(engine, user_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = "k_" + secrets.token_hex(6)
    async with engine.begin() as conn:
        await conn.execute(
            KEYS.insert().values(
                id=key_id,
                user_id=user_id,
                key_hash=hash_key(key),
                prefix=key[:10],
                scope=scope.value,
                created_at=utcnow(),
            )
        )
    return key_id, key


async def list_keys(engine: AsyncEngine) -> list[dict[str, object]]:
    async with engine.begin() as conn:
        rows = (
            (
                await conn.execute(
                    select(
                        KEYS.c.id,
                        USERS.c.name.label("user"),
                        KEYS.c.scope,
                        KEYS.c.prefix,
                        KEYS.c.created_at,
                        KEYS.c.revoked_at,
                        KEYS.c.last_used_at,
                    )
                    .join(USERS, USERS.c.id == KEYS.c.user_id)
                    .order_by(KEYS.c.created_at)
                )
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


async def revoke_key(engine: AsyncEngine, key_id: str) -> None:
    async with engine.begin() as conn:
        res = await conn.execute(
            update(KEYS).where(KEYS.c.id == key_id, KEYS.c.revoked_at.is_(None)).values(revoked_at=utcnow())
        )
    if res.rowcount == 0:
        raise NotFound(f"no active key {key_id!r}", code="key_not_found")


async def get_cookie_sharing(engine: AsyncEngine, user_id: int) -> bool:
    """Whether the user lets shared (operator) workers receive their site cookies."""
    async with engine.begin() as conn:
        value = (await conn.execute(select(USERS.c.share_cookies).where(USERS.c.id == user_id))).scalar()
    return bool(value)


async def users_sharing_cookies(engine: AsyncEngine, user_ids: set[int]) -> set[int]:
    """Those of ``user_ids`` who let shared (operator) workers receive their site cookies."""
    async with engine.begin() as conn:
        rows = await conn.execute(
            select(USERS.c.id).where(USERS.c.id.in_(list(user_ids)), USERS.c.share_cookies.is_(True))
        )
    return {int(r.id) for r in rows}


async def set_cookie_sharing(engine: AsyncEngine, user_id: int, share: bool) -> None:
    """Turn sending the user's cookies to shared workers on or off."""
    async with engine.begin() as conn:
        await conn.execute(update(USERS).where(USERS.c.id == user_id).values(share_cookies=share))


LAST_USED_RESOLUTION_S = 60.0  # `keys list` shows last use to the minute: one write a minute per key


async def _touch(engine: AsyncEngine, key_id: str, last_used: datetime | None) -> None:
    """Record the key's use, at most once a minute (not a write per request)."""
    now = utcnow()
    if last_used is not None:
        if last_used.tzinfo is None:  # SQLite gives naive UTC
            last_used = last_used.replace(tzinfo=UTC)
        if (now - last_used).total_seconds() < LAST_USED_RESOLUTION_S:
            return
    async with engine.begin() as conn:
        await conn.execute(update(KEYS).where(KEYS.c.id == key_id).values(last_used_at=now))


async def authenticate(engine: AsyncEngine, key: str) -> Principal | None:
    """The principal for a presented key, or None when unknown or revoked."""
    digest = hash_key(key)
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                select(
                    KEYS.c.id,
                    KEYS.c.key_hash,
                    KEYS.c.scope,
                    KEYS.c.revoked_at,
                    KEYS.c.last_used_at,
                    USERS.c.id.label("uid"),
                    USERS.c.name,
                    USERS.c.cpu_fallback,
                    USERS.c.shared_fallback,
                )
                .join(USERS, USERS.c.id == KEYS.c.user_id)
                .where(KEYS.c.key_hash == digest)
            )
        ).first()
    # The lookup is by hash; compare again in constant time so timing says nothing.
    if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
        return None
    await _touch(engine, row.id, row.last_used_at)
    return Principal(
        key_id=row.id,
        user_id=row.uid,
        user_name=row.name,
        scope=Scope(row.scope),
        cpu_fallback=row.cpu_fallback,
        shared_fallback=row.shared_fallback,
    )
