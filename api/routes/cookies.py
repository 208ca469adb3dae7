"""Client API: the caller's cookies for media sites (upload, list domains, delete)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from api import cookies, keystore
from api.auth import client_access
from api.errors import BadRequest, PayloadTooLarge, documented
from api.keystore import Principal
from api.routes.forms import ERRORS
from api.schemas import CookieList, CookieSharing

# 400 `anonymous`: a server that allows anonymous callers still keeps no cookies for them.
router = APIRouter(prefix="/api/v1/cookies", tags=["cookies"], responses=documented(400))
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "text/plain": {
                "schema": {
                    "type": "string",
                    "description": "A Netscape cookies.txt (e.g. exported with yt-dlp --cookies).",
                }
            }
        },
    }
}


def _user(who: Principal) -> int:
    if who.user_id is None:
        raise BadRequest("anonymous callers cannot store cookies", code="anonymous")
    return who.user_id


async def _read_limited(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"a cookies file may have at most {limit} bytes", code="upload_too_large")
    return bytes(body)


@router.put("", response_model=CookieList, responses=ERRORS, openapi_extra=_BODY)
async def put_cookies(request: Request, who: Principal = Depends(client_access)) -> CookieList:
    """Upload a Netscape cookies.txt; each domain in it replaces that domain's stored cookies."""
    state = request.app.state.morag
    user_id = _user(who)
    raw = await _read_limited(request, state.settings.cookies_max_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("the cookies file is not UTF-8 text", code="invalid_cookies") from exc
    await cookies.put_cookies(state.engine, cookies.fernet_for(state.secret), user_id, text)
    rows = await cookies.list_cookies(state.engine, user_id)
    return CookieList.model_validate({"domains": rows, "total": sum(r["count"] for r in rows)})


@router.get("/sharing", response_model=CookieSharing)
async def get_sharing(request: Request, who: Principal = Depends(client_access)) -> CookieSharing:
    """Whether shared (operator) workers receive the caller's cookies with their jobs."""
    share = await keystore.get_cookie_sharing(request.app.state.morag.engine, _user(who))
    return CookieSharing(share_with_shared_workers=share)


@router.put("/sharing", response_model=CookieSharing)
async def put_sharing(
    body: CookieSharing, request: Request, who: Principal = Depends(client_access)
) -> CookieSharing:
    """Let shared (operator) workers receive the caller's cookies, or stop it (off by default)."""
    engine = request.app.state.morag.engine
    await keystore.set_cookie_sharing(engine, _user(who), body.share_with_shared_workers)
    return body


@router.get("", response_model=CookieList)
async def list_cookies(request: Request, who: Principal = Depends(client_access)) -> CookieList:
    """The domains the caller has cookies for, with counts (never the cookies themselves)."""
    rows = await cookies.list_cookies(request.app.state.morag.engine, _user(who))
    return CookieList.model_validate({"domains": rows, "total": sum(r["count"] for r in rows)})


@router.delete("/{domain}", response_model=CookieList, responses=documented(404))
async def delete_domain(domain: str, request: Request, who: Principal = Depends(client_access)) -> CookieList:
    """Forget the caller's cookies for one domain."""
    engine = request.app.state.morag.engine
    await cookies.delete_cookies(engine, _user(who), domain)
    rows = await cookies.list_cookies(engine, _user(who))
    return CookieList.model_validate({"domains": rows, "total": sum(r["count"] for r in rows)})


@router.delete("", response_model=CookieList)
async def delete_all(request: Request, who: Principal = Depends(client_access)) -> CookieList:
    """Forget all of the caller's cookies."""
    await cookies.delete_cookies(request.app.state.morag.engine, _user(who), None)
    return CookieList(domains=[], total=0)
