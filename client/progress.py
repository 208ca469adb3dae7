"""The ``--wait`` display: one line per task (bar, percent, state, stage, message).

On a terminal the lines are redrawn in place; otherwise (a log, a pipe) a line is printed only when
a task's state, stage, message or tenth of progress changes.
"""

from __future__ import annotations

from typing import TextIO

from client.models import Task

BAR = 20


def line(label: str, task: Task) -> str:
    """``[########------------]  40% running   process  transcribing  talk.mp3``."""
    done = max(0.0, min(1.0, task.progress))
    if task.status == "succeeded":
        done = 1.0
    filled = round(done * BAR)
    bar = "#" * filled + "-" * (BAR - filled)
    text = task.message or ""
    if task.status in ("failed", "dead") and task.error:
        text = f"{task.error_class or 'error'}: {task.error}"
    return f"[{bar}] {done * 100:3.0f}% {task.status:<9} {task.stage:<7} {label}  {text}".rstrip()[:200]


class Progress:
    """Draws the lines of several tasks."""

    def __init__(self, out: TextIO, labels: dict[str, str]) -> None:
        self.out = out
        self.labels = labels
        self.tty = out.isatty()
        self.lines: dict[str, str] = {}
        self._keys: dict[str, tuple[str, str, str | None, int]] = {}
        self._drawn = 0

    def update(self, task: Task) -> None:
        label = self.labels.get(task.task_id, task.task_id)
        self.lines[task.task_id] = line(label, task)
        if self.tty:
            self._redraw()
            return
        key = (task.status, task.stage, task.message, int(task.progress * 10))
        if self._keys.get(task.task_id) != key:
            self._keys[task.task_id] = key
            print(self.lines[task.task_id], file=self.out, flush=True)

    def _redraw(self) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F")  # back to the first line drawn
        for tid in self.labels:
            if tid in self.lines:
                self.out.write("\x1b[2K" + self.lines[tid] + "\n")
        self._drawn = sum(1 for tid in self.labels if tid in self.lines)
        self.out.flush()
