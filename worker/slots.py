"""Where jobs run: one slot per concurrent job, each a long-lived child process the worker can stop.

``ProcessSlot`` (the default, ``--isolation process``) runs its jobs in a child process started
once and kept between jobs (models stay loaded; see ``worker.child``). Stopping a job (canceled,
lease lost, shutdown grace over) kills that child: SIGTERM, then SIGKILL after ``kill_after_s``,
so the CPU or GPU the work used is free at once; a fresh child starts for the next job. A child
that dies on its own (segfault, the out-of-memory killer) fails its job with ``ProcessCrashed``
or ``OutOfMemory`` and the worker keeps serving.

``ThreadSlot`` (``--isolation thread``) runs jobs in a thread of the worker process: no process
boundary, but a stopped job only ends at its next progress report.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import multiprocessing
import signal
import socket
import struct
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any, Protocol

from protocol.errors import ErrorClass
from worker import errors
from worker.child import child_main
from worker.errors import JobCanceled, OutOfMemory, ProcessCrashed, ProcessingError
from worker.executor import execute
from worker.processors.base import JobInput, ProcessorConfig, ProcessResult

log = logging.getLogger("morag.worker")
Progress = Callable[[float, str], None]


class Slot(Protocol):
    async def run(self, inp: JobInput, progress: Progress, key: object = None) -> ProcessResult:
        """Run one job; raises ProcessingError subclasses, or JobCanceled once ``stop`` was called."""
        ...

    def stop(self, key: object = None) -> None:
        """Stop the job ``key`` (default: the one now running), if the slot has it."""
        ...

    def waiting(self, key: object) -> bool:
        """The job was handed to the slot behind another one and has not begun."""
        ...

    async def idle(self) -> None:
        """Return once nothing of a stopped job runs any more (its process is gone)."""
        ...

    async def close(self) -> None:
        """Release what the slot holds (its child process)."""
        ...


def rebuild_error(name: str, message: str, error_class: str, retryable: bool) -> ProcessingError:
    """The child's error as the parent's exception: same class when it is one of worker.errors."""
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, ProcessingError)):
        cls = ProcessingError
    err = cls(message)
    err.error_class = ErrorClass(error_class)
    err.retryable = bool(retryable)
    return err


def crash_error(exitcode: int | None) -> ProcessingError:
    """Why a child that was not told to stop died."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if -exitcode == getattr(signal, "SIGKILL", 9):
            return OutOfMemory(
                f"the processing process was killed ({name}), most likely by the out-of-memory killer"
            )
        return ProcessCrashed(f"the processing process crashed ({name}); the job will be retried")
    return ProcessCrashed(f"the processing process exited unexpectedly (exit code {exitcode})")


@contextmanager
def _main_not_rerun() -> Iterator[None]:
    """Start a spawned child without re-running the parent's ``__main__`` (a script, pytest, an
    embedding program): the child needs only ``worker.child``, and a script without the
    ``if __name__ == "__main__"`` guard would otherwise start itself again in every child."""
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = saved


_SIZE = struct.Struct("!i")  # multiprocessing.connection's frame header: the payload's length...
_BIG_SIZE = struct.Struct("!Q")  # ...or -1 and then this, past 2 GiB
_READ_BYTES = 1 << 18
SKIP_ANSWER_S = 0.2  # a child between jobs answers a skip at once; past this it runs the job


class ChildPipe:
    """The parent's end of a slot's pipe, read by the event loop itself.

    The child keeps its ``multiprocessing`` Connection (``worker.child``); this end speaks the
    same framing (a 4-byte big-endian length, or -1 and an 8-byte one, then the pickled message)
    on a non-blocking socket watched by the loop. A reader thread per child blocked in ``recv``
    and handed each message over with ``call_soon_threadsafe``: a thread switch, a contended GIL
    and a write to the loop's wake-up pipe per message, three messages per job
    (docs/benchmarks.md, stop 23). Messages arrive in ``inbox``; ``("eof",)`` once the child's
    end is closed (the child exited or died)."""

    def __init__(
        self, sock: socket.socket, on_message: Callable[[tuple[Any, ...]], None] | None = None
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.deliver = on_message or self.inbox.put_nowait
        self._out = bytearray()  # posted, not yet written (``post``)
        self._flush_soon = False
        self._writing = False  # waiting for room in the socket's buffer
        self._buf = bytearray()
        self._reading = True
        self.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(_READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the child's end is closed
            self._stop_reading()
            self.deliver(("eof",))
            return
        buf = self._buf
        buf += data
        while len(buf) >= _SIZE.size:
            (size,) = _SIZE.unpack_from(buf)
            head = _SIZE.size
            if size == -1:
                if len(buf) < head + _BIG_SIZE.size:
                    return
                (size,) = _BIG_SIZE.unpack_from(buf, head)
                head += _BIG_SIZE.size
            end = head + size
            if len(buf) < end:
                return
            msg = ForkingPickler.loads(buf[head:end])
            del buf[:end]
            self.deliver(msg)

    @staticmethod
    def frame(msg: tuple[Any, ...]) -> bytes:
        payload = bytes(ForkingPickler.dumps(msg))
        size = len(payload)
        head = _SIZE.pack(size) if size <= 0x7FFFFFFF else _SIZE.pack(-1) + _BIG_SIZE.pack(size)
        return head + payload

    async def send(self, msg: tuple[Any, ...]) -> None:
        """One message to the child (raises OSError once its end is gone)."""
        await self.loop.sock_sendall(self.sock, self.frame(msg))

    def post(self, msg: tuple[Any, ...]) -> None:
        """One message to the child, written in order with the others posted in this turn of the
        event loop: jobs started together reach a sleeping child in one write, so it is woken
        once (each write that woke a slot's child was ~30% of the worker's samples). A child
        that is gone takes nothing: its end-of-file tells the slot."""
        self._out += self.frame(msg)
        if not self._flush_soon and not self._writing:
            self._flush_soon = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        if not self._out or self.sock.fileno() < 0:
            return
        try:
            n = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:  # the child's end is closed
            self._out.clear()
            n = 0
        del self._out[:n]
        if self._out and not self._writing:
            self._writing = True
            self.loop.add_writer(self.sock.fileno(), self._flush)
        elif not self._out and self._writing:
            self._writing = False
            self.loop.remove_writer(self.sock.fileno())

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.loop.remove_reader(self.sock.fileno())

    def close(self) -> None:
        self._stop_reading()
        if self._writing:
            self._writing = False
            self.loop.remove_writer(self.sock.fileno())
        self._out.clear()
        self.sock.close()


@dataclasses.dataclass(eq=False)
class _Sent:
    """A job handed to a slot's child: its outcome is settled by the child's messages (``route``)."""

    key: object
    seq: int
    fields: dict[str, Any]
    progress: Progress
    outcome: asyncio.Future[ProcessResult]
    stopped: bool = False  # to be skipped (it waits behind another job) or killed (it runs)
    child: int = 0  # the child it was written to (``ProcessSlot.started`` then); 0: not yet

    def settle(self, result: ProcessResult | None, error: BaseException | None = None) -> None:
        if not self.outcome.done():
            if error is not None:
                self.outcome.set_exception(error)
            else:
                self.outcome.set_result(result)  # type: ignore[arg-type]


class ProcessSlot:
    """One child process, started on first use and after each death, running one job at a time.

    Jobs may be handed to the child while it runs another (``SlotPool.acquire`` with a depth above
    one, while jobs are a few ms long): the child reads the next one as soon as it sends a result,
    without sleeping until the parent has read that result and sent more (each such wake-up of a
    sleeping process was a quarter of the worker's CPU per job; docs/benchmarks.md, stop 26). Jobs
    run in the order they were sent. ``_sent`` holds them; its head is the one the child runs (or
    starts next). Stopping the head kills the child and the jobs behind it go to a fresh child;
    stopping a job behind it sends ``("skip", seq)``: the child drops it unless it already began it,
    and then (its messages show it) the child is killed as for the head."""

    def __init__(
        self, config: ProcessorConfig, *, log_format: str = "text", kill_after_s: float = 1.0
    ) -> None:
        self.config = config
        self.log_format = log_format
        self.kill_after_s = kill_after_s
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: BaseProcess | None = None
        self._pipe: ChildPipe | None = None
        self._stopped = False  # the child was told to die (SIGTERM)
        self._sent: collections.deque[_Sent] = collections.deque()
        self._seq = 0
        self._recovering: asyncio.Task[None] | None = None  # reaping a dead child, re-sending its queue
        self._closing = False
        self.started = 0  # children started so far (1 + restarts)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def _start(self) -> None:
        ours, theirs = socket.socketpair()  # what multiprocessing's Pipe() is made of
        child = Connection(theirs.detach())
        proc = self._ctx.Process(
            target=child_main, args=(child, self.config, self.log_format), name="morag-slot", daemon=True
        )
        try:
            with _main_not_rerun():
                proc.start()
        except BaseException:
            ours.close()
            raise
        finally:
            child.close()
        self._proc, self._pipe = proc, ChildPipe(ours, self._route)
        self._stopped = False
        self.started += 1

    def warm(self) -> None:
        """Start the child now, so its imports overlap with the first claim."""
        if self._proc is None:
            self._start()

    def waiting(self, key: object) -> bool:
        """The job was handed to this slot behind another one and has not begun."""
        return any(e.key == key for e in itertools.islice(self._sent, 1, None))

    async def run(self, inp: JobInput, progress: Progress, key: object = None) -> ProcessResult:
        # Shallow: pickling copies the values anyway (asdict deep-copied each job's options first).
        fields = {f.name: getattr(inp, f.name) for f in dataclasses.fields(inp) if f.name != "progress"}
        self._seq += 1
        entry = _Sent(key, self._seq, fields, progress, asyncio.get_running_loop().create_future())
        try:
            self._send(entry)
            return await entry.outcome
        except asyncio.CancelledError:
            self._stop_entry(entry)  # the job's task was canceled: its work must not go on in the child
            raise

    def _send(self, entry: _Sent) -> None:
        """Queue the job and post it to the child, in the order of ``_sent``."""
        if self._recovering is None and self._proc is None:
            self._start()  # the first job, or the first after a stop or a crash while idle
        self._sent.append(entry)
        pipe = self._pipe
        if self._recovering is not None:
            return  # the recovery under way writes it to the fresh child, in order
        if pipe is None or self._stopped or not self.alive():  # died while idle
            self._recover()
            return
        pipe.post(("job", entry.seq, entry.fields))
        entry.child = self.started

    def _route(self, msg: tuple[Any, ...]) -> None:
        """A message from the child, for the job at the head of ``_sent``."""
        kind = msg[0]
        if kind == "eof":
            self._recover()
            return
        if kind == "ready" or not self._sent:
            return
        head = self._sent[0]
        if msg[1] != head.seq:  # cannot happen while both ends keep the order; never guess
            log.error("processing process %s answered for job %s, expected %s", self.pid, msg[1], head.seq)
            self._kill()
            return
        if kind == "progress":
            if head.stopped:  # the skip came too late: the job runs; it must not go on
                self._kill()
            else:
                head.progress(msg[2], msg[3])
            return
        self._sent.popleft()
        if self._sent and self._sent[0].stopped:  # its skip may have come after the child began it
            asyncio.get_running_loop().call_later(SKIP_ANSWER_S, self._kill_if_head, self._sent[0])
        if head.stopped or kind in ("canceled", "skipped"):
            head.settle(None, JobCanceled())
        elif kind == "result":
            head.settle(msg[2])
        elif kind == "error":
            head.settle(None, rebuild_error(*msg[2:]))

    def stop(self, key: object = None) -> None:
        """Stop the job ``key`` (default: the one running): kill the child when it runs it (SIGTERM,
        then SIGKILL; the jobs behind it go to a fresh child), else have the child skip it."""
        for entry in self._sent:
            if key is None or entry.key == key:
                self._stop_entry(entry)
                return

    def _stop_entry(self, entry: _Sent) -> None:
        if entry.outcome.done() and entry not in self._sent:
            return
        first = bool(self._sent) and self._sent[0] is entry
        entry.stopped = True
        if first:
            self._kill()
        elif entry in self._sent and entry.child == self.started and self._recovering is None:
            if self._pipe is not None:
                self._pipe.post(("skip", entry.seq))
        # else a recovery under way drops it (it checks ``stopped`` once the old child is reaped)

    def _kill_if_head(self, entry: _Sent) -> None:
        """A skipped job still first in line got no answer: the child runs it; stop it for real."""
        if self._sent and self._sent[0] is entry:
            self._kill()

    def _kill(self) -> None:
        proc = self._proc
        if proc is None or not proc.is_alive() or self._stopped:
            return
        self._stopped = True
        proc.terminate()

        def kill_later() -> None:
            try:
                proc.join(self.kill_after_s)
                if proc.is_alive():
                    log.warning("processing process %s ignored SIGTERM; killing it", proc.pid)
                    proc.kill()
            except ValueError:  # reaped meanwhile: it is gone
                pass

        threading.Thread(target=kill_later, name=f"slot-kill-{proc.pid}", daemon=True).start()
        self._recover()

    def _recover(self) -> None:
        """The child is dying or dead: reap it, settle the job it ran, re-send the jobs behind it."""
        if self._recovering is None and (self._proc is not None or self._sent):
            self._recovering = asyncio.ensure_future(self._recovery())

    async def _recovery(self) -> None:
        try:
            generation = self.started if self._proc is not None else -1
            stopped = self._stopped
            code = await self._reap()
            head = self._sent[0] if self._sent else None
            if head and head.child == generation and not (stopped or head.stopped):
                self._sent.popleft()  # it ran when the child died on its own
                head.settle(None, crash_error(code))
            # Killed for a stopped job: that one is dropped below; a job the child may have begun
            # meanwhile (the one behind it) was not stopped and runs again in the fresh child.
            # Jobs stopped while waiting never began; the others (jobs queued while the child was
            # reaped included) go to a fresh child, in order.
            for entry in [e for e in self._sent if e.stopped or e.outcome.done()]:
                self._sent.remove(entry)
                entry.settle(None, JobCanceled())
            if self._sent and not self._closing:
                self._start()
                pipe = self._pipe
                assert pipe is not None
                for entry in self._sent:
                    pipe.post(("job", entry.seq, entry.fields))
                    entry.child = self.started
        except OSError as exc:  # the fresh child died at once: its jobs fail as a crash would
            for entry in self._sent:
                entry.settle(None, ProcessCrashed(f"the processing process could not be started: {exc}"))
            self._sent.clear()
        finally:
            if self._closing:
                for entry in self._sent:
                    entry.settle(None, JobCanceled())
                self._sent.clear()
            self._recovering = None
            if not self._closing and self._proc is not None and (self._stopped or not self.alive()):
                self._recover()  # the fresh child was stopped (or died) while this ran

    async def idle(self) -> None:
        """Return once a stopped job's child is gone (its files may then be removed)."""
        while self._recovering is not None:
            await asyncio.shield(self._recovering)

    async def _reap(self) -> int | None:
        """Wait for the dead (or dying) child; its exit code."""
        proc, self._proc = self._proc, None
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        if proc is None:
            return None
        self._stopped = False
        await asyncio.to_thread(proc.join, self.kill_after_s + 5.0)
        if proc.is_alive():  # should not happen: it closed its pipe but lives on
            proc.kill()
            await asyncio.to_thread(proc.join, 5.0)
        return proc.exitcode

    async def close(self) -> None:
        self._closing = True
        while self._recovering is not None:
            await asyncio.shield(self._recovering)
        if self._pipe is not None and self.alive():
            self._pipe.post(("quit",))  # after anything posted before it, never inside it
        proc = self._proc
        if proc is not None:
            await asyncio.to_thread(proc.join, 2.0)
            if proc.is_alive():
                self._kill()
                while self._recovering is not None:
                    await asyncio.shield(self._recovering)
        await self._reap()


class ThreadSlot:
    """Runs the job in a daemon thread of this process (``--isolation thread``)."""

    def __init__(self, config: ProcessorConfig) -> None:
        self.config = config
        self._canceled = threading.Event()
        self.thread: threading.Thread | None = None

    async def run(self, inp: JobInput, progress: Progress, key: object = None) -> ProcessResult:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ProcessResult] = loop.create_future()
        self._canceled = canceled = threading.Event()
        inp.progress = progress

        def settle(ok: bool, value: Any) -> None:
            if not fut.done():
                fut.set_result(value) if ok else fut.set_exception(value)

        def target() -> None:
            try:
                res = execute(inp, self.config, canceled)
                loop.call_soon_threadsafe(settle, True, res)
            except BaseException as exc:  # handed to the loop, classified there
                try:
                    loop.call_soon_threadsafe(settle, False, exc)
                except RuntimeError:  # the loop is gone (worker exiting)
                    pass

        self.thread = threading.Thread(target=target, name="job-thread", daemon=True)
        self.thread.start()
        try:
            return await fut
        except asyncio.CancelledError:
            canceled.set()
            raise

    def stop(self, key: object = None) -> None:
        self._canceled.set()

    def waiting(self, key: object) -> bool:
        return False  # one job at a time

    async def idle(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            await asyncio.to_thread(self.thread.join, 10.0)

    async def close(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            await asyncio.to_thread(self.thread.join, 10.0)


class SlotPool:
    """``concurrency`` slots; a job waits for a free one (first come, first served) and gives it
    back when its processing ends. Jobs leased ahead of the slots (``--prefetch``) wait here.

    ``acquire(depth)`` with a depth above one may hand a job to a slot that runs others, up to
    ``depth`` jobs in all (the least loaded slot first): a ``ProcessSlot`` writes it to its child
    at once (``--pipeline``). Thread slots run one job at a time whatever the depth."""

    def __init__(self, make: Callable[[], Slot], size: int, *, pipelines: bool = False) -> None:
        self.slots: list[Slot] = [make() for _ in range(size)]
        self.pipelines = pipelines
        self.load: dict[Slot, int] = dict.fromkeys(self.slots, 0)  # jobs handed out, not given back
        self._waiters: collections.deque[tuple[int, asyncio.Future[Slot]]] = collections.deque()

    def _pick(self, depth: int) -> Slot | None:
        slot = min(self.slots, key=self.load.__getitem__)
        limit = max(depth, 1) if self.pipelines else 1
        return slot if self.load[slot] < limit else None

    async def acquire(self, depth: int = 1, first: bool = False) -> Slot:
        """A slot holding fewer than ``depth`` jobs (least loaded first), in the order asked;
        ``first``: ahead of every job already waiting (a standby claim's job)."""
        if (first or not self._waiters) and (slot := self._pick(depth)) is not None:
            self.load[slot] += 1
            return slot
        fut: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        if first:
            self._waiters.appendleft((depth, fut))
        else:
            self._waiters.append((depth, fut))
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.give_back(fut.result())  # handed over as the wait was canceled
            else:
                self._waiters = collections.deque(w for w in self._waiters if w[1] is not fut)
                self._hand_out()
            raise

    def give_back(self, slot: Slot) -> None:
        self.load[slot] -= 1
        self._hand_out()

    def _hand_out(self) -> None:
        """Slots to the waiting jobs, first come first served."""
        while self._waiters:
            depth, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            slot = self._pick(depth)
            if slot is None:
                return
            self._waiters.popleft()
            self.load[slot] += 1
            fut.set_result(slot)

    def warm(self) -> None:
        for slot in self.slots:
            if isinstance(slot, ProcessSlot):
                slot.warm()

    async def close(self) -> None:
        await asyncio.gather(*(slot.close() for slot in self.slots), return_exceptions=True)


def make_pool(processor_config: ProcessorConfig, size: int, isolation: str, **kw: Any) -> SlotPool:
    """The slots of one worker: child processes (``process``) or threads (``thread``)."""
    if isolation == "thread":
        return SlotPool(lambda: ThreadSlot(processor_config), size)
    return SlotPool(lambda: ProcessSlot(processor_config, **kw), size, pipelines=True)
