"""Schemathesis over every operation of openapi.json: no 5xx, one error shape, documented answers.

The app runs in-process (lifespan started; SQLite in tmp_path, then PostgreSQL) in a thread of
its own; each operation gets a bounded, derandomized set of generated requests (valid and invalid data), sent
with the right key, a key of the wrong scope, an unknown key or none. Failures are collected, not
shrunk, so one run reports every broken operation at once.
"""

from __future__ import annotations

import copy
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api import keystore
from api.app import create_app
from tests.integration.api.conftest import OPENAPI, make_settings

pytestmark = pytest.mark.fuzz

EXAMPLES = 25  # per operation and generation mode
BASE = "http://testserver"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Who calls: mostly the right key, so the generated data reaches the handlers.
AUTH = ["right", "right", "right", "right", "wrong", "none", "unknown"]


@dataclass
class Running:
    """The app behind httpx in its own event loop thread, and what the fuzzer needs from it."""

    portal: BlockingPortal
    client: httpx.AsyncClient
    keys: dict[str, str]  # scope -> key
    seeds: dict[str, Any] = field(default_factory=dict)  # real task ids, batch id, leases, a download link
    sent: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))

    def send(self, case: Any, auth: dict[str, str]) -> httpx.Response:
        """Serialize a generated case as requests would, and send those bytes through httpx."""
        kw = case.as_transport_kwargs(base_url=BASE)
        headers = {k: v for k, v in (kw.get("headers") or {}).items() if k.lower() != "authorization"}
        headers.update(auth)
        prepared = requests.Request(
            method=kw["method"],
            url=kw["url"],
            headers=headers,
            params=kw.get("params"),
            data=kw.get("data"),
            files=kw.get("files"),
            json=kw.get("json"),
            cookies=kw.get("cookies"),
        ).prepare()
        self.sent += 1
        return self.portal.call(
            lambda: self.client.request(
                prepared.method or "GET",
                prepared.url or BASE,
                headers=dict(prepared.headers),
                content=prepared.body,
            )
        )


def _keys_for(operation: Any, keys: dict[str, str]) -> dict[str, dict[str, str]]:
    worker_op = "worker" in operation.tags or operation.path.startswith("/files/")
    right, wrong = ("worker", "client") if worker_op else ("client", "worker")
    return {
        "right": {"Authorization": f"Bearer {keys[right]}"},
        "wrong": {"Authorization": f"Bearer {keys[wrong]}"},
        "none": {},
        "unknown": {"Authorization": "Bearer mrg_not_a_real_key"},
    }


@pytest.fixture
def running(tmp_path: Path, database_url: str) -> Iterator[Running]:
    # Both backends: PostgreSQL refuses what SQLite stores (NUL, NaN), so 500s hid there.
    # Long polls answer at once: claims (wait_s <= 30) and /process/* (wait_s <= 600).
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        claim_wait_max_s=0,
        process_wait_default_s=0,
        process_wait_max_s=0,
    )
    app = create_app(settings)

    async def make_keys() -> dict[str, str]:
        engine = app.state.morag.engine
        await keystore.create_user(engine, "alice")
        client = (await keystore.create_key(engine, "alice", keystore.Scope.client))[1]
        worker = (await keystore.create_key(engine, "alice", keystore.Scope.worker))[1]
        return {"client": client, "worker": worker}

    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(app.router.lifespan_context(app)),
    ):
        keys = portal.call(make_keys)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, timeout=30)
        try:
            seeds = portal.call(_seed, client, keys)
            yield Running(portal=portal, client=client, keys=keys, seeds=seeds)
        finally:
            portal.call(client.aclose)


async def _seed(client: httpx.AsyncClient, keys: dict[str, str]) -> dict[str, Any]:
    """Real objects for the generator to point at: tasks, a batch, leased jobs, a signed link."""
    user = {"Authorization": f"Bearer {keys['client']}"}
    worker = {"Authorization": f"Bearer {keys['worker']}"}
    tasks = []
    for n in range(6):
        resp = await client.post("/api/v1/ingest/url", headers=user, json={"url": f"https://example.com/{n}"})
        tasks.append(resp.json()["task_id"])
    resp = await client.post(
        "/api/v1/ingest/file", headers=user, files={"file": ("a.md", b"# Title\n\nText.", "text/markdown")}
    )
    tasks.append(resp.json()["task_id"])
    batch = await client.post(
        "/api/v1/ingest/batch", headers=user, json={"items": [{"url": "https://example.com/b"}]}
    )
    claim = {
        "worker_id": "seed",
        "lanes": ["gpu", "cpu"],
        "content_types": ["web", "document"],
        "max_jobs": 20,
    }
    jobs = (await client.post("/worker/claim", headers=worker, json={**claim, "wait_s": 0})).json()["jobs"]
    link = next(j["download_url"] for j in jobs if j.get("download_url"))
    return {
        "tasks": tasks,
        "batch": batch.json()["batch_id"],
        "leases": [(j["job_id"], j["lease_token"]) for j in jobs],
        "link": httpx.URL(link),
    }


URLS = ["https://example.com/doc", "https://www.youtube.com/watch?v=abc", "http://media.example/v.mp4"]


def _steer(case: Any, seeds: dict[str, Any], pick: int) -> None:
    """Point a generated (valid) case at real objects, keeping its generated values elsewhere."""
    body = case.body if isinstance(case.body, dict) else None
    params = case.path_parameters or {}
    for name, pool in (("task_id", seeds["tasks"]), ("batch_id", [seeds["batch"]])):
        if name in params:
            params[name] = pool[pick % len(pool)]
    for where in (body, case.query):
        if not isinstance(where, dict):
            continue
        if isinstance(where.get("url"), str):
            where["url"] = URLS[pick % len(URLS)] + "?q=" + where["url"][:100]
        for item in where.get("items") or []:
            if isinstance(item, dict):
                item["url"] = URLS[pick % len(URLS)]
        if "webhook_url" in where:
            where["webhook_url"] = None
        if "job_id" in where and "lease_token" in where:
            where["job_id"], where["lease_token"] = seeds["leases"][pick % len(seeds["leases"])]
    if "file_id" in params:
        link = seeds["link"]
        params["file_id"] = link.path.rsplit("/", 1)[-1]
        case.query = dict(link.params)
    if case.operation.path == "/api/v1/cookies" and isinstance(case.body, str):
        value = case.body.replace("\n", " ").replace("\t", " ")
        case.body = f".example.com\tTRUE\t/\tFALSE\t0\tname\t{value}\n"


def _problems(op: Any, case: Any, resp: httpx.Response, who: str) -> list[str]:
    out = []
    if resp.status_code >= 500:
        out.append(f"{resp.status_code}: {resp.text[:300]}")
    if 400 <= resp.status_code < 500:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not (
            isinstance(body, dict)
            and isinstance(body.get("code"), str)
            and isinstance(body.get("message"), str)
        ):
            out.append(f"{resp.status_code} body is not {{code, message}}: {resp.text[:300]}")
    # Probes are open like /health (a load balancer and Prometheus hold no key; the proxy limits /metrics).
    probes = ("/health", "/ready", "/metrics")
    open_op = op.path in probes or (op.path == "/api/v1/workers" and who == "wrong")
    if who != "right" and not open_op and resp.status_code < 400:
        out.append(f"{who} key answered {resp.status_code}")
    checks = CHECKS + ([negative_data_rejection] if case.meta.generation.mode.is_negative else [])
    try:
        case.validate_response(resp, checks=checks)
    except FailureGroup as group:
        out.extend(f"{type(f).__name__}: {' '.join(str(f).split())[:300]}" for f in group.exceptions)
    return out


def _fuzz(run: Running, op: Any, mode: GenerationMode) -> None:
    keys = _keys_for(op, run.keys)

    @given(case=op.as_strategy(generation_mode=mode), who=st.sampled_from(AUTH), pick=st.integers(0, 11))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def one(case: Any, who: str, pick: int) -> None:
        if mode is GenerationMode.POSITIVE and pick % 2:  # half the valid cases aim at real objects
            _steer(case, run.seeds, pick)
        resp = run.send(case, keys[who])
        run.statuses[op.label][resp.status_code] += 1
        for problem in _problems(op, case, resp, who):
            key = f"{op.method.upper()} {op.path} [{mode.value}, {who}] {problem[:80]}"
            run.failures.setdefault(key, f"{problem}\n    sent: {case.as_curl_command()[:400]}")

    try:
        one()
    except Unsatisfiable:
        # Nothing of this operation can be made invalid (no body; any string is a valid path value).
        assert mode is GenerationMode.NEGATIVE, op.label


def test_fuzz_every_operation(running: Running) -> None:
    """Every operation, valid and invalid data, every kind of caller: no 5xx, documented 4xx."""
    # The harness sends each kind of key itself (AUTH): schemathesis must not generate (and, in
    # negative mode, mangle) the Authorization header that the harness then replaces.
    spec = copy.deepcopy(OPENAPI)
    spec["components"].pop("securitySchemes", None)
    for path_ops in spec["paths"].values():
        for op in path_ops.values():
            op.pop("security", None)
    schema = schemathesis.openapi.from_dict(spec)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) == sum(len(v) for v in OPENAPI["paths"].values())
    start = time.monotonic()
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(running, op, mode)
    took = time.monotonic() - start
    print(f"fuzz: {running.sent} requests over {len(operations)} operations in {took:.1f} s")
    for label, counts in sorted(running.statuses.items()):
        print(f"  {label}: {dict(sorted(counts.items()))}")
    report = "\n".join(f"{k}\n    {v}" for k, v in sorted(running.failures.items()))
    assert not running.failures, f"{len(running.failures)} problems:\n{report}"
