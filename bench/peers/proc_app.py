"""procrastinate peer: a no-op async task that marks its start and end."""

from __future__ import annotations

import os

from marks import mark
from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=os.environ["BENCH_PG_DSN"]))


@app.task(name="echo", queue="bench")
async def echo(seq: int) -> None:
    mark("start", seq)
    mark("end", seq)
