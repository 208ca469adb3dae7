"""The waiter registry alone: one ticket wakes one waiter, tickets are never lost, one shared re-check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from api.waiters import ANY_USER_LANE, ClaimKey, Waiters

CPU_A = ClaimKey("ka", frozenset({"cpu-tasks-1"}), frozenset(), frozenset({"echo"}))
CPU_A2 = ClaimKey("ka2", frozenset({"cpu-tasks-1"}), frozenset(), frozenset({"echo"}))  # another key
CPU_B = ClaimKey("kb", frozenset({"cpu-tasks-2"}), frozenset(), frozenset({"echo"}))
SHARED = ClaimKey("ks", frozenset({"default"}), frozenset({ANY_USER_LANE}), frozenset({"echo"}))


class Queue:
    """A fake job table: jobs by lane; a claim takes the first job of one of its lanes."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, str]] = []  # (lane, id)
        self.calls: list[str] = []

    def claimer(self, name: str, key: ClaimKey) -> Callable[[], Awaitable[list[str]]]:
        async def run() -> list[str]:
            self.calls.append(name)
            await asyncio.sleep(0)  # a real query yields to the loop
            for i, (lane, job) in enumerate(self.jobs):
                if lane in key.own_lanes or ANY_USER_LANE in key.fallback_lanes:
                    del self.jobs[i]
                    return [job]
            return []

        return run


async def _never() -> bool:
    return False


async def _settle(w: Waiters, n: int) -> None:
    for _ in range(200):
        if len(w) == n and all(not x.busy for x in w._waiters.values()):
            return
        await asyncio.sleep(0.001)
    raise AssertionError("waiters did not settle")


def _wait(
    w: Waiters,
    q: Queue,
    name: str,
    key: ClaimKey,
    timeout: float = 5.0,
    gone: Callable[[], Awaitable[bool]] = _never,
) -> asyncio.Task[list[str]]:
    deadline = time.monotonic() + timeout
    return asyncio.create_task(w.claim_or_wait(key, q.claimer(name, key), 1, deadline, gone))


async def test_one_job_wakes_one_of_many_waiters() -> None:
    w, q = Waiters(recheck_s=60), Queue()
    tasks = [_wait(w, q, f"w{i}", CPU_A) for i in range(50)]
    await _settle(w, 50)
    q.calls.clear()
    q.jobs.append(("cpu-tasks-1", "j1"))
    w.offer([("cpu-tasks-1", "echo")])
    done, _ = await asyncio.wait(tasks, timeout=2, return_when=asyncio.FIRST_COMPLETED)
    assert [t.result() for t in done] == [["j1"]]
    await asyncio.sleep(0.05)
    assert q.calls == ["w0"]  # one query, by the oldest waiter; 49 stayed off the "database"
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert len(w) == 0


async def test_a_job_goes_to_a_waiter_of_its_lane_only() -> None:
    w, q = Waiters(recheck_s=60), Queue()
    other = _wait(w, q, "b", CPU_B)
    mine = _wait(w, q, "a", CPU_A)
    await _settle(w, 2)
    q.calls.clear()
    q.jobs.append(("cpu-tasks-1", "j1"))
    w.offer([("cpu-tasks-1", "echo"), ("cpu-tasks-1", "image")])  # the image job fits nobody
    assert await asyncio.wait_for(mine, 2) == ["j1"]
    assert q.calls == ["a"]
    other.cancel()


async def test_a_woken_waiter_whose_client_left_hands_the_job_on() -> None:
    w, q = Waiters(recheck_s=60), Queue()
    left = asyncio.Event()

    async def gone() -> bool:
        return left.is_set()

    first = _wait(w, q, "first", CPU_A, gone=gone)
    second = _wait(w, q, "second", CPU_A)
    await _settle(w, 2)
    left.set()
    q.jobs.append(("cpu-tasks-1", "j1"))
    w.offer([("cpu-tasks-1", "echo")])
    assert await asyncio.wait_for(first, 2) == []  # it did not claim for a closed connection
    assert await asyncio.wait_for(second, 2) == ["j1"]


async def test_a_waiter_leaving_with_a_ticket_hands_it_on() -> None:
    w, q = Waiters(recheck_s=60), Queue()
    stuck = asyncio.Event()

    async def hanging_claim() -> list[str]:
        await stuck.wait()  # its query hangs; the request is then cancelled
        return []

    first = asyncio.create_task(w.claim_or_wait(CPU_A, hanging_claim, 1, time.monotonic() + 60, _never))
    await asyncio.sleep(0.01)
    w.offer([("cpu-tasks-1", "echo")])  # the only waiter is busy: it holds the ticket
    second = _wait(w, q, "second", CPU_A)
    await _settle_one_idle(w)
    q.jobs.append(("cpu-tasks-1", "j1"))  # (the fake table shows it only now)
    first.cancel()
    assert await asyncio.wait_for(second, 2) == ["j1"]  # the ticket was not taken to the grave


async def _settle_one_idle(w: Waiters) -> None:
    for _ in range(200):
        if any(not x.busy for x in w._waiters.values()):
            return
        await asyncio.sleep(0.001)
    raise AssertionError("no idle waiter")


async def test_a_miss_passes_to_another_group_not_to_the_same_one() -> None:
    w, q = Waiters(recheck_s=60), Queue()
    a = [_wait(w, q, f"a{i}", CPU_A) for i in range(5)]
    await _settle(w, 5)
    a2 = _wait(w, q, "a2", CPU_A2)  # another key of the same user: another group
    await _settle(w, 6)
    q.calls.clear()
    w.offer([("cpu-tasks-1", "echo")])  # announced, but gone (a busy worker took it meanwhile)
    await asyncio.sleep(0.1)
    assert q.calls == ["a0", "a2"]  # one look per group, not one per waiter
    for t in [*a, a2]:
        t.cancel()
    await asyncio.gather(*a, a2, return_exceptions=True)


async def test_a_ticket_during_the_query_makes_it_look_again() -> None:
    w, q = Waiters(recheck_s=60), Queue()
    release = asyncio.Event()
    calls = 0

    async def slow_claim() -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await release.wait()  # the query saw an empty table ...
            return []
        return ["j1"] if q.jobs else []

    task = asyncio.create_task(w.claim_or_wait(CPU_A, slow_claim, 1, time.monotonic() + 60, _never))
    await asyncio.sleep(0.01)
    q.jobs.append(("cpu-tasks-1", "j1"))  # ... and the job commits before it returns
    w.offer([("cpu-tasks-1", "echo")])
    release.set()
    assert await asyncio.wait_for(task, 2) == ["j1"]  # not after the 60 s poll


async def test_a_shared_worker_is_offered_user_jobs_after_the_owners_workers() -> None:
    w, q = Waiters(recheck_s=60), Queue()
    shared = _wait(w, q, "shared", SHARED)
    await _settle(w, 1)
    own = _wait(w, q, "own", CPU_A)
    await _settle(w, 2)
    q.calls.clear()
    q.jobs.append(("cpu-tasks-1", "j1"))
    w.offer([("cpu-tasks-1", "echo")])
    assert await asyncio.wait_for(own, 2) == ["j1"]
    assert q.calls == ["own"]
    shared.cancel()


async def test_the_shared_recheck_is_one_query_per_group_not_per_waiter() -> None:
    w, q = Waiters(recheck_s=0.1), Queue()
    tasks = [_wait(w, q, f"a{i}", CPU_A) for i in range(20)] + [
        _wait(w, q, f"b{i}", CPU_B) for i in range(20)
    ]
    await _settle(w, 40)
    q.calls.clear()
    await asyncio.sleep(0.55)
    assert 6 <= len(q.calls) <= 14, q.calls  # ~5 ticks x 2 groups (not 5 x 40)
    # A job that became claimable by time, never announced: the re-check finds it.
    q.jobs.append(("cpu-tasks-2", "late"))
    done, _ = await asyncio.wait(tasks, timeout=2, return_when=asyncio.FIRST_COMPLETED)
    assert [t.result() for t in done] == [["late"]]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.25)
    assert w._timer is None  # no waiters, no timer


# -- a new long-poll of a group that just found nothing waits without a query -------------------
def _repoll(
    w: Waiters, q: Queue, name: str, key: ClaimKey, allowed: bool = True, timeout: float = 5.0
) -> asyncio.Task[list[str]]:
    """A claim that may wait first (the route allows it for a worker it knows)."""
    deadline = time.monotonic() + timeout
    return asyncio.create_task(
        w.claim_or_wait(key, q.claimer(name, key), 1, deadline, _never, wait_first=lambda: allowed)
    )


async def _empty_look(w: Waiters, q: Queue, key: ClaimKey) -> None:
    """One claim of the group that finds nothing and leaves (a 204)."""
    assert await w.claim_or_wait(key, q.claimer("look", key), 1, time.monotonic(), _never) == []


async def test_a_repoll_after_an_empty_look_waits_without_a_query_and_still_gets_the_next_job() -> None:
    w, q = Waiters(recheck_s=60), Queue()
    await _empty_look(w, q, CPU_A)
    assert w.known_empty(CPU_A) and not w.known_empty(CPU_B)
    q.calls.clear()
    task = _repoll(w, q, "again", CPU_A)
    await _settle(w, 1)
    assert q.calls == [] and w.claims_skipped == 1  # no query: it waits as the others do
    q.jobs.append(("cpu-tasks-1", "j1"))
    w.offer([("cpu-tasks-1", "echo")])
    assert await asyncio.wait_for(task, 2) == ["j1"]
    assert q.calls == ["again"]


async def test_a_repoll_queries_after_any_announcement_since_the_empty_look() -> None:
    w, q = Waiters(recheck_s=60), Queue()
    await _empty_look(w, q, CPU_A)
    q.jobs.append(("cpu-tasks-1", "j1"))
    w.offer([("cpu-tasks-1", "echo")])  # nobody waited for it: the ticket found no waiter
    assert not w.known_empty(CPU_A)
    assert await asyncio.wait_for(_repoll(w, q, "again", CPU_A), 2) == ["j1"]
    assert w.claims_skipped == 0


async def test_a_look_that_overlapped_an_announcement_proves_nothing() -> None:
    w, q = Waiters(recheck_s=60), Queue()
    gate = asyncio.Event()

    async def slow_empty() -> list[str]:
        await gate.wait()  # the job is re-queued and announced while this query runs
        return []

    look = asyncio.create_task(w.claim_or_wait(CPU_A, slow_empty, 1, time.monotonic(), _never))
    await asyncio.sleep(0.01)
    q.jobs.append(("cpu-tasks-1", "j1"))
    w.offer([(None, None)])  # lanes unknown (the reaper): no ticket for a busy waiter
    gate.set()
    assert await asyncio.wait_for(look, 2) == []
    assert not w.known_empty(CPU_A)
    assert await asyncio.wait_for(_repoll(w, q, "again", CPU_A), 2) == ["j1"]


async def test_an_empty_look_goes_stale_after_the_recheck_interval() -> None:
    w, q = Waiters(recheck_s=0.05), Queue()
    await _empty_look(w, q, CPU_A)
    assert w.known_empty(CPU_A)
    await asyncio.sleep(0.06)
    assert not w.known_empty(CPU_A)  # a job may have become claimable by time (a fallback due)
    q.jobs.append(("cpu-tasks-1", "j1"))  # ... as this one did, unannounced
    assert await asyncio.wait_for(_repoll(w, q, "again", CPU_A), 2) == ["j1"]
    assert w.claims_skipped == 0


async def test_a_waiting_repoll_is_rechecked_like_any_waiter() -> None:
    w, q = Waiters(recheck_s=0.05), Queue()
    await _empty_look(w, q, CPU_A)
    task = _repoll(w, q, "again", CPU_A)
    await _settle(w, 1)
    assert w.claims_skipped == 1
    q.jobs.append(("cpu-tasks-1", "j1"))  # claimable by time: nobody announces it
    assert await asyncio.wait_for(task, 2) == ["j1"]  # the shared re-check found it


async def test_a_repoll_the_caller_does_not_allow_to_wait_first_queries() -> None:
    w, q = Waiters(recheck_s=60), Queue()
    await _empty_look(w, q, CPU_A)
    q.calls.clear()
    task = _repoll(w, q, "first-claim", CPU_A, allowed=False)  # e.g. its presence must be written
    await _settle(w, 1)
    assert q.calls == ["first-claim"] and w.claims_skipped == 0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_skipped_repoll_ends_empty_at_its_deadline() -> None:
    w, q = Waiters(recheck_s=60), Queue()
    await _empty_look(w, q, CPU_A)
    q.calls.clear()
    assert await asyncio.wait_for(_repoll(w, q, "again", CPU_A, timeout=0.05), 2) == []
    assert q.calls == [] and len(w) == 0


async def test_a_hand_off_reserves_the_oldest_open_waiter_of_the_jobs_own_lane() -> None:
    w, q = Waiters(recheck_s=60), Queue()
    takes: list[str] = []

    def taker(name: str, ok: bool = True) -> Callable[[], object | None]:
        def take() -> object | None:
            takes.append(name)
            return f"lease-{name}" if ok else None

        return take

    def wait_taking(name: str, key: ClaimKey, ok: bool = True) -> asyncio.Task[list[str]]:
        deadline = time.monotonic() + 5
        return asyncio.create_task(
            w.claim_or_wait(key, q.claimer(name, key), 1, deadline, _never, take=taker(name, ok))
        )

    other_lane = wait_taking("b", CPU_B)
    first, second = wait_taking("a1", CPU_A), wait_taking("a2", CPU_A2)
    declines = wait_taking("no", CPU_A, ok=False)  # must run its query (e.g. its presence row)
    shared = wait_taking("s", SHARED)  # takes user jobs only by a fallback: never handed one
    await _settle(w, 5)
    q.calls.clear()
    found = w.reserve("cpu-tasks-1", "echo")
    assert found is not None and found[1] == "lease-a1" and takes == ["a1"]
    assert w.reserve("cpu-tasks-1", "image") is None  # a type nobody takes
    # While a1's job is being inserted, a job announced for its lane goes to a2, at once.
    q.jobs.append(("cpu-tasks-1", "queued"))
    w.offer([("cpu-tasks-1", "echo")])
    assert await asyncio.wait_for(second, 2) == ["queued"]
    assert q.calls == ["a2"] and not first.done()
    assert w.hand(found[0], "handed")
    assert await asyncio.wait_for(first, 2) == ["handed"]  # no query of its own
    assert q.calls == ["a2"] and w.handoffs == 1
    assert w.reserve("cpu-tasks-1", "echo") is None  # only "no" is left, and it declines
    assert takes == ["a1", "no"]
    for t in (other_lane, declines, shared):
        t.cancel()
    await asyncio.gather(other_lane, declines, shared, return_exceptions=True)
    assert len(w) == 0


async def test_a_released_reservation_waits_on_until_its_deadline() -> None:
    w, q = Waiters(recheck_s=60), Queue()
    deadline = time.monotonic() + 0.3
    task = asyncio.create_task(
        w.claim_or_wait(CPU_A, q.claimer("a", CPU_A), 1, deadline, _never, take=lambda: "lease")
    )
    await _settle(w, 1)
    found = w.reserve("cpu-tasks-1", "echo")
    assert found is not None
    assert w.reserve("cpu-tasks-1", "echo") is None  # held for one job: never for two
    await asyncio.sleep(0.4)  # past its deadline while its job is being inserted: it waits for that
    assert not task.done()
    assert w.hand(found[0], "job") and await asyncio.wait_for(task, 1) == ["job"]
    task = asyncio.create_task(
        w.claim_or_wait(CPU_A, q.claimer("a", CPU_A), 1, time.monotonic() + 0.3, _never, take=lambda: "lease")
    )
    await _settle(w, 1)
    found = w.reserve("cpu-tasks-1", "echo")
    assert found is not None
    w.release(found[0])  # the insert failed: it waits on, without a query, to its deadline
    await asyncio.sleep(0.1)
    assert not task.done()
    assert await asyncio.wait_for(task, 1) == []
    assert q.calls == ["a", "a"]  # each claim's own first look only


def _standby(w: Waiters, q: Queue, name: str, key: ClaimKey, timeout: float = 5.0) -> asyncio.Task[list[str]]:
    deadline = time.monotonic() + timeout
    take = lambda: "lease"  # noqa: E731  # what a hand-off at insert would lease
    return asyncio.create_task(
        w.claim_or_wait(key, q.claimer(name, key), 1, deadline, _never, take=take, standby=True)
    )


async def test_a_standby_claim_waits_without_a_query_and_no_recheck_wakes_it() -> None:
    """A busy worker's standby claim over a deep queue: it must not take the queue's first job on
    arrival, nor on the shared re-check, nor by a hand-off at insert, nor by a 'maybe more' look."""
    w, q = Waiters(recheck_s=0.02), Queue()
    q.jobs.extend(("cpu-tasks-1", f"a{i}") for i in range(5))
    standbys = [_standby(w, q, "shared", SHARED), _standby(w, q, "own", CPU_A)]
    await _settle(w, 2)
    await asyncio.sleep(0.15)  # seven re-checks
    w._look_again(SHARED)
    w._look_again(CPU_A)
    await asyncio.sleep(0.02)  # a woken waiter would have run its query by now
    assert w.reserve("cpu-tasks-1", "echo") is None  # "own" takes the lane as its own, yet is not reserved
    assert q.calls == [] and not any(t.done() for t in standbys)
    assert w.claims_skipped == 0  # not counted as a re-poll that skipped its query
    for t in standbys:
        t.cancel()
    await asyncio.gather(*standbys, return_exceptions=True)


async def test_a_new_job_goes_to_an_idle_waiter_before_a_standby_claim() -> None:
    w, q = Waiters(recheck_s=60), Queue()
    standby = _standby(w, q, "standby", SHARED)
    await _settle(w, 1)
    idle = _wait(w, q, "idle", SHARED)  # registered after it, and still preferred
    await _settle(w, 2)
    q.calls.clear()
    q.jobs.append(("cpu-tasks-2", "b1"))
    w.offer([("cpu-tasks-2", "echo")])
    assert await asyncio.wait_for(idle, 2) == ["b1"]
    assert q.calls == ["idle"] and not standby.done()
    standby.cancel()


async def test_a_new_job_no_other_claim_fits_wakes_a_standby_claim_which_takes_it() -> None:
    w, q = Waiters(recheck_s=60), Queue()
    standby = _standby(w, q, "standby", SHARED)
    await _settle(w, 1)
    q.jobs.append(("cpu-tasks-2", "b1"))
    w.offer([("cpu-tasks-2", "echo")])
    assert await asyncio.wait_for(standby, 2) == ["b1"]
    assert q.calls == ["standby"]


async def test_a_flooding_lane_wakes_standby_claims_at_most_its_rate_a_second() -> None:
    """Past ``standby_lane_rate`` tickets in a second a lane's jobs wake no standby claim (they
    wait for the workers' batch claims); another lane's first job still does."""
    w, q = Waiters(recheck_s=60, standby_lane_rate=3), Queue()
    woken = []
    for i in range(5):
        standby = _standby(w, q, f"s{i}", SHARED)
        await _settle(w, 1)
        q.jobs.append(("cpu-tasks-1", f"a{i}"))
        w.offer([("cpu-tasks-1", "echo")])
        done, _ = await asyncio.wait({standby}, timeout=0.1)
        woken.append(bool(done))
        if not done:
            standby.cancel()
            await asyncio.gather(standby, return_exceptions=True)
    assert woken == [True, True, True, False, False]
    q.jobs.clear()
    standby = _standby(w, q, "other", SHARED)
    await _settle(w, 1)
    q.jobs.append(("cpu-tasks-2", "b1"))
    w.offer([("cpu-tasks-2", "echo")])
    assert await asyncio.wait_for(standby, 2) == ["b1"]
    w._standby_use["cpu-tasks-1"] = (time.monotonic() - 1.0, 3)  # the second is over
    standby = _standby(w, q, "again", SHARED)
    await _settle(w, 1)
    q.jobs.append(("cpu-tasks-1", "a9"))
    w.offer([("cpu-tasks-1", "echo")])
    assert await asyncio.wait_for(standby, 2) == ["a9"]


async def _busy_and_standby_then_bob(
    w: Waiters, q: Queue, busy_claim: Callable[[], Awaitable[list[str]]], max_jobs: int
) -> tuple[asyncio.Task[list[str]], asyncio.Task[list[str]]]:
    """A shared claim busy with ``busy_claim``, then a standby claim; then bob's job b1 queued."""
    busy = asyncio.create_task(w.claim_or_wait(SHARED, busy_claim, max_jobs, time.monotonic() + 5, _never))
    await asyncio.sleep(0.01)
    standby = _standby(w, q, "standby", SHARED)
    await asyncio.sleep(0.01)
    q.jobs.append(("cpu-tasks-2", "b1"))
    w.offer([("cpu-tasks-2", "echo")])
    return busy, standby


async def test_a_new_job_goes_to_a_standby_claim_before_a_claim_busy_with_its_query() -> None:
    """A busy claim's query may have begun before the job was committed; if it leases anything
    the ticket counts as served and the job waits for that worker's next batch claim."""
    w, q = Waiters(recheck_s=60), Queue()
    go_on = asyncio.Event()

    async def busy_claim() -> list[str]:
        await go_on.wait()
        return ["a-batch"]  # leased jobs queued before the new one

    busy, standby = await _busy_and_standby_then_bob(w, q, busy_claim, 12)
    assert await asyncio.wait_for(standby, 2) == ["b1"]
    go_on.set()
    assert await busy == ["a-batch"]


async def test_past_the_lane_rate_a_new_job_still_reaches_a_busy_claim() -> None:
    """With the lane over its standby rate the ticket goes where it would without standby claims:
    a busy claim whose query began before the job and found nothing then looks again at once
    (not at the next re-check)."""
    w, q = Waiters(recheck_s=60, standby_lane_rate=0), Queue()
    go_on = asyncio.Event()
    looks: list[int] = []

    async def slow_claim() -> list[str]:
        looks.append(1)
        if len(looks) == 1:
            await go_on.wait()  # began before the job was queued: finds nothing
            return []
        return [job for lane, job in q.jobs if lane == "cpu-tasks-2"][:1]

    busy, standby = await _busy_and_standby_then_bob(w, q, slow_claim, 1)
    go_on.set()
    assert await asyncio.wait_for(busy, 2) == ["b1"]
    assert len(looks) == 2 and not standby.done()
    standby.cancel()
