"""The built-in ``echo`` processor: returns its input as markdown (proves the protocol)."""

from __future__ import annotations

import time

from worker.errors import BadInput
from worker.processors.base import JobInput, ProcessorConfig, ProcessResult


class EchoProcessor:
    content_types = ("echo",)

    def available(self) -> tuple[bool, str]:
        return True, ""

    def process(self, job: JobInput, config: ProcessorConfig) -> ProcessResult:
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
