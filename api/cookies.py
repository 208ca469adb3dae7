"""Users' cookies for media sites: Netscape cookies.txt, encrypted at rest, handed out per URL.

A user uploads a cookies.txt; it is split by domain and each domain's lines are stored encrypted
(Fernet, key derived from the server secret). A worker claiming one of that user's URL jobs gets
only the lines whose domain matches the URL's host; the full file is never returned to anyone.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from api.errors import BadRequest, NotFound
from api.ids import utcnow
from api.keystore import Principal, Scope, users_sharing_cookies
from api.models import UserCookie

C = UserCookie.__table__  # type: ignore[attr-defined]
HEADER = "# Netscape HTTP Cookie File\n"
HTTPONLY = "#HttpOnly_"


def fernet_for(secret: bytes) -> Fernet:
    """The cookie cipher: a key derived from the server secret (HKDF-SHA256, own context)."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"morag-remote cookies v1").derive(
        secret
    )
    return Fernet(base64.urlsafe_b64encode(key))


@dataclass(frozen=True)
class CookieLine:
    domain: str  # lowercase, without the leading dot or #HttpOnly_ prefix
    subdomains: bool
    line: str

    def matches(self, host: str) -> bool:
        """Whether a request to ``host`` would carry this cookie."""
        return host == self.domain or (self.subdomains and host.endswith("." + self.domain))


def parse_netscape(text: str) -> list[CookieLine]:
    """The cookie lines of a cookies.txt; raises BadRequest naming the first malformed line."""
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if "\x00" in line:  # PostgreSQL stores no NUL characters; no real cookie has one
            raise BadRequest(f"line {number} contains a NUL character", code="invalid_cookies")
        if not line.strip() or (line.startswith("#") and not line.startswith(HTTPONLY)):
            continue
        fields = line.split("\t")
        if len(fields) != 7 or not fields[4].lstrip("-").isdigit():
            raise BadRequest(
                f"line {number} is not a Netscape cookie line (7 tab-separated fields)",
                code="invalid_cookies",
            )
        domain = fields[0].removeprefix(HTTPONLY)
        flag = fields[1].upper() == "TRUE"
        name = domain.lstrip(".").lower()
        if not name or "/" in name or " " in name:
            raise BadRequest(f"line {number} has no valid domain", code="invalid_cookies")
        out.append(CookieLine(domain=name, subdomains=flag or domain.startswith("."), line=line))
    if not out:
        raise BadRequest("the file holds no cookies", code="invalid_cookies")
    return out


def _decrypt(fernet: Fernet, data: bytes) -> str:
    try:
        return fernet.decrypt(data).decode()
    except InvalidToken:
        return ""  # the server secret changed: these cookies are unreadable, treat them as gone


async def put_cookies(engine: AsyncEngine, fernet: Fernet, user_id: int, text: str) -> list[dict[str, Any]]:
    """Store a cookies.txt: each domain in it replaces that domain's cookies; other domains stay."""
    by_domain: dict[str, list[str]] = defaultdict(list)
    for cookie in parse_netscape(text):
        by_domain[cookie.domain].append(cookie.line)
    now = utcnow()
    rows = [
        {
            "user_id": user_id,
            "domain": d,
            "count": len(lines),
            "updated_at": now,
            "data": fernet.encrypt("\n".join(lines).encode()),
        }
        for d, lines in sorted(by_domain.items())
    ]
    async with engine.begin() as conn:
        await conn.execute(delete(C).where(C.c.user_id == user_id, C.c.domain.in_(list(by_domain))))
        await conn.execute(C.insert(), rows)
    return [{"domain": r["domain"], "count": r["count"], "updated_at": now} for r in rows]


async def list_cookies(engine: AsyncEngine, user_id: int) -> list[dict[str, Any]]:
    """Domains and counts only: cookie values never leave the server through the client API."""
    async with engine.begin() as conn:
        rows = (
            (
                await conn.execute(
                    select(C.c.domain, C.c.count, C.c.updated_at)
                    .where(C.c.user_id == user_id)
                    .order_by(C.c.domain)
                )
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


async def delete_cookies(engine: AsyncEngine, user_id: int, domain: str | None) -> int:
    """Forget one domain's cookies (or all of them); NotFound when there was nothing to forget."""
    cond = C.c.user_id == user_id
    if domain is not None:
        cond = cond & (C.c.domain == domain.lstrip(".").lower())
    async with engine.begin() as conn:
        res = await conn.execute(delete(C).where(cond))
    if domain is not None and not res.rowcount:
        raise NotFound(f"no cookies for {domain}", code="cookies_not_found")
    return int(res.rowcount or 0)


# Short-link hosts that redirect to a site whose sign-in cookies the download needs.
SHORT_LINK_HOSTS = {"youtu.be": "www.youtube.com"}


def _suffixes(host: str) -> list[str]:
    parts = host.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]


def _host_of(url: str) -> str:
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    return SHORT_LINK_HOSTS.get(host, host)


async def cookies_for_url(engine: AsyncEngine, fernet: Fernet, user_id: int, url: str) -> str | None:
    """The user's cookies.txt lines a request to ``url`` would carry, or None."""
    return (await cookies_for_urls(engine, fernet, [(user_id, url)])).get((user_id, url))


async def cookies_for_urls(
    engine: AsyncEngine, fernet: Fernet, wanted: list[tuple[int, str]]
) -> dict[tuple[int, str], str | None]:
    """Per (user, url): the cookies.txt lines a request to the url would carry (one query for all)."""
    hosts = {pair: _host_of(pair[1]) for pair in wanted}
    users = {user for (user, _), host in hosts.items() if host}
    domains = {d for host in hosts.values() if host for d in _suffixes(host)}
    if not users:
        return {}
    async with engine.begin() as conn:
        rows = (
            await conn.execute(
                select(C.c.user_id, C.c.domain, C.c.data).where(
                    C.c.user_id.in_(users), C.c.domain.in_(domains)
                )
            )
        ).all()
    stored: dict[tuple[int, str], list[CookieLine]] = {}
    for row in rows:
        stored.setdefault((row.user_id, row.domain), []).extend(parse_lines(_decrypt(fernet, row.data)))
    out: dict[tuple[int, str], str | None] = {}
    for (user, url), host in hosts.items():
        found = [c for d in (_suffixes(host) if host else []) for c in stored.get((user, d), [])]
        lines = [c.line for c in found if c.matches(host)]
        out[(user, url)] = HEADER + "\n".join(lines) + "\n" if lines else None
    return out


def parse_lines(text: str) -> list[CookieLine]:
    """Stored lines back into cookies (already validated when they were stored)."""
    return parse_netscape(text) if text.strip() else []


class CookieSource:
    """Hands workers the cookies of their jobs' users (as far as each worker may see them)."""

    def __init__(self, engine: AsyncEngine, secret: bytes) -> None:
        self.engine = engine
        self.fernet = fernet_for(secret)

    async def for_worker(
        self, who: Principal, wanted: list[tuple[int, str]]
    ) -> dict[tuple[int, str], str | None]:
        """Per (user, url): the job owner's cookies as the claiming worker may see them.

        A user's own workers get them; a shared (operator) worker only when the user turned
        ``share_with_shared_workers`` on (``PUT /api/v1/cookies/sharing``), off by default. Pairs
        left out get no cookies. One query for the owners' choices, one for the cookies.
        """
        others = {user for user, _ in wanted if user != who.user_id}
        sharing: set[int] = set()
        if others and who.scope is Scope.shared_worker:
            sharing = await users_sharing_cookies(self.engine, others)
        allowed = [(user, url) for user, url in wanted if user == who.user_id or user in sharing]
        return await cookies_for_urls(self.engine, self.fernet, allowed) if allowed else {}
