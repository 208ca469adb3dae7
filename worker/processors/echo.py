"""The built-in ``echo`` processor: returns its input as markdown (proves the protocol)."""

from __future__ import annotations

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
        job.progress(1.0, "done")
        md = f"# {source}\n\n{text}\n"
        return ProcessResult(markdown=md, metadata={"source": source, "characters": len(text)})
