"""Celery 5 + Redis peer: a no-op task that marks its start and end (run by bench/e2e_bench.py)."""

from __future__ import annotations

import os

from celery import Celery
from marks import mark

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_default_queue=os.environ["BENCH_QUEUE"],
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="echo")
def echo(seq: int) -> None:
    mark("start", seq)
    mark("end", seq)
