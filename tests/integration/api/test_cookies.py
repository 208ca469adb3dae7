"""Cookies: upload a cookies.txt, list domains only, delete, encrypted at rest, matched per job URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from api import keystore
from api.models import UserCookie
from tests.integration.api.conftest import Env, check_error, check_openapi, claim, make_settings, running_env

COOKIES = """# Netscape HTTP Cookie File
.youtube.com\tTRUE\t/\tTRUE\t1999999999\tSID\tyt-secret-1
.youtube.com\tTRUE\t/\tTRUE\t1999999999\tHSID\tyt-secret-2
#HttpOnly_.google.com\tTRUE\t/\tTRUE\t1999999999\tNID\tg-secret
exact.example.org\tFALSE\t/\tFALSE\t0\tsession\tex-secret
"""
PATH = "/api/v1/cookies"


async def _put(env: Env, text: str, headers: dict | None = None):
    return await env.client.put(
        PATH, headers={**(headers or env.alice), "Content-Type": "text/plain"}, content=text.encode()
    )


async def test_upload_list_delete(env: Env) -> None:
    body = check_openapi(await _put(env, COOKIES), PATH)
    assert body == {"domains": body["domains"], "total": 4}
    assert [(d["domain"], d["count"]) for d in body["domains"]] == [
        ("exact.example.org", 1),
        ("google.com", 1),
        ("youtube.com", 2),
    ]
    listed = (await env.client.get(PATH, headers=env.alice)).text
    assert "secret" not in listed and check_openapi(await env.client.get(PATH, headers=env.alice), PATH)
    assert (await env.client.get(PATH, headers=env.bob)).json() == {"domains": [], "total": 0}
    # A second upload replaces only the domains it names.
    await _put(env, ".youtube.com\tTRUE\t/\tTRUE\t1999999999\tSID\tnew\n")
    body = (await env.client.get(PATH, headers=env.alice)).json()
    assert [(d["domain"], d["count"]) for d in body["domains"]] == [
        ("exact.example.org", 1),
        ("google.com", 1),
        ("youtube.com", 1),
    ]
    resp = await env.client.delete(f"{PATH}/google.com", headers=env.alice)
    assert [d["domain"] for d in check_openapi(resp, f"{PATH}/{{domain}}")["domains"]] == [
        "exact.example.org",
        "youtube.com",
    ]
    check_error(
        await env.client.delete(f"{PATH}/google.com", headers=env.alice),
        f"{PATH}/{{domain}}",
        404,
        "cookies_not_found",
    )
    assert check_openapi(await env.client.delete(PATH, headers=env.alice), PATH) == {
        "domains": [],
        "total": 0,
    }


async def test_encrypted_at_rest(env: Env) -> None:
    await _put(env, COOKIES)
    async with env.state.engine.begin() as conn:
        blobs = [r.data for r in (await conn.execute(select(UserCookie.__table__.c.data))).all()]
    assert blobs and not any(b"secret" in b for b in blobs)


async def test_bad_cookie_files(env: Env) -> None:
    check_error(await _put(env, "not a cookie line\n"), PATH, 400, "invalid_cookies")
    check_error(await _put(env, "# only comments\n\n"), PATH, 400, "invalid_cookies")
    resp = await env.client.put(
        PATH, headers={**env.alice, "Content-Type": "text/plain"}, content=b"\xff\xfe\x00"
    )
    check_error(resp, PATH, 400, "invalid_cookies")
    assert (await env.client.get(PATH, headers=env.alice)).json()["total"] == 0


async def test_claim_hands_only_matching_cookies_of_the_jobs_user(env: Env) -> None:
    await _put(env, COOKIES)
    await _put(env, ".youtube.com\tTRUE\t/\tTRUE\t1999999999\tSID\tbob-secret\n", env.bob)
    for url in (
        "https://www.youtube.com/watch?v=1",
        "https://other.example.org/x",
        "https://exact.example.org/a",
        "https://youtu.be/1",
    ):
        await env.client.post(
            "/api/v1/ingest/url", headers=env.alice, json={"url": url, "content_type": "web"}
        )
    jobs = {
        j["source_url"]: j
        for j in await claim(env, ["web"])
        + await claim(env, ["web"])
        + await claim(env, ["web"])
        + await claim(env, ["web"])
    }
    yt = jobs["https://www.youtube.com/watch?v=1"]["cookies"]
    assert yt.startswith("# Netscape HTTP Cookie File") and "yt-secret-1" in yt and "yt-secret-2" in yt
    assert "g-secret" not in yt and "ex-secret" not in yt and "bob-secret" not in yt
    assert jobs["https://other.example.org/x"]["cookies"] is None  # exact.example.org is host-only
    assert "ex-secret" in jobs["https://exact.example.org/a"]["cookies"]
    # A youtu.be short link redirects to youtube.com: it needs youtube.com's sign-in cookies.
    assert "yt-secret-1" in jobs["https://youtu.be/1"]["cookies"]


@pytest.fixture
async def shared_env(tmp_path: Path, database_url: str) -> AsyncIterator[Env]:
    """Jobs fall back to shared workers at once (on each backend)."""
    settings = make_settings(
        tmp_path, database_url=database_url, shared_fallback_after_s=0, fallback_after_s=0
    )
    async with running_env(settings) as env:
        yield env


async def _shared_claim(env: Env, key: str) -> list[dict]:
    body = {"worker_id": "op", "lanes": ["gpu", "cpu", "default"], "content_types": ["web"], "wait_s": 0}
    resp = await env.client.post("/worker/claim", headers={"Authorization": f"Bearer {key}"}, json=body)
    return list(resp.json()["jobs"]) if resp.status_code == 200 else []


async def test_shared_workers_get_cookies_only_when_the_user_opts_in(shared_env: Env) -> None:
    env = shared_env
    await keystore.create_user(env.state.engine, "operator")
    op_key = (await keystore.create_key(env.state.engine, "operator", keystore.Scope.shared_worker))[1]
    await _put(env, COOKIES)
    sharing = await env.client.get(f"{PATH}/sharing", headers=env.alice)
    assert check_openapi(sharing, f"{PATH}/sharing") == {"share_with_shared_workers": False}  # off by default
    url = {"url": "https://www.youtube.com/watch?v=1", "content_type": "web"}
    await env.client.post("/api/v1/ingest/url", headers=env.alice, json=url)
    [job] = await _shared_claim(env, op_key)
    assert job["cookies"] is None  # the operator's worker never saw alice's cookies
    on = {"share_with_shared_workers": True}
    resp = await env.client.put(f"{PATH}/sharing", headers=env.alice, json=on)
    assert resp.status_code == 200 and resp.json() == {"share_with_shared_workers": True}
    await env.client.post("/api/v1/ingest/url", headers=env.alice, json=url)
    [job] = await _shared_claim(env, op_key)
    assert "yt-secret-1" in job["cookies"]
    # bob's setting is his own: still off.
    bob = await env.client.get(f"{PATH}/sharing", headers=env.bob)
    assert bob.json()["share_with_shared_workers"] is False
    # Alice's own worker always gets them.
    await env.client.post("/api/v1/ingest/url", headers=env.alice, json=url)
    [job] = await claim(env, ["web"])
    assert "yt-secret-1" in job["cookies"]
