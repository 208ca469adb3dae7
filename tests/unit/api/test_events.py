"""Job events reach only the listeners whose feature the job uses (no per-job work otherwise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from api.events import JobEvents
from api.indexing.stage import IndexingStage
from api.jobs import JobEvent, JobKind, JobState, TaskStage
from api.settings import Settings
from api.webhooks import WebhookSender


class Recorder:
    def __init__(self) -> None:
        self.events: list[JobEvent] = []

    def job_changed(self, event: JobEvent) -> None:
        self.events.append(event)


def _event(kind: JobKind, state: JobState, stage: TaskStage, webhook: bool) -> JobEvent:
    return JobEvent("J1", state, stage, kind, webhook)


async def test_every_listed_listener_hears_each_event_and_none_is_published_for_nothing() -> None:
    a, b = Recorder(), Recorder()
    events = JobEvents()
    events.listen(a, b)
    done = _event(JobKind.process, JobState.succeeded, TaskStage.done, False)
    events.publish(done)
    events.publish(None)
    assert a.events == b.events == [done]


async def test_indexing_wakes_only_for_ingest_results(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, secret_key="s")
    stage = IndexingStage(jobs=Any, settings=settings, indexer=Any, events=JobEvents())  # type: ignore[arg-type]
    stage.job_changed(_event(JobKind.process, JobState.succeeded, TaskStage.done, False))
    stage.job_changed(_event(JobKind.ingest, JobState.canceled, TaskStage.process, False))
    assert not stage._wake.is_set()
    stage.job_changed(_event(JobKind.ingest, JobState.running, TaskStage.indexing, False))
    assert stage._wake.is_set()


async def test_webhooks_start_only_for_final_jobs_with_a_webhook(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, secret_key="s")
    sender = WebhookSender(jobs=Any, settings=settings, secret=b"s")  # type: ignore[arg-type]
    started: list[str] = []
    sender.notify = started.append  # type: ignore[method-assign]
    try:
        sender.job_changed(_event(JobKind.process, JobState.succeeded, TaskStage.done, False))
        sender.job_changed(_event(JobKind.ingest, JobState.running, TaskStage.indexing, True))
        assert started == []  # no read-back for a job without a webhook, nor before it ends
        sender.job_changed(_event(JobKind.process, JobState.failed, TaskStage.process, True))
        assert started == ["J1"]
    finally:
        await sender.client.aclose()
