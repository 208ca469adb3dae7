"""Results on their way to the server: the spool, and sending it (artifacts first, then complete).

Before anything is sent, a job's result goes to the spool directory: ``{job_id}.json`` (markdown,
metadata, lease, deadline) and its artifact files moved to ``{job_id}.files/``. Sending uploads
each artifact (``POST /worker/artifact``), noting in the entry which are done, then completes the
job, whose ``metadata["artifacts"]`` lists the uploaded names. A server that is down keeps the
whole entry, artifacts included, for the next start, which resumes after the last uploaded file;
a lost lease or a canceled job drops it. A server that refuses an artifact (too large, too many)
fails the job as not retryable: a result is never completed without the files it names.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from protocol.errors import ErrorClass
from worker.client import LeaseLost, ServerRejected, ServerUnreachable, WorkerClient
from worker.executor import result_payload
from worker.processors.base import ProcessResult
from worker.progress import JobProgress

log = logging.getLogger("morag.worker")
SPOOL_MAX_AGE_S = 24 * 3600.0
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def artifact_names(paths: list[Path]) -> list[tuple[Path, str]]:
    """(file, name the server accepts) for each non-empty file: safe characters, no leading dot, unique."""
    out: list[tuple[Path, str]] = []
    taken: set[str] = set()
    for path in paths:
        if not path.is_file() or path.stat().st_size == 0:
            log.warning("artifact %s is missing or empty; not uploaded", path)
            continue
        base = _UNSAFE.sub("_", path.name).lstrip(".")[:100] or "artifact"
        name, n = base, 1
        while name in taken:
            n += 1
            stem, dot, ext = base.rpartition(".")
            tail = f"-{n}"
            name = f"{stem[: 100 - len(tail) - len(ext) - 1]}{tail}.{ext}" if dot else f"{base[:95]}{tail}"
        taken.add(name)
        out.append((path, name))
    return out


class Delivery:
    """The spool of one worker and the sending of what is in it."""

    def __init__(self, client: WorkerClient, spool_dir: Path) -> None:
        self.client = client
        self.dir = spool_dir

    def entry_path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def files_dir(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.files"

    def _write(self, entry: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.entry_path(entry["job_id"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry))
        tmp.replace(path)

    def discard(self, job_id: str) -> None:
        self.entry_path(job_id).unlink(missing_ok=True)
        folder = self.files_dir(job_id)
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)

    def entry(
        self,
        job_id: str,
        lease_token: str,
        result: ProcessResult,
        deliver_until: float,
        files: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """What is sent (and, when spooled, kept): the result, its lease, its artifacts' names."""
        payload = result_payload(result)
        files = files or []
        if files or "artifacts" in payload["metadata"]:
            # What the client can download is what was uploaded, under the names the server took.
            payload["metadata"]["artifacts"] = [f["name"] for f in files]
        return {
            "job_id": job_id,
            "lease_token": lease_token,
            "saved_at": time.time(),
            "deliver_until": deliver_until,
            "artifacts": files,
            **payload,
        }

    def spool(
        self, job_id: str, lease_token: str, result: ProcessResult, deliver_until: float
    ) -> dict[str, Any]:
        """Write the entry and move the artifact files beside it (they outlive the job's temp dir)."""
        named = artifact_names(result.artifacts)
        files = []
        if named:
            folder = self.files_dir(job_id)
            folder.mkdir(parents=True, exist_ok=True)
            for path, name in named:
                shutil.move(path, folder / name)
                files.append({"name": name, "uploaded": False})
        entry = self.entry(job_id, lease_token, result, deliver_until, files)
        self._write(entry)
        return entry

    async def send(
        self,
        entry: dict[str, Any],
        max_time_s: float,
        progress: JobProgress | None = None,
        *,
        on_disk: bool = True,
    ) -> bool:
        """Upload the entry's pending artifacts, then complete; True when the server took the result.
        An entry not ``on_disk`` (a quick job's, held in memory) is written to the spool only when
        the server cannot be reached, so the next start still delivers it."""
        job_id, token = entry["job_id"], entry["lease_token"]
        deadline = time.monotonic() + max_time_s
        files = entry.get("artifacts", [])
        name = ""
        try:
            for i, art in enumerate(files, 1):
                if art.get("uploaded"):
                    continue
                name = art["name"]
                if progress:
                    progress.update("upload", (i - 1) / (len(files) + 1), f"upload artifact {i}/{len(files)}")
                await self.client.upload_artifact(
                    job_id,
                    token,
                    self.files_dir(job_id) / name,
                    name,
                    max_time_s=max(deadline - time.monotonic(), 3.0),
                )
                art["uploaded"] = True
                self._write(entry)  # a restart resumes after this file
            name = ""
            if progress:
                progress.update("upload", len(files) / (len(files) + 1), "sending result")
            await self.client.complete(
                job_id,
                token,
                entry["markdown"],
                entry["metadata"],
                max_time_s=max(deadline - time.monotonic(), 3.0),
            )
        except LeaseLost as exc:
            log.warning("job %s: result discarded, %s", job_id, exc.code)
        except ServerRejected as exc:
            if not name:
                log.error("job %s: the server refused the result: %s", job_id, exc.message)
            else:
                await self._refused(job_id, token, name, exc)
        except ServerUnreachable as exc:
            if not on_disk:
                await asyncio.to_thread(self._write, entry)
            log.error(
                "job %s: result not delivered (%s); kept in %s for the next start",
                job_id,
                exc.message,
                self.dir,
            )
            return False
        else:
            log.info(
                "job %s: result delivered (%d artifact(s))",
                job_id,
                len(files),
                extra={"job_id": job_id, "phase": "delivered"},  # JSON logs: the server has it
            )
            if on_disk:
                self.discard(job_id)
            return True
        if on_disk:
            self.discard(job_id)
        return False

    async def deliver(
        self,
        job_id: str,
        lease_token: str,
        result: ProcessResult,
        lease_deadline: float,
        lease_s: float,
        progress: JobProgress | None = None,
        spooled: Callable[[], None] | None = None,
        spool_first: bool = True,
    ) -> bool:
        """Send a fresh result until the server has it or the lease (``lease_deadline``, monotonic,
        plus one more lease) is gone; True when it was delivered. ``spooled`` is called once the
        result is kept, just before it is sent.

        With ``spool_first`` (the job ran ``--spool-after`` seconds or more) or artifacts, the
        result goes to the spool on disk first, so a worker killed while sending still delivers
        it at its next start. A quicker job's result is sent from memory and reaches the spool
        only when the server cannot be reached: were the worker killed mid-send, the job's lease
        runs out and the job runs again, which costs less than two file writes on every job."""
        remaining = lease_deadline - time.monotonic()
        deliver_until = time.time() + remaining + lease_s
        on_disk = spool_first or bool(result.artifacts)
        if not on_disk:
            entry = self.entry(job_id, lease_token, result, deliver_until)
            progress = None  # quick: "result delivered" is its line
        else:
            if progress:
                progress.update("upload", 0.0, "sending result")
            entry = await asyncio.to_thread(self.spool, job_id, lease_token, result, deliver_until)
        if spooled is not None:
            spooled()
        ok = await self.send(entry, max(remaining + lease_s, 5.0), progress, on_disk=on_disk)
        if ok and progress:
            progress.update("upload", 1.0, "done")
        return ok

    async def _refused(self, job_id: str, token: str, name: str, exc: ServerRejected) -> None:
        """An artifact the server will never take: the job fails for good, saying why."""
        message = f"the server refused artifact {name!r}: {exc.message}"
        log.error("job %s: %s", job_id, message)
        try:
            await self.client.fail(job_id, token, message, ErrorClass.internal, False, max_time_s=10)
        except Exception as err:  # best effort: the lease runs out and the server retries the job
            log.warning("job %s: could not report the failure (%s)", job_id, err)

    def pending(self, skip: Collection[str] = ()) -> bool:
        """True when the spool holds results not being sent right now."""
        return self.dir.is_dir() and any(p.stem not in skip for p in self.dir.glob("*.json"))

    async def send_all(self, skip: Collection[str] = ()) -> int:
        """Send what could not be delivered before (``skip``: jobs whose delivery is under way);
        returns how many results the server took."""
        if not self.dir.is_dir():
            return 0
        for folder in self.dir.glob("*.files"):
            if not self.entry_path(folder.name.removesuffix(".files")).exists():  # a crash while spooling
                shutil.rmtree(folder, ignore_errors=True)
        delivered = 0
        for path in sorted(self.dir.glob("*.json")):
            job_id = path.stem
            if job_id in skip:
                continue
            try:
                entry = json.loads(path.read_text())
            except (OSError, ValueError):
                self.discard(job_id)
                continue
            if time.time() - float(entry.get("saved_at", 0)) > SPOOL_MAX_AGE_S:
                self.discard(job_id)
                continue
            left = float(entry.get("deliver_until", 0)) - time.time()
            delivered += await self.send(entry, max(left, 3.0))
        return delivered
