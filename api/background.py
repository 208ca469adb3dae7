"""One shape for the server's background loops: start, stop, run every interval, back off on error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

log = logging.getLogger("morag.background")


def backoff_s(base_s: float, max_s: float, failures: int, rand: Callable[[], float] = random.random) -> float:
    """The wait after ``failures`` failures: the server's one backoff formula (job retries, indexing
    retries, webhook tries, background loops).

    Exponential with equal jitter: the step is ``base_s * 2**(failures - 1)``, at most ``max_s``, and
    the wait is uniform in [step/2, step], so it never exceeds ``max_s`` and tries that failed
    together spread out. ``rand`` gives a number in [0, 1] (inject it to make a wait predictable).
    """
    step = min(max_s, base_s * 2 ** max(failures - 1, 0))
    return float(step / 2 + step / 2 * rand())


class BackgroundService:
    """A loop that runs :meth:`run_once` every ``interval_s`` (sooner when :meth:`wake` is called).

    ``run_once`` returns True when it found work, and then runs again at once. A failure is logged
    and the next run backs off (doubling up to ``max_backoff_s``); the loop never dies of it.
    """

    name = "background service"

    def __init__(self, interval_s: float, first_delay_s: float = 0.0, max_backoff_s: float = 30.0) -> None:
        self.interval_s = interval_s
        self.first_delay_s = first_delay_s
        self.max_backoff_s = max_backoff_s
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def run_once(self) -> bool:
        raise NotImplementedError

    def idle_delay(self) -> float:
        """How long to sleep after a run that found no work (unless woken): ``interval_s``."""
        return self.interval_s

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    def wake(self) -> None:
        """Run now instead of at the next interval."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _run(self) -> None:
        if self.first_delay_s > 0:
            await asyncio.sleep(self.first_delay_s)
        failures = 0
        while True:
            try:
                while await self.run_once():
                    pass
                failures = 0
                delay = self.idle_delay()
            except asyncio.CancelledError:
                raise
            except Exception:  # a passing database error must not end the loop
                failures += 1
                log.exception("%s failed", self.name)
                delay = max(self.interval_s, backoff_s(self.interval_s, self.max_backoff_s, failures))
            await self._sleep(delay)
