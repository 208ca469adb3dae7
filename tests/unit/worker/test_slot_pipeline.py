"""Jobs handed to a busy slot's child behind the one it runs (``--pipeline``): run in order by one
child, dropped when stopped before they begin, moved to a fresh child when the one ahead is killed
or crashes, and never left running once stopped."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from worker.errors import JobCanceled, ProcessCrashed
from worker.processors.base import JobInput, ProcessorConfig, ProcessResult
from worker.slots import ProcessSlot, SlotPool


def echo_job(tmp_path: Path, text: str = "hi", **options: object) -> JobInput:
    src = tmp_path / f"in-{time.monotonic_ns()}.txt"
    src.write_text(text)
    return JobInput(
        content_type="echo", options=dict(options), temp_dir=tmp_path, path=src, file_name="a.txt"
    )


@pytest.fixture
def slot(monkeypatch: pytest.MonkeyPatch) -> ProcessSlot:
    monkeypatch.setenv("MORAG_WORKER_TEST_HOOKS", "1")
    return ProcessSlot(ProcessorConfig(), kill_after_s=0.5)


def start(
    slot: ProcessSlot, inp: JobInput, key: str, seen: list[str] | None = None
) -> asyncio.Task[ProcessResult]:
    def progress(fraction: float, message: str) -> None:
        if seen is not None:
            seen.append(f"{key} {message}")

    return asyncio.ensure_future(slot.run(inp, progress, key))


async def wait_for(cond: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_jobs_behind_the_running_one_run_in_order_in_the_same_child(
    slot: ProcessSlot, tmp_path: Path
) -> None:
    seen: list[str] = []
    try:
        tasks = [start(slot, echo_job(tmp_path, f"job {i}", sleep_s=0.2), f"J{i}", seen) for i in range(3)]
        await asyncio.sleep(0.05)
        assert not slot.waiting("J0") and slot.waiting("J1") and slot.waiting("J2")
        results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert [r.markdown.split("\n\n", 1)[1].strip() for r in results] == ["job 0", "job 1", "job 2"]
        assert slot.started == 1  # one child ran all three
        firsts = [line.split()[0] for line in seen if line.endswith("reading input")]
        assert firsts == ["J0", "J1", "J2"]  # each began after the one before it
    finally:
        await slot.close()


@pytest.mark.parametrize("how", ["stop", "cancel"])
async def test_a_waiting_job_that_is_stopped_never_runs(slot: ProcessSlot, tmp_path: Path, how: str) -> None:
    """Stopped by the runner (``stop``: a cancel or a lost lease seen by the heartbeat) or by its task
    being canceled: the child drops it; it would kill the child if it ran."""
    try:
        first = start(slot, echo_job(tmp_path, "first", sleep_s=0.5), "J1")
        doomed = start(slot, echo_job(tmp_path, crash="segfault"), "J2")
        third = start(slot, echo_job(tmp_path, "third"), "J3")
        await asyncio.sleep(0.1)
        pid = slot.pid
        if how == "stop":
            slot.stop("J2")
        else:
            doomed.cancel()
        with pytest.raises(JobCanceled if how == "stop" else asyncio.CancelledError):
            await asyncio.wait_for(doomed, 30)
        assert "first" in (await asyncio.wait_for(first, 30)).markdown
        assert "third" in (await asyncio.wait_for(third, 30)).markdown
        assert slot.started == 1 and slot.pid == pid  # nothing was killed, nothing crashed
    finally:
        await slot.close()


async def test_stopping_the_running_job_moves_the_ones_behind_it_to_a_fresh_child(
    slot: ProcessSlot, tmp_path: Path
) -> None:
    try:
        running = start(slot, echo_job(tmp_path, spin_s=60), "J1")
        behind = [start(slot, echo_job(tmp_path, f"behind {i}"), f"J{i}") for i in (2, 3)]
        await asyncio.sleep(0.3)
        pid = slot.pid
        slot.stop("J1")
        with pytest.raises(JobCanceled):
            await asyncio.wait_for(running, 10)
        results = await asyncio.wait_for(asyncio.gather(*behind), 30)
        assert [r.markdown.split("\n\n", 1)[1].strip() for r in results] == ["behind 2", "behind 3"]
        assert slot.started == 2 and slot.pid != pid
        await slot.idle()
    finally:
        await slot.close()


async def test_a_crash_fails_only_the_job_that_ran(slot: ProcessSlot, tmp_path: Path) -> None:
    try:
        crashing = start(slot, echo_job(tmp_path, crash="segfault"), "J1")
        behind = start(slot, echo_job(tmp_path, "survivor"), "J2")
        with pytest.raises(ProcessCrashed):
            await asyncio.wait_for(crashing, 30)
        assert "survivor" in (await asyncio.wait_for(behind, 30)).markdown
        assert slot.started == 2
    finally:
        await slot.close()


@pytest.mark.parametrize("option", ["spin_s", "spin_first_s"])
async def test_a_skip_that_comes_after_the_job_began_kills_it(
    slot: ProcessSlot, tmp_path: Path, option: str
) -> None:
    """The parent has not read the result of the job ahead yet, so it sends a skip; the child has
    already begun the stopped job. It must not run on (60 s of CPU here): its first progress
    report shows it began (``spin_s``), or, for a job that says nothing (``spin_first_s``), the
    skip's answer does not come."""
    try:
        first = start(slot, echo_job(tmp_path, "first"), "J1")
        spinning = start(slot, echo_job(tmp_path, "spin", **dict.fromkeys([option], 60.0)), "J2")
        for _ in range(3):
            await asyncio.sleep(0)  # both written to the child
        time.sleep(1.0)  # the loop does not read: the child answers J1 and begins J2 meanwhile
        pid = slot.pid
        assert slot.waiting("J2")  # as far as the parent knows
        slot.stop("J2")
        assert "first" in (await asyncio.wait_for(first, 30)).markdown
        with pytest.raises(JobCanceled):
            await asyncio.wait_for(spinning, 10)
        await slot.idle()
        assert _gone(pid)
    finally:
        await slot.close()


def _gone(pid: int | None) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_the_pool_fills_free_slots_first_and_holds_depth() -> None:
    class Dummy:
        pass

    pool = SlotPool(Dummy, 2, pipelines=True)  # type: ignore[arg-type]
    a, b = pool.slots
    got = [await pool.acquire(3) for _ in range(2)]
    assert set(got) == {a, b}  # a free slot before a busy one
    got += [await pool.acquire(3) for _ in range(4)]
    assert pool.load == {a: 3, b: 3}
    waiter = asyncio.ensure_future(pool.acquire(3))
    late = asyncio.ensure_future(pool.acquire(3))
    await asyncio.sleep(0)
    assert not waiter.done()
    pool.give_back(b)
    await asyncio.sleep(0)
    assert waiter.done() and waiter.result() is b and not late.done()  # first come, first served
    late.cancel()
    await asyncio.sleep(0)
    pool.give_back(a)
    assert pool.load == {a: 2, b: 3}  # the canceled wait took nothing


async def test_a_job_asking_first_takes_the_next_free_slot_ahead_of_those_waiting() -> None:
    class Dummy:
        pass

    pool = SlotPool(Dummy, 1, pipelines=True)  # type: ignore[arg-type]
    (only,) = pool.slots
    await pool.acquire(1)
    waiting = [asyncio.ensure_future(pool.acquire(1)) for _ in range(2)]
    await asyncio.sleep(0)
    first = asyncio.ensure_future(pool.acquire(1, first=True))  # a standby claim's job
    await asyncio.sleep(0)
    assert not first.done()  # the slot is taken: it waits too, at the head
    pool.give_back(only)
    await asyncio.sleep(0)
    assert first.done() and not any(w.done() for w in waiting)
    pool.give_back(only)
    await asyncio.sleep(0)
    assert waiting[0].done() and not waiting[1].done()
    waiting[1].cancel()


async def test_depth_one_never_shares_a_slot_and_thread_pools_never_do() -> None:
    class Dummy:
        pass

    pool = SlotPool(Dummy, 1, pipelines=True)  # type: ignore[arg-type]
    (only,) = pool.slots
    assert await pool.acquire(1) is only
    second = asyncio.ensure_future(pool.acquire(1))
    await asyncio.sleep(0)
    assert not second.done()
    pool.give_back(only)
    await asyncio.sleep(0)
    assert second.result() is only
    threads = SlotPool(Dummy, 1, pipelines=False)  # type: ignore[arg-type]
    await threads.acquire(3)
    blocked = asyncio.ensure_future(threads.acquire(3))
    await asyncio.sleep(0)
    assert not blocked.done()
    blocked.cancel()


async def test_a_child_that_died_while_idle_is_replaced_for_the_next_job(
    slot: ProcessSlot, tmp_path: Path
) -> None:
    import os
    import signal

    try:
        await slot.run(echo_job(tmp_path, "one"), lambda f, m: None, "J1")
        pid = slot.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # the OOM killer, between jobs
        deadline = time.monotonic() + 10
        while not _gone(pid):  # without the loop running: the slot has not read the end of its pipe
            assert time.monotonic() < deadline
            time.sleep(0.01)
        result = await asyncio.wait_for(slot.run(echo_job(tmp_path, "two"), lambda f, m: None, "J2"), 30)
        assert "two" in result.markdown and slot.started == 2  # not blamed for the old child's death
    finally:
        await slot.close()


async def test_a_job_begun_behind_a_stopped_one_runs_again_in_the_fresh_child(
    slot: ProcessSlot, tmp_path: Path
) -> None:
    """J1 is stopped after the child finished it and began J2, before the parent read J1's result:
    the kill meant for J1 cuts J2 short, and J2 (not stopped) runs again to its result."""
    try:
        first = start(slot, echo_job(tmp_path, "first"), "J1")
        second = start(slot, echo_job(tmp_path, "second", sleep_s=0.5), "J2")
        for _ in range(3):
            await asyncio.sleep(0)
        time.sleep(0.3)  # the loop does not read: the child answers J1 and begins J2
        slot.stop("J1")  # J1 is still first in line as far as the parent knows
        with pytest.raises(JobCanceled):
            await asyncio.wait_for(first, 10)
        assert "second" in (await asyncio.wait_for(second, 30)).markdown
        assert slot.started == 2
    finally:
        await slot.close()
