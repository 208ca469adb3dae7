"""Results on their way to the server: batched when they finish together, riding on the next claim
when one is about to go.

A worker whose slots are all busy sends its next claim the moment a job finishes. That job's result
(and any other that finishes while such a claim is being answered) rides on the claim
(``ClaimRequest.results``): one request and one server transaction store the results and lease the
next jobs. Riding is open only while the next claim is certain to go at once (the runner waits for a
free slot, or the claim in flight carries results and so is answered without a long-poll); at any
other time, and for large results, completions go on their own, those of the same moment together
in one ``/worker/complete-batch``. Every caller gets its own answer or its own ``LeaseLost``.

A request carries at most ``MAX_RESULTS_PER_REQUEST`` results and ``BATCH_MAX_CHARS`` of markdown
(the rest wait for the next request); a batch the server refuses as a whole (too large, or its
shape) is sent again one result per request, so each result gets its own verdict and none is
dropped with the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from protocol import paths
from protocol.errors import ErrorCode
from protocol.models import (
    MAX_RESULTS_PER_REQUEST,
    CompleteBatchItem,
    CompleteBatchRequest,
    CompleteBatchResponse,
    CompleteRequest,
    CompleteResponse,
)
from worker.errors import ServerError

# A result this large goes on its own: a claim stays small, and a result the server refuses for its
# size never takes the claim (and the other results on it) down with it.
RIDE_MAX_CHARS = 64 * 1024
# Markdown in one request carrying several results: far under the server's worker body limit
# (``MORAG_MAX_WORKER_JSON_BYTES``, 32 MiB by default). A result above RIDE_MAX_CHARS goes alone.
BATCH_MAX_CHARS = 4 * 1024 * 1024
# Statuses of a request refused as a whole (too large, or its shape), not result by result: its
# results go again one per request. A batch answered 404/405 met a server without batches.
REFUSED_AS_A_WHOLE = (413, 422)
WHOLE_REFUSALS = (404, 405, *REFUSED_AS_A_WHOLE)

Pending = tuple[CompleteRequest, "asyncio.Future[CompleteResponse]"]
Call = Callable[..., Awaitable[Any]]


def answer_of(item: CompleteBatchItem) -> CompleteResponse | ServerError:
    """One batch item as the caller of ``complete`` hears it."""
    from worker.client import LeaseLost, ServerRejected  # client builds on this module

    if item.error is None:
        return CompleteResponse(job_id=item.job_id, status=item.status or "")
    text = f"HTTP 409 {item.error.code}: {item.error.message}"
    lost = item.error.code in (ErrorCode.stale_lease, ErrorCode.job_canceled)
    return (LeaseLost if lost else ServerRejected)(text, 409, item.error.code)


def take_batch(pending: list[Pending]) -> list[Pending]:
    """Remove and return the first results of ``pending`` that fit one request (at least one):
    at most ``MAX_RESULTS_PER_REQUEST`` and ``BATCH_MAX_CHARS`` of markdown."""
    chars = n = 0
    for body, _ in pending:
        chars += len(body.markdown)
        if n and (n >= MAX_RESULTS_PER_REQUEST or chars > BATCH_MAX_CHARS):
            break
        n += 1
    batch = pending[:n]
    del pending[:n]
    return batch


def settle(pending: list[Pending], answers: list[CompleteResponse | ServerError]) -> None:
    for (_, future), answer in zip(pending, answers, strict=True):
        if future.done():
            continue
        if isinstance(answer, ServerError):
            future.set_exception(answer)
        else:
            future.set_result(answer)


def fail_all(pending: list[Pending], exc: BaseException) -> None:
    """The request carrying ``pending`` failed as a whole: every caller hears it."""
    from worker.client import ServerUnreachable

    for _, future in pending:
        if not future.done():
            future.set_exception(exc if isinstance(exc, Exception) else ServerUnreachable(repr(exc)))


class Completions:
    """The worker's results in flight; ``call`` is ``WorkerClient.call``."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self._batch: list[Pending] | None = None
        self._senders: set[asyncio.Task[None]] = set()
        self.riding = False  # the server takes results on claims (hello's features)
        self.ride_open = False  # set by the runner: a claim goes out at once
        self._riders: list[Pending] = []

    def waiting(self) -> bool:
        """True when results wait for the next claim."""
        return bool(self._riders)

    def take_riders(self) -> list[Pending]:
        """The results waiting for the claim about to be sent (the claim now owns them), as many
        as one request carries; the rest wait for the next claim."""
        return take_batch(self._riders)

    def send_waiting(self) -> None:
        """Send the results waiting for a claim on their own, now, without waiting for the answer
        (the runner has no room for a job, so no claim is due)."""
        self.ride_open = False
        while self._riders:
            self._spawn(self.take_riders(), None)

    async def flush(self) -> None:
        """Send results still waiting for a claim that will not come (the runner stops)."""
        self.ride_open = False
        while self._riders:
            await self._send(self.take_riders(), None)

    def send_each(self, pending: list[Pending]) -> None:
        """Send ``pending`` one result per request (a request carrying them all was refused as a
        whole): each caller hears its own result's verdict."""
        for one in pending:
            self._spawn([one], None)

    async def complete(self, body: CompleteRequest, max_time_s: float | None) -> CompleteResponse:
        future: asyncio.Future[CompleteResponse] = asyncio.get_running_loop().create_future()
        small = len(body.markdown) <= RIDE_MAX_CHARS
        if self.riding and self.ride_open and small:
            self._riders.append((body, future))  # the next claim, about to go, carries it
            return await future
        if not small:  # a large result goes alone: the server's verdict on its size is its own
            self._spawn([(body, future)], max_time_s)
            return await future
        if self._batch is not None:  # another completion is gathering a batch right now: join it
            self._batch.append((body, future))
            return await future
        self._batch = [(body, future)]
        try:
            await asyncio.sleep(0)  # let completions of this same moment join
        finally:
            batch, self._batch = self._batch, None
        while batch:
            self._spawn(take_batch(batch), max_time_s)
        return await future

    def _spawn(self, batch: list[Pending], max_time_s: float | None) -> None:
        """Send ``batch`` by a task of its own: a caller canceled meanwhile must not strand the others."""
        sender = asyncio.create_task(self._send(batch, max_time_s))
        self._senders.add(sender)
        sender.add_done_callback(self._senders.discard)

    async def _send(self, batch: list[Pending], max_time_s: float | None) -> None:
        try:
            if len(batch) == 1:
                answers: list[CompleteResponse | ServerError] = [
                    await self._complete_one(batch[0][0], max_time_s)
                ]
            else:
                answers = await self._complete_batch([b for b, _ in batch], max_time_s)
        except BaseException as exc:
            fail_all(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        settle(batch, answers)

    async def _post(self, path: str, body: Any, max_time_s: float | None) -> Any:
        """POST ``body`` (a model), retried until ``max_time_s`` when given; the answer's JSON."""
        resp = await self._call(
            "POST",
            path,
            json=body.model_dump(mode="json"),
            max_time_s=max_time_s,
            max_tries=10_000 if max_time_s else None,
        )
        return resp.json()

    async def _complete_one(self, body: CompleteRequest, max_time_s: float | None) -> CompleteResponse:
        return CompleteResponse.model_validate(await self._post(paths.COMPLETE, body, max_time_s))

    async def _complete_each(
        self, bodies: list[CompleteRequest], max_time_s: float | None
    ) -> list[CompleteResponse | ServerError]:
        results = await asyncio.gather(
            *(self._complete_one(b, max_time_s) for b in bodies), return_exceptions=True
        )
        out: list[CompleteResponse | ServerError] = []
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, ServerError):
                raise r
            out.append(r)
        return out

    async def _complete_batch(
        self, bodies: list[CompleteRequest], max_time_s: float | None
    ) -> list[CompleteResponse | ServerError]:
        from worker.client import ServerRejected

        try:
            answer = await self._post(paths.COMPLETE_BATCH, CompleteBatchRequest(results=bodies), max_time_s)
        except ServerRejected as exc:
            if exc.status not in WHOLE_REFUSALS:
                raise
            # A server without batches (404/405), or the request refused as a whole (413, 422):
            # one request per result, each with its own verdict.
            return await self._complete_each(bodies, max_time_s)
        return [answer_of(item) for item in CompleteBatchResponse.model_validate(answer).results]
