"""The built-in ``echo`` processor: returns its input as markdown (proves the protocol).

With ``MORAG_WORKER_TEST_HOOKS=1`` in the worker's environment (tests only) it also takes the
options ``spin_s`` (burn CPU that long without reporting progress, as native code does),
``spin_first_s`` (the same before the first progress report: a job that never says it began) and
``crash`` (``segfault`` | ``kill`` | ``exit``: die the way a broken library or the OOM killer
makes a process die). Without the variable those options are refused.
"""

from __future__ import annotations

import os
import time

from worker.errors import BadInput
from worker.processors.base import JobInput, ProcessorConfig, ProcessResult


class EchoProcessor:
    content_types = ("echo",)
    uses_temp_dir = False  # reads its input and answers: no scratch files

    def available(self) -> tuple[bool, str]:
        return True, ""

    def process(self, job: JobInput, config: ProcessorConfig) -> ProcessResult:
        if job.options.get("spin_first_s") is not None:
            test_hooks(job, "spin_first_s")
        job.progress(0.1, "reading input")
        if job.path is not None:
            raw = job.path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadInput(f"echo input is not UTF-8 text: {exc}") from exc
            source = job.file_name or job.path.name
        elif job.url is not None:
            text, source = job.url, job.url
        else:
            raise BadInput("echo job has neither a file nor a URL")
        self._sleep(job)
        test_hooks(job)
        job.progress(1.0, "done")
        md = f"# {source}\n\n{text}\n"
        return ProcessResult(markdown=md, metadata={"source": source, "characters": len(text)})

    @staticmethod
    def _sleep(job: JobInput) -> None:
        """Option ``sleep_s``: take that long, reporting progress, so tests can act mid-job."""
        try:
            total = min(float(job.options.get("sleep_s") or 0), 3600.0)
        except (TypeError, ValueError) as exc:
            raise BadInput(f"echo option sleep_s must be a number: {exc}") from exc
        end = time.monotonic() + total
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))
            job.progress(0.1 + 0.8 * (1 - max(left - 0.1, 0) / total), "sleeping")


TEST_HOOKS_VAR = "MORAG_WORKER_TEST_HOOKS"


def test_hooks(job: JobInput, spin_option: str = "spin_s") -> None:
    """The options ``spin_s`` (or ``spin_first_s``) and ``crash``, honoured only when the tests
    enabled them."""
    spin = job.options.get(spin_option)
    crash = job.options.get("crash") if spin_option == "spin_s" else None
    if spin is None and crash is None:
        return
    if os.environ.get(TEST_HOOKS_VAR) != "1":
        raise BadInput(f"echo options spin_s, spin_first_s and crash are for tests only ({TEST_HOOKS_VAR}=1)")
    if spin is not None:
        end = time.monotonic() + min(float(spin), 3600.0)
        n = 0
        while time.monotonic() < end:
            n = (n * 31 + 7) % 1_000_003
    if crash == "segfault":
        import ctypes

        ctypes.string_at(0)  # reads address 0: SIGSEGV
    elif crash == "kill":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    elif crash == "exit":
        os._exit(3)
    elif crash is not None:
        raise BadInput(f"echo option crash must be segfault, kill or exit, not {crash!r}")
