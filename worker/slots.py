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
import dataclasses
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
    async def run(self, inp: JobInput, progress: Progress) -> ProcessResult:
        """Run one job; raises ProcessingError subclasses, or JobCanceled once ``stop`` was called."""
        ...

    def stop(self) -> None:
        """Stop the job now running (if any)."""
        ...

    async def idle(self) -> None:
        """Return once nothing of the last job runs any more (a stopped job's process is gone)."""
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


class ChildPipe:
    """The parent's end of a slot's pipe, read by the event loop itself.

    The child keeps its ``multiprocessing`` Connection (``worker.child``); this end speaks the
    same framing (a 4-byte big-endian length, or -1 and an 8-byte one, then the pickled message)
    on a non-blocking socket watched by the loop. A reader thread per child blocked in ``recv``
    and handed each message over with ``call_soon_threadsafe``: a thread switch, a contended GIL
    and a write to the loop's wake-up pipe per message, three messages per job
    (docs/benchmarks.md, stop 23). Messages arrive in ``inbox``; ``("eof",)`` once the child's
    end is closed (the child exited or died)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
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
            self.inbox.put_nowait(("eof",))
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
            self.inbox.put_nowait(msg)

    async def send(self, msg: tuple[Any, ...]) -> None:
        """One message to the child (raises OSError once its end is gone)."""
        payload = bytes(ForkingPickler.dumps(msg))
        size = len(payload)
        head = _SIZE.pack(size) if size <= 0x7FFFFFFF else _SIZE.pack(-1) + _BIG_SIZE.pack(size)
        await self.loop.sock_sendall(self.sock, head + payload)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.loop.remove_reader(self.sock.fileno())

    def close(self) -> None:
        self._stop_reading()
        self.sock.close()


class ProcessSlot:
    """One child process, started on first use and after each death, running one job at a time."""

    def __init__(
        self, config: ProcessorConfig, *, log_format: str = "text", kill_after_s: float = 1.0
    ) -> None:
        self.config = config
        self.log_format = log_format
        self.kill_after_s = kill_after_s
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: BaseProcess | None = None
        self._pipe: ChildPipe | None = None
        self._stopped = False
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
        self._proc, self._pipe = proc, ChildPipe(ours)
        self.started += 1

    def warm(self) -> None:
        """Start the child now, so its imports overlap with the first claim."""
        if self._proc is None:
            self._start()

    async def run(self, inp: JobInput, progress: Progress) -> ProcessResult:
        if self._stopped or not self.alive():
            await self._reap()
            self._start()
        pipe = self._pipe
        assert pipe is not None
        # Shallow: pickling copies the values anyway (asdict deep-copied each job's options first).
        fields = {f.name: getattr(inp, f.name) for f in dataclasses.fields(inp) if f.name != "progress"}
        inbox = pipe.inbox
        try:
            await pipe.send(("job", fields))
            while True:
                msg = await inbox.get()
                kind = msg[0]
                if kind == "progress":
                    progress(msg[1], msg[2])
                elif kind == "result":
                    result: ProcessResult = msg[1]
                    return result
                elif kind == "error":
                    raise rebuild_error(*msg[1:])
                elif kind == "canceled":
                    raise JobCanceled()
                elif kind == "eof":
                    stopped = self._stopped
                    code = await self._reap()
                    raise JobCanceled() if stopped else crash_error(code)
        except (BrokenPipeError, OSError) as exc:
            stopped = self._stopped
            code = await self._reap()
            raise (JobCanceled() if stopped else crash_error(code)) from exc
        except asyncio.CancelledError:
            self.stop()  # the job's task was canceled: its work must not go on in the child
            raise

    def stop(self) -> None:
        """Kill the child (SIGTERM, then SIGKILL); the next job starts a fresh one."""
        proc = self._proc
        if proc is None or not proc.is_alive():
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

    async def idle(self) -> None:
        if self._stopped:
            await self._reap()

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
        if self._pipe is not None and self.alive():
            try:
                await asyncio.wait_for(self._pipe.send(("quit",)), 2.0)
            except (OSError, TimeoutError):
                pass
        proc = self._proc
        if proc is not None:
            await asyncio.to_thread(proc.join, 2.0)
            if proc.is_alive():
                self.stop()
        await self._reap()


class ThreadSlot:
    """Runs the job in a daemon thread of this process (``--isolation thread``)."""

    def __init__(self, config: ProcessorConfig) -> None:
        self.config = config
        self._canceled = threading.Event()
        self.thread: threading.Thread | None = None

    async def run(self, inp: JobInput, progress: Progress) -> ProcessResult:
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

    def stop(self) -> None:
        self._canceled.set()

    async def idle(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            await asyncio.to_thread(self.thread.join, 10.0)

    async def close(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            await asyncio.to_thread(self.thread.join, 10.0)


class SlotPool:
    """``concurrency`` slots; a job waits for a free one (first come, first served) and gives it
    back when its processing ends. Jobs leased ahead of the slots (``--prefetch``) wait here."""

    def __init__(self, make: Callable[[], Slot], size: int) -> None:
        self.slots: list[Slot] = [make() for _ in range(size)]
        self._free: asyncio.Queue[Slot] = asyncio.Queue()
        for slot in self.slots:
            self._free.put_nowait(slot)

    async def acquire(self) -> Slot:
        return await self._free.get()

    def give_back(self, slot: Slot) -> None:
        self._free.put_nowait(slot)

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
    return SlotPool(lambda: ProcessSlot(processor_config, **kw), size)
