"""The parent's end of a slot's pipe (``worker.slots.ChildPipe``) read on the event loop: it speaks
``multiprocessing.connection``'s framing, so the child's plain Connection understands it."""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
import threading
from multiprocessing.connection import Connection
from typing import Any

from worker.slots import ChildPipe


async def _take(pipe: ChildPipe, n: int) -> list[tuple[Any, ...]]:
    return [await asyncio.wait_for(pipe.inbox.get(), 10) for _ in range(n)]


async def test_messages_from_a_connection_arrive_whole_and_in_order() -> None:
    ours, theirs = socket.socketpair()
    pipe = ChildPipe(ours)
    child = Connection(theirs.detach())
    big = "x" * (3 * 1024 * 1024 + 7)  # several reads of the loop, one message
    sent = [("progress", 0.5, "half"), ("result", big), ("progress", 1.0, "done")]

    def write() -> None:  # as the child does: several sends, some in one read of ours
        for msg in sent:
            child.send(msg)

    writer = threading.Thread(target=write)
    writer.start()
    got = await _take(pipe, 3)
    writer.join()
    assert got == sent
    child.close()
    assert await _take(pipe, 1) == [("eof",)]  # the child's end closed
    pipe.close()


async def test_what_the_parent_sends_a_connection_receives() -> None:
    ours, theirs = socket.socketpair()
    pipe = ChildPipe(ours)
    child = Connection(theirs.detach())
    fields = {"url": "https://example.org/ü", "options": {"a": [1, 2]}, "blob": "y" * 500_000}
    send = asyncio.ensure_future(pipe.send(("job", fields)))  # larger than the socket's buffer
    got = await asyncio.to_thread(child.recv)
    await send
    assert got == ("job", fields)
    pipe.close()
    child.close()


async def test_posted_messages_go_in_order_in_one_write_and_past_a_full_buffer() -> None:
    """``post`` writes what one turn of the loop posted in one ``send``; what does not fit in the
    socket's buffer waits for room (the loop's writer callback), in order, nothing lost."""
    ours, theirs = socket.socketpair()
    pipe = ChildPipe(ours)
    child = Connection(theirs.detach())
    writes: list[int] = []
    real_send = ours.send

    class Counting:  # the socket's send, counted
        def __getattr__(self, name: str) -> Any:
            return getattr(ours, name)

        def send(self, data: Any) -> int:
            writes.append(len(data))
            return real_send(data)

    pipe.sock = Counting()  # type: ignore[assignment]
    small: list[tuple[Any, ...]] = [("job", i, {"n": i}) for i in range(3)]
    for msg in small:
        pipe.post(msg)
    await asyncio.sleep(0)  # the turn ends: one write
    assert len(writes) == 1
    assert [await asyncio.wait_for(asyncio.to_thread(child.recv), 10) for _ in small] == small
    big: list[tuple[Any, ...]] = [("job", 10 + i, {"blob": str(i) * 700_000}) for i in range(3)]
    for msg in big:
        pipe.post(msg)
    got = [await asyncio.wait_for(asyncio.to_thread(child.recv), 10) for _ in big]  # past the buffer
    assert got == big
    pipe.close()
    child.close()


async def test_a_frame_with_the_long_size_header_is_read() -> None:
    """Past 2 GiB multiprocessing writes -1 and then an 8-byte size; the same form, small here."""
    ours, theirs = socket.socketpair()
    pipe = ChildPipe(ours)
    payload = pickle.dumps(("result", "long form"))
    frame = struct.pack("!i", -1) + struct.pack("!Q", len(payload)) + payload
    for i in range(len(frame)):  # byte by byte: every partial header and body waits for more
        theirs.send(frame[i : i + 1])
        await asyncio.sleep(0)
    theirs.sendall(struct.pack("!i", len(payload)) + payload)
    assert await _take(pipe, 2) == [("result", "long form"), ("result", "long form")]
    pipe.close()
    theirs.close()


async def test_closing_stops_reading_and_a_send_then_fails() -> None:
    ours, theirs = socket.socketpair()
    pipe = ChildPipe(ours)
    theirs.close()
    assert await _take(pipe, 1) == [("eof",)]
    try:
        await pipe.send(("quit",))
    except OSError:
        pass
    else:
        raise AssertionError("a send to a closed child must fail")
    pipe.close()
    assert ours.fileno() == -1
