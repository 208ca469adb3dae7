"""The dashboard's files are served by the app with a strict CSP; nothing else on disk is reachable.
Also the two small routes the dashboard reads first: /api/v1/me and /api/v1/lanes."""

from __future__ import annotations

from api import keystore
from tests.integration.api.conftest import Env, check_error, check_openapi, claim


async def test_dashboard_files_and_headers(env: Env) -> None:
    root = await env.client.get("/ui")
    assert root.status_code == 307 and root.headers["location"] == "/ui/"
    page = await env.client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert '<script src="app.js"' in page.text and "http" not in page.text.split("<body>")[0]
    js = await env.client.get("/ui/app.js")
    assert js.headers["content-type"].startswith("text/javascript") and "sessionStorage" in js.text
    assert "localStorage" not in js.text and ".innerHTML" not in js.text
    md = await env.client.get("/ui/markdown.js")
    assert md.status_code == 200 and ".innerHTML" not in md.text and ".outerHTML" not in md.text
    for bad in ("/ui/..%2Fapp.py", "/ui/__init__.py", "/ui/nope.js", "/ui/%2e%2e%2f%2e%2e%2fsettings.py"):
        assert (await env.client.get(bad)).status_code == 404, bad


async def test_me_and_lanes_explain_fallback(env: Env) -> None:
    me = check_openapi(await env.client.get("/api/v1/me", headers=env.alice), "/api/v1/me")
    assert me == {"user": "alice", "scope": "client", "cpu_fallback": True, "shared_fallback": True}
    check_error(await env.client.get("/api/v1/me", headers=env.worker), "/api/v1/me", 403, "wrong_scope")
    path = "/api/v1/lanes"
    lanes = {
        lane["kind"]: lane
        for lane in check_openapi(await env.client.get(path, headers=env.alice), path)["lanes"]
    }
    assert lanes["gpu"]["note"] == "no GPU worker of yours online and nowhere to fall back: jobs wait"
    await claim(env, ["web"], wait_s=0)  # alice's worker (both lanes) is online now
    lanes = {lane["kind"]: lane for lane in (await env.client.get(path, headers=env.alice)).json()["lanes"]}
    assert lanes["gpu"]["workers_online"] == 1 and lanes["gpu"]["falls_back_to"] is None
    assert lanes["gpu"]["note"].startswith("your GPU workers take these jobs")
    await keystore.set_user_fallback(env.state.engine, "bob", cpu=False, shared=False)
    bob = {lane["kind"]: lane for lane in (await env.client.get(path, headers=env.bob)).json()["lanes"]}
    assert bob["gpu"]["note"] == "jobs wait for one of your GPU workers (fallback is off for you)"
