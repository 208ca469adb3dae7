"""Waiting claims, kept off the database: a new job wakes ONE suitable waiter, not all.

Every long-polling claim of this server process registers a :class:`Waiter` for as long as its
request lasts. A queued job is announced with its lane and content type (:meth:`Waiters.offer`);
the registry hands one *ticket* per job to one idle waiter whose claim could take it (its own lane
first, then a waiter that could take it by a fallback), oldest waiter first. Only that waiter runs
its claim query. A ticket is never lost:

- a waiter whose claim finds nothing (another process or a busy worker took the job, or the job is
  not claimable yet) hands the ticket to a suitable waiter of a group that has not tried it
  (waiters of one group run the same query: when one finds nothing, so would the others);
- a waiter that leaves with a ticket in hand (its poll ended, its client hung up) hands it on;
- a ticket that arrives while its waiter is running its query makes it query once more;
- a re-check claim (below) that filled ``max_jobs`` has the next waiter of its group look too.

Jobs that become claimable by time (a fallback falls due, a retry backoff ends) or that were
announced without their lane (re-queued by the reaper, fallback sweeps) are found by one shared,
process-wide re-check: every ``claim_recheck_s`` while anyone waits, the oldest idle waiter of each
distinct claim (same key, lanes and content types) runs its claim once. Waiting costs no query.
While the fallback sweep's last look found no queued job at all and none was announced since
(:attr:`Waiters.queue_may_hold`), no job can become claimable by time and the re-check is skipped.

A job queued while a claim that takes its lane as its own waits idle skips the claim query
altogether: the submit :meth:`Waiters.reserve`\ s that waiter, its insert writes the job already
leased to it (the lease the waiter's ``take`` gives), and :meth:`Waiters.hand` passes the leased
job to it after the commit. The waiter answers with it without a query: one statement and one
commit fewer between a submit and the worker (the dispatch latency). A waiter that left before the
hand-off is told so (``hand`` returns False) and the caller gives the lease back.

A new long-poll whose group looked less than ``claim_recheck_s`` ago and found nothing, with no job
announced since (``known_empty``), starts waiting without a query of its own when its caller allows
it (``wait_first``: the route's presence bookkeeping): it is then exactly a claim that was already
waiting. Idle workers re-poll every ~26 s, and each re-poll was one claim query that found nothing.

A *standby* claim (``ClaimRequest.standby``) comes from a worker whose slots and prefetched jobs
are all taken: it would otherwise claim again only after a batch of its jobs ended. It starts
waiting without a query, takes no re-check, no hand-off at insert and no "maybe more" look, and a
ticket reaches it only when no idle claim fits the new job; it goes before a claim that is running
its query (that query may have begun before the job was committed, and a claim that leases
anything counts its tickets as served, so the job would wait for that worker's next batch). Its
query then takes the first job of its claim's order (the shared lane's user with the fewest jobs
in flight first), so a user's first job does not wait for a flooded worker's next batch
(bench/fairness.py). A lane whose
tickets went to standby claims ``standby_lane_rate`` times within the last second sends its next
ones, until the second is over, where they would go without standby claims (a busy claim, or
nobody): a flooding lane costs at most that many extra one-job claims a second, and its jobs wait
for the workers' batch claims, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

ANY_USER_LANE = "*"  # a shared worker may take any user's job once its shared fallback is due


@dataclass(frozen=True)
class ClaimKey:
    """What decides which jobs a waiting claim could take; waiters with equal keys are one group."""

    key_id: str | None
    own_lanes: frozenset[str]  # taken as soon as queued
    fallback_lanes: frozenset[str]  # taken once a fallback is due (may be ANY_USER_LANE)
    content_types: frozenset[str]

    def direct(self, lane: str | None, ctype: str | None) -> bool:
        return (ctype is None or ctype in self.content_types) and lane in self.own_lanes

    def fallback(self, lane: str | None, ctype: str | None) -> bool:
        if ctype is not None and ctype not in self.content_types:
            return False
        return lane is None or lane in self.fallback_lanes or ANY_USER_LANE in self.fallback_lanes


@dataclass(eq=False)
class Ticket:
    """One announced job looking for a claim: ``lane``/``ctype`` None when not known."""

    lane: str | None
    ctype: str | None
    tried: set[ClaimKey] = field(default_factory=set)  # groups whose claim ran and found nothing
    recheck: bool = False  # only a look (safety re-check, "maybe more"): dropped when nothing found


@dataclass(eq=False)
class Waiter:
    id: int
    key: ClaimKey
    event: asyncio.Event = field(default_factory=asyncio.Event)
    tickets: list[Ticket] = field(default_factory=list)
    busy: bool = True  # running its claim query (not waiting)
    take: Callable[[], object | None] | None = None  # a lease for a job handed at its insert
    held: bool = False  # reserved by a submit whose insert (of a job leased to it) is in flight
    handed: list[object] = field(default_factory=list)  # jobs leased to it by their insert
    standby: bool = False  # a busy worker's standby claim: only new jobs no other waiter fits

    def open(self) -> bool:
        """Idle and free: no ticket to look for, no hand-off under way or waiting to be taken."""
        return not (self.busy or self.tickets or self.held or self.handed)


class Waiters:
    """The waiting claims of one server process."""

    def __init__(self, recheck_s: float, standby_lane_rate: int = 20) -> None:
        self.recheck_s = recheck_s
        self.standby_lane_rate = standby_lane_rate
        # Per lane: when its current one-second window began, and its tickets given to standby
        # claims within it.
        self._standby_use: dict[str, tuple[float, int]] = {}
        self._ids = itertools.count(1)
        self._waiters: dict[int, Waiter] = {}  # insertion order = oldest first
        self._timer: asyncio.Task[None] | None = None
        self.claims_run = 0  # claim queries run by waiters (tests and metrics)
        self.claims_skipped = 0  # long-polls that started waiting on a group's recent empty look
        self.handoffs = 0  # jobs leased to a waiting claim by their own insert (no claim query)
        self._pending: set[asyncio.Task[object]] = set()  # hand-offs being given back
        # Bumped whenever jobs are announced: an empty look older than the last announcement
        # proves nothing about what is queued now.
        self._announced = 0
        # Per group: when its last empty look began, and _announced then.
        self._empty: dict[ClaimKey, tuple[float, int]] = {}
        # _announced when a look (the fallback sweep's) last found no queued job at all.
        self._none_queued_at: int | None = None

    def __len__(self) -> int:
        return len(self._waiters)

    # -- announcing work ---------------------------------------------------------------------
    def offer(self, jobs: Iterable[tuple[str | None, str | None]]) -> None:
        """One ticket per queued job ``(lane, content_type)``; ``(None, None)``: lane unknown."""
        self._announced += 1
        unknown = False
        for lane, ctype in jobs:
            if lane is None and ctype is None:
                unknown = True
                continue
            self._place(Ticket(lane, ctype))
        if unknown:
            self.recheck()

    @property
    def announced(self) -> int:
        """How many announcements so far (read it before a look that :meth:`none_queued` reports)."""
        return self._announced

    @property
    def queue_may_hold(self) -> bool:
        """False only while the last look at the whole queue found no queued job and nothing was
        announced since: then no job can become claimable by time, and the re-check, the fallback
        sweep and the unserved check have nothing to look at. Every change that queues a job
        announces it after its commit (this process's directly, another's by its NOTIFY)."""
        return self._none_queued_at != self._announced

    def none_queued(self, announced: int) -> None:
        """A look that began when :attr:`announced` was ``announced`` found no queued job; one
        that overlapped an announcement proves nothing (:attr:`queue_may_hold` stays True)."""
        self._none_queued_at = announced

    def recheck(self) -> None:
        """One claim per distinct waiting claim: the oldest idle waiter of each group looks; none
        while no job is queued at all (:attr:`queue_may_hold`)."""
        if not self.queue_may_hold:
            return
        seen: set[ClaimKey] = set()
        for w in list(self._waiters.values()):
            if w.standby or w.key in seen:
                continue
            seen.add(w.key)
            if w.open():
                self._give(w, Ticket(None, None, recheck=True))
            # a busy waiter of this group is querying right now: that is the group's look

    def _place(self, ticket: Ticket) -> bool:
        """Give the ticket to the best idle untried waiter (then a busy one); False if none fits."""
        best: Waiter | None = None
        standby: Waiter | None = None
        rank = standby_rank = 99.0
        for w in self._waiters.values():
            if w.tickets or w.held or w.handed or w.key in ticket.tried:
                continue
            if w.key.direct(ticket.lane, ticket.ctype):
                r = 0.0
            elif w.key.fallback(ticket.lane, ticket.ctype):
                r = 2.0
            else:
                continue
            if w.busy:
                r += 1
            if w.standby:
                if ticket.lane is None:  # only new jobs of a known lane, never a look
                    continue
                # After the idle claims, before the busy ones: a busy claim's query may have
                # begun before this job was committed, and one that leases anything counts the
                # ticket as served, so the job would wait for that worker's next batch.
                if r + 0.5 < standby_rank:
                    standby, standby_rank = w, r + 0.5
                continue
            if r < rank:
                best, rank = w, r
                if r == 0:
                    break
        # Past the lane's rate the ticket goes where it would without standby claims (a busy
        # claim whose query found nothing then looks again), or nowhere.
        if standby is not None and standby_rank < rank and self._standby_allowed(ticket.lane):
            best = standby
        if best is None:
            return False
        self._give(best, ticket)
        return True

    def _standby_allowed(self, lane: str | None) -> bool:
        """Count one more of ``lane``'s tickets going to a standby claim; False past the lane's
        ``standby_lane_rate`` within the current second."""
        if lane is None or self.standby_lane_rate <= 0:
            return False
        now = time.monotonic()
        began, used = self._standby_use.get(lane, (now, 0))
        if now - began >= 1.0:
            began, used = now, 0
        if used >= self.standby_lane_rate:
            return False
        if len(self._standby_use) > 10_000:  # a bound: lanes come and go
            self._standby_use.clear()
        self._standby_use[lane] = (began, used + 1)
        return True

    def _give(self, w: Waiter, ticket: Ticket) -> None:
        w.tickets.append(ticket)
        w.event.set()

    def _pass_on(self, tickets: Iterable[Ticket]) -> None:
        for t in tickets:
            if not t.recheck:
                self._place(t)

    # -- handing a new job to a waiting claim ------------------------------------------------
    def reserve(self, lane: str, ctype: str) -> tuple[Waiter, object] | None:
        """For a job about to be inserted: the oldest open waiter that takes its lane and type as
        its own, and the lease its ``take`` gives (None: no such waiter). The waiter is held for
        this job until :meth:`hand` or :meth:`release`; nothing else is given to it meanwhile.

        Only an open waiter qualifies: its last look found nothing it could take, so the new job
        overtakes at most a job of its lanes that became claimable by time since (a retry's
        backoff ending), which the shared re-check would have found within ``recheck_s``."""
        for w in self._waiters.values():
            if w.take is None or not w.open() or not w.key.direct(lane, ctype):  # a standby has no take
                continue
            lease = w.take()
            if lease is None:  # this claim must run its query (e.g. its presence row needs a write)
                continue
            w.held = True
            return w, lease
        return None

    def hand(self, w: Waiter, job: object) -> bool:
        """After the insert that leased ``job`` to the reserved ``w`` committed: ``w`` answers
        with it. False when ``w`` left meanwhile (its request ended): give the lease back."""
        w.held = False
        if self._waiters.get(w.id) is not w:
            return False
        w.handed.append(job)
        self.handoffs += 1
        w.event.set()
        return True

    def release(self, w: Waiter) -> None:
        """The insert failed: ``w`` waits on as before."""
        w.held = False
        w.event.set()  # it may have passed its deadline while held

    # -- waiting ---------------------------------------------------------------------------
    def known_empty(self, key: ClaimKey) -> bool:
        """This group's claim looked less than ``recheck_s`` ago, found nothing, and no job has
        been announced since it began: a new claim of the group would find nothing either, except
        a job that became claimable by time, which the shared re-check finds as for any waiter."""
        seen = self._empty.get(key)
        return seen is not None and seen[1] == self._announced and time.monotonic() - seen[0] < self.recheck_s

    def _found_nothing(self, key: ClaimKey, began: float, announced: int) -> None:
        """Note the group's empty look; one that overlapped an announcement never counts."""
        if len(self._empty) > 10_000:  # a bound: keys and their lane sets come and go
            self._empty.clear()
        seen = self._empty.get(key)
        if seen is None or seen[0] < began:
            self._empty[key] = (began, announced)

    async def claim_or_wait(
        self,
        key: ClaimKey,
        claim: Callable[[], Awaitable[list[T]]],
        max_jobs: int,
        deadline: float,
        disconnected: Callable[[], Awaitable[bool]],
        wait_first: Callable[[], bool] | None = None,
        take: Callable[[], object | None] | None = None,
        give_back: Callable[[list[T]], Coroutine[object, object, object]] | None = None,
        standby: bool = False,
    ) -> list[T]:
        """Run ``claim`` now and again whenever a ticket arrives, until it leases jobs, the
        ``deadline`` (``time.monotonic()``) passes or the client hangs up; [] when none came.

        ``wait_first``: asked when the group is :meth:`known_empty` (and the claim may wait);
        True lets this claim skip its first query and wait at once. ``take``: while this claim
        waits, a new job of its own lanes may be leased to it by its insert (:meth:`reserve`);
        ``take`` gives that lease (None: not now), and the claim answers with the job;
        ``give_back`` returns such jobs to the queue when this claim is cancelled before it could
        answer with them (rather than leaving them to their lease's expiry). ``standby``: a standby
        claim (above); it waits first, whatever its group saw."""
        w = Waiter(next(self._ids), key, take=None if standby else take, standby=standby)
        self._waiters[w.id] = w  # registered before the first query: nothing queued meanwhile is missed
        self._ensure_timer()
        skip = standby or (
            wait_first is not None and deadline > time.monotonic() and self.known_empty(key) and wait_first()
        )
        if skip and not standby:
            self.claims_skipped += 1
        try:
            while True:
                if not skip:
                    w.busy = True
                    w.event.clear()
                    held, w.tickets = w.tickets, []
                    self.claims_run += 1
                    began, announced = time.monotonic(), self._announced
                    leased = await claim()
                    if leased:
                        # Tickets beyond the jobs taken go on; a full claim may have left more work.
                        spare = [t for t in held + w.tickets if not t.recheck][len(leased) :]
                        w.tickets = []
                        self._pass_on(spare)
                        if len(leased) >= max_jobs and any(t.recheck for t in held):
                            self._look_again(key)  # a re-check (lanes unknown) may have found more than one
                        return leased
                    # Nothing for them here, nor for any waiter of this group (same query, and the
                    # jobs were committed before it ran): a waiter of another group looks.
                    self._found_nothing(key, began, announced)
                    for t in held:
                        t.tried.add(key)
                    self._pass_on(held)
                    w.busy = False
                    if w.tickets:  # arrived during the query: look again at once
                        continue
                    if deadline - time.monotonic() <= 0 or await disconnected():
                        return []
                skip = False  # a claim that skipped its query waits as one that was here already
                await self._wait(w, deadline)
                if w.handed:
                    handed, w.handed = w.handed, []
                    return handed  # type: ignore[return-value]  # what ``take`` leased: T
                if not w.tickets:
                    if deadline - time.monotonic() > 0:  # woken by a hand-off given up: wait on
                        skip = True
                        continue
                    return []  # the deadline passed
                if await disconnected():
                    return []
        finally:
            self._leave(w, give_back)

    async def _wait(self, w: Waiter, deadline: float) -> None:
        """Until a ticket or a hand-off arrives or the deadline passes; a hand-off under way
        (``held``) is waited for past the deadline: its job is being leased to this claim."""
        w.busy = False
        if not (w.tickets or w.held or w.handed):
            w.event.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
            # arrives with the event, and the claim would answer a request that is gone.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - time.monotonic()):
                    await w.event.wait()
        while w.held:
            w.event.clear()
            await w.event.wait()

    def _leave(
        self, w: Waiter, give_back: Callable[[list[T]], Coroutine[object, object, object]] | None
    ) -> None:
        del self._waiters[w.id]
        w.busy = True
        self._pass_on(w.tickets)
        w.tickets = []
        if w.handed and give_back is not None:  # cancelled between the hand-off and the answer
            orphans, w.handed = w.handed, []
            task = asyncio.get_running_loop().create_task(give_back(orphans))  # type: ignore[arg-type]
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _look_again(self, key: ClaimKey) -> None:
        """Maybe more for this claim: the oldest idle waiter of the same group looks once."""
        for other in self._waiters.values():
            if other.key == key and not (other.busy or other.tickets or other.standby):
                self._give(other, Ticket(None, None, recheck=True))
                return

    # -- the shared safety re-check ------------------------------------------------------------
    def _ensure_timer(self) -> None:
        if self._timer is None or self._timer.done():
            self._timer = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while self._waiters:
            await asyncio.sleep(self.recheck_s)
            self.recheck()
        self._timer = None

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
