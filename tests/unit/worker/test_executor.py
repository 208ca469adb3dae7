"""The executor: processor errors classified, OOM recognised, cancel through progress."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from protocol.errors import ErrorClass
from worker import executor
from worker.errors import BadInput, JobCanceled, OutOfMemory, ProcessingError, TransientError, Unsupported
from worker.executor import classify, execute, is_out_of_memory, result_payload
from worker.processors.base import JobInput, ProcessorConfig, ProcessResult


def job(tmp_path: Path, content_type: str = "echo", text: bytes | None = b"hi", **options: Any) -> JobInput:
    path = None
    if text is not None:
        path = tmp_path / "in.txt"
        path.write_bytes(text)
    return JobInput(
        content_type=content_type, options=options, temp_dir=tmp_path, path=path, file_name="in.txt"
    )


class _Raising:
    content_types = ("echo",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def available(self) -> tuple[bool, str]:
        return True, ""

    def process(self, job: JobInput, config: ProcessorConfig) -> ProcessResult:
        raise self.exc


def with_processor(monkeypatch: pytest.MonkeyPatch, proc: Any) -> None:
    monkeypatch.setattr(executor, "load_processor", lambda ct: proc)
    monkeypatch.setattr(executor, "availability", lambda ct: (True, ""))


def test_echo_runs_and_reports_progress(tmp_path: Path) -> None:
    seen: list[tuple[float, str]] = []
    inp = job(tmp_path, text=b"hello")
    inp.progress = lambda f, m: seen.append((f, m))
    result = execute(inp, ProcessorConfig())
    assert "hello" in result.markdown and seen[-1] == (1.0, "done")
    assert result_payload(result)["metadata"]["characters"] == 5


@pytest.mark.parametrize(
    "exc,cls,retryable",
    [
        (BadInput("corrupt"), ErrorClass.bad_input, False),
        (TransientError("net"), ErrorClass.transient, True),
        (MemoryError(), ErrorClass.out_of_memory, True),
        (RuntimeError("CUDA failed with error out of memory"), ErrorClass.out_of_memory, True),
        (RuntimeError("cudaErrorMemoryAllocation"), ErrorClass.out_of_memory, True),
        (KeyError("oops"), ErrorClass.internal, True),
        (ZeroDivisionError("division by zero"), ErrorClass.internal, True),
    ],
)
def test_errors_are_classified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException, cls: ErrorClass, retryable: bool
) -> None:
    with_processor(monkeypatch, _Raising(exc))
    with pytest.raises(ProcessingError) as info:
        execute(job(tmp_path), ProcessorConfig())
    assert info.value.error_class is cls and info.value.retryable is retryable
    if cls is ErrorClass.internal:
        assert type(exc).__name__ in info.value.message  # the user sees what broke


def test_oom_detection() -> None:
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("file not found"))
    assert isinstance(classify(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")), OutOfMemory)


def test_unknown_or_missing_processor_is_unsupported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Unsupported, match="cannot process 'nope'"):
        execute(job(tmp_path, content_type="nope"), ProcessorConfig())
    monkeypatch.setattr(executor, "availability", lambda ct: (False, "pip install '.[media]'"))
    with pytest.raises(Unsupported, match=r"pip install"):
        execute(job(tmp_path), ProcessorConfig())


def test_cancel_stops_a_long_job_at_its_next_progress(tmp_path: Path) -> None:
    canceled = threading.Event()
    inp = job(tmp_path, sleep_s=30)
    timer = threading.Timer(0.3, canceled.set)
    timer.start()
    with pytest.raises(JobCanceled):
        execute(inp, ProcessorConfig(), canceled)
    timer.cancel()


def test_a_broken_progress_display_does_not_fail_the_job(tmp_path: Path) -> None:
    inp = job(tmp_path)

    def broken(f: float, m: str) -> None:
        raise ValueError("terminal gone")

    inp.progress = broken
    assert "hi" in execute(inp, ProcessorConfig()).markdown


def test_wrong_return_type_is_an_internal_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Bad(_Raising):
        def process(self, job: JobInput, config: ProcessorConfig) -> Any:
            return "markdown"

    with_processor(monkeypatch, Bad(Exception()))
    with pytest.raises(ProcessingError, match="not a result"):
        execute(job(tmp_path), ProcessorConfig())


def test_echo_sleep_option_is_validated(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="sleep_s"):
        execute(job(tmp_path, sleep_s="long"), ProcessorConfig())


def test_metadata_is_made_json_safe() -> None:
    out = result_payload(ProcessResult(markdown="x", metadata={"path": Path("/a"), "n": 1}))
    assert out["metadata"] == {"path": "/a", "n": 1}


def test_result_payload_drops_what_the_server_refuses():
    from worker.executor import result_payload
    from worker.processors.base import ProcessResult

    deep: dict = {}
    cur = deep
    for _ in range(100):
        cur["x"] = {}
        cur = cur["x"]
    payload = result_payload(
        ProcessResult(
            markdown="page\x00one",
            metadata={
                "score": float("nan"),
                "big": float("inf"),
                "title": "a\x00b",
                "deep": deep,
                "n": 3,
                "tags": ("a", "b"),
                "path": __import__("pathlib").Path("/x"),
            },
        )
    )
    assert payload["markdown"] == "pageone"
    meta = payload["metadata"]
    assert meta["score"] is None and meta["big"] is None and meta["title"] == "ab" and meta["n"] == 3
    assert meta["tags"] == ["a", "b"] and meta["path"] == "/x"
    depth, cur = 0, meta["deep"]
    while isinstance(cur, dict):
        depth, cur = depth + 1, cur["x"]
    assert depth < 64
    import json

    json.dumps(payload, allow_nan=False)  # what the server accepts


class _Scratch:
    """Writes a scratch file into its temp dir, as the media and document processors do."""

    content_types = ("echo",)

    def __init__(self, uses_temp_dir: bool | None) -> None:
        if uses_temp_dir is not None:
            self.uses_temp_dir = uses_temp_dir

    def available(self) -> tuple[bool, str]:
        return True, ""

    def process(self, job: JobInput, config: ProcessorConfig) -> ProcessResult:
        if getattr(self, "uses_temp_dir", True):
            (job.temp_dir / "scratch.bin").write_bytes(b"x")
        return ProcessResult(markdown="ok")


@pytest.mark.parametrize("uses", [None, True, False])
def test_the_temp_dir_is_made_for_processors_that_use_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, uses: bool | None
) -> None:
    with_processor(monkeypatch, _Scratch(uses))
    inp = job(tmp_path)
    inp.temp_dir = tmp_path / "job" / "work"  # not there yet: the worker leaves it to the slot
    assert execute(inp, ProcessorConfig()).markdown == "ok"
    assert inp.temp_dir.is_dir() is (uses is not False)  # a processor that says it needs none gets none
