"""Webhooks: when a task reaches a final state, POST it to the task's webhook_url, signed.

Body: ``{task_id, status, result, error, error_class, finished_at, completed_at, batch_id,
document_id}`` where ``finished_at`` is the job's real finish time (the name the status route uses;
``completed_at`` is its deprecated old name, kept one release). Header ``X-Morag-Signature: t=TS,v1=HEX`` with
HEX = HMAC-SHA256(the user's webhook secret, ``f"{TS}.{body}"``) (``protocol.signing.sign_body``),
so a receiver can verify the sender and refuse replays. The webhook secret is derived per user
from the server secret (``GET /api/v1/webhooks/secret`` shows it to its user): it reveals neither
the server secret (which signs download links and encrypts cookies) nor other users' secrets.
A non-2xx answer or a network error is retried
with the server's backoff (``api.background.backoff_s``, jittered per job and attempt by
:func:`delivery_jitter`) until ``webhook_retry_s`` after the job ended; every attempt is a row in
``webhook_deliveries``. Deliveries start from job events (the sender is one of the listeners
wired in ``api.app``; it acts only on final jobs that have a webhook_url) and from a periodic
sweep, so a restart (or a state change made by another process) loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from datetime import timedelta
from typing import Any

import httpx

from api.background import BackgroundService, backoff_s
from api.ids import utcnow
from api.jobs import JobEvent, JobRecord, JobStore, is_final
from api.logging_setup import task_context
from api.settings import Settings
from protocol import netguard
from protocol.signing import sign_body
from protocol.urlguard import UnsafeURL, check_url

log = logging.getLogger("morag.webhooks")
SIGNATURE_HEADER = "X-Morag-Signature"


def delivery_jitter(job_id: str, attempt: int) -> float:
    """The jitter of one job's ``attempt``-th wait, in [0, 1): random across jobs, yet the same each
    time it is computed, so the sweep (or another process, or this one after a restart) finds the
    same next try time, and the same give-up, as the delivery loop that recorded the attempt."""
    digest = hashlib.sha256(f"{job_id}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def user_secret(server_secret: bytes, user_id: int | None) -> str:
    """The key one user verifies their webhooks with (hex)."""
    return hmac.new(server_secret, f"morag-webhook:{user_id}".encode(), hashlib.sha256).hexdigest()


def signature_header(secret: bytes, body: bytes, timestamp: int | None = None) -> str:
    """``t=TIMESTAMP,v1=HEX`` for a webhook body."""
    ts = int(time.time()) if timestamp is None else timestamp
    return f"t={ts},v1={sign_body(secret, body, ts)}"


def payload(job: JobRecord) -> dict[str, Any]:
    """What the receiver learns: the final state, a summary of the result (not the content), the error."""
    result = job.result or {}
    summary = None
    if result:
        summary = {
            "content_length": len(result.get("markdown") or ""),
            "metadata": result.get("metadata") or {},
            **{k: v for k, v in result.items() if k not in ("markdown", "metadata")},
        }
    finished = job.finished_at
    return {
        "task_id": job.id,
        "status": job.state,
        "result": summary,
        "error": job.error,
        "error_class": job.error_class,
        "finished_at": finished.isoformat() if finished else None,
        "completed_at": finished.isoformat() if finished else None,
        "batch_id": job.batch_id,
        "document_id": job.document_id,
    }


class WebhookSender(BackgroundService):
    """Delivers webhooks of one server process: one task per job, never two for the same job."""

    name = "webhook sweep"

    def __init__(self, jobs: JobStore, settings: Settings, secret: bytes) -> None:
        super().__init__(settings.webhook_sweep_interval_s)
        self.jobs = jobs
        self.settings = settings
        self.secret = secret
        # The guard is enforced where the socket connects (no second lookup: no DNS rebinding).
        guarded = netguard.async_transport(allow_private=settings.webhook_allow_private)
        self.client = httpx.AsyncClient(
            timeout=settings.webhook_timeout_s, follow_redirects=False, transport=guarded
        )
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def stop(self) -> None:
        await super().stop()
        tasks = list(self.tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.client.aclose()

    def job_changed(self, event: JobEvent) -> None:
        """A job changed here: deliver its webhook when it ended and has one (nothing read otherwise)."""
        if event.has_webhook and is_final(event.state):
            self.notify(event.job_id)

    def notify(self, job_id: str) -> None:
        """Deliver the job's webhook if it is final and has one (no-op otherwise)."""
        if job_id not in self.tasks:
            task = asyncio.create_task(self._deliver(job_id))
            self.tasks[job_id] = task
            task.add_done_callback(lambda _: self.tasks.pop(job_id, None))

    async def run_once(self) -> bool:
        await self.sweep()
        return False

    async def sweep(self) -> int:
        """Start deliveries for ended jobs whose webhook has not gone through yet."""
        since = utcnow() - timedelta(seconds=self.settings.webhook_retry_s)
        due = await self.jobs.list_webhooks_due(since)
        for job_id in due:
            self.notify(job_id)
        return len(due)

    async def _deliver(self, job_id: str) -> None:
        with task_context(job_id):  # every log line about this delivery names the task
            await self._deliver_job(job_id)

    async def _deliver_job(self, job_id: str) -> None:
        s = self.settings
        job = await self.jobs.get_any(job_id)
        if job is None or not job.webhook_url or not is_final(job.state):
            return
        attempts, delivered, last_at = await self.jobs.delivery_attempts(job_id)
        if delivered:
            return
        give_up = (job.finished_at or utcnow()) + timedelta(seconds=s.webhook_retry_s)
        body = json.dumps(payload(job), separators=(",", ":")).encode()
        if attempts and last_at is not None:
            # Tried before (this process before a restart, or another process): keep to the backoff,
            # and a delivery that was given up stays given up (the sweep must not restart it).
            next_at = last_at + timedelta(seconds=self._delay(job_id, attempts))
            if next_at > give_up:
                return
            wait = (next_at - utcnow()).total_seconds()
            if wait > 0:
                await asyncio.sleep(wait)
        while True:
            attempts += 1
            status, error = await self._post(job.webhook_url, body, job.user_id)
            await self.jobs.record_delivery(job_id, attempts, status, error)
            if status is not None and 200 <= status < 300:
                return
            delay = self._delay(job_id, attempts)
            if utcnow() + timedelta(seconds=delay) > give_up:
                log.warning("webhook for %s given up after %d attempts", job_id, attempts)
                return
            await asyncio.sleep(delay)

    def _delay(self, job_id: str, attempts: int) -> float:
        """The wait after the job's ``attempts``-th failed try."""
        s = self.settings
        jitter = delivery_jitter(job_id, attempts)  # looked up here: tests pin it
        return backoff_s(s.webhook_backoff_base_s, s.webhook_backoff_max_s, attempts, rand=lambda: jitter)

    async def _post(self, url: str, body: bytes, user_id: int | None) -> tuple[int | None, str | None]:
        try:
            # Checked again at delivery: the name may resolve elsewhere than at submission.
            await asyncio.to_thread(check_url, url, self.settings.webhook_allow_private)
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "morag-remote webhook",
                SIGNATURE_HEADER: signature_header(user_secret(self.secret, user_id).encode(), body),
            }
            resp = await self.client.post(url, content=body, headers=headers)
        except UnsafeURL as exc:
            return None, f"refused target: {exc}"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        return resp.status_code, None if resp.is_success else resp.text[:200]
