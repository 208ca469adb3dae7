"""Slots: a long-lived child process per slot, killed on stop, restarted after a crash."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from worker.errors import BadInput, JobCanceled, OutOfMemory, ProcessCrashed
from worker.processors.base import JobInput, ProcessorConfig
from worker.slots import ProcessSlot


def echo_job(tmp_path: Path, text: str = "hi", **options: object) -> JobInput:
    src = tmp_path / f"in-{time.monotonic_ns()}.txt"
    src.write_text(text)
    return JobInput(
        content_type="echo", options=dict(options), temp_dir=tmp_path, path=src, file_name="a.txt"
    )


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process (None once it is gone or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if fields[0] == "Z":
        return None
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def slot() -> ProcessSlot:
    return ProcessSlot(ProcessorConfig(), kill_after_s=0.5)


async def test_the_child_lives_on_between_jobs_and_progress_flows(slot: ProcessSlot, tmp_path: Path) -> None:
    seen: list[tuple[float, str]] = []
    try:
        first = await slot.run(echo_job(tmp_path, "one", sleep_s=0.5), lambda f, m: seen.append((f, m)))
        pid = slot.pid
        quick: list[tuple[float, str]] = []
        second = await slot.run(echo_job(tmp_path, "two"), lambda f, m: quick.append((f, m)))
        assert "one" in first.markdown and "two" in second.markdown
        assert slot.pid == pid and slot.started == 1  # one process served both jobs
        # A job that ran a while reaches 100%; a quicker one's result says it is done.
        assert any(m == "sleeping" for _, m in seen) and seen[-1] == (1.0, "done")
        assert quick == [(0.1, "reading input")]
    finally:
        await slot.close()
    assert not slot.alive()


async def test_a_processing_error_keeps_its_class(slot: ProcessSlot, tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xff\xfe")
    try:
        with pytest.raises(BadInput, match="UTF-8") as info:
            await slot.run(JobInput("echo", {}, tmp_path, path=path), lambda f, m: None)
        assert info.value.retryable is False
    finally:
        await slot.close()


@pytest.mark.parametrize(
    "crash,error,text", [("segfault", ProcessCrashed, "SIGSEGV"), ("kill", OutOfMemory, "SIGKILL")]
)
async def test_a_crashed_child_fails_its_job_and_the_slot_serves_the_next(
    slot: ProcessSlot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: str, error: type, text: str
) -> None:
    monkeypatch.setenv("MORAG_WORKER_TEST_HOOKS", "1")
    try:
        with pytest.raises(error, match=text) as info:
            await slot.run(echo_job(tmp_path, crash=crash), lambda f, m: None)
        assert info.value.retryable is True
        result = await slot.run(echo_job(tmp_path, "still here"), lambda f, m: None)
        assert "still here" in result.markdown and slot.started == 2
    finally:
        await slot.close()


async def test_test_hooks_are_refused_without_the_variable(slot: ProcessSlot, tmp_path: Path) -> None:
    try:
        with pytest.raises(BadInput, match="tests only"):
            await slot.run(echo_job(tmp_path, crash="segfault"), lambda f, m: None)
    finally:
        await slot.close()


async def test_stop_kills_the_work_at_once(
    slot: ProcessSlot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    monkeypatch.setenv("MORAG_WORKER_TEST_HOOKS", "1")
    try:
        started = asyncio.Event()
        task = asyncio.ensure_future(slot.run(echo_job(tmp_path, spin_s=60), lambda f, m: started.set()))
        await asyncio.wait_for(started.wait(), 30)
        pid = slot.pid
        assert pid is not None
        before = cpu_seconds(pid)
        await asyncio.sleep(1.0)
        after = cpu_seconds(pid)
        assert before is not None and after is not None and after - before > 0.02  # it is burning CPU
        start = time.monotonic()
        slot.stop()
        with pytest.raises(JobCanceled):
            await task
        assert time.monotonic() - start < 2.0 and cpu_seconds(pid) is None
    finally:
        await slot.close()
