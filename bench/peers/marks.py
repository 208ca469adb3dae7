"""Handler marks for the peer queues: one ``start|end SEQ UNIX_TIME`` line per event, per process.

Each worker process appends to its own file (O_APPEND, one unbuffered write a line), so the bench
reads handler start times without asking the queue anything.
"""

from __future__ import annotations

import os
import time

_fd: int | None = None


def mark(event: str, seq: object) -> None:
    global _fd
    t = time.time()
    if _fd is None:
        path = os.path.join(os.environ["BENCH_MARKS_DIR"], f"marks-{os.getpid()}.log")
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_fd, f"{event} {seq} {t:.6f}\n".encode())
