"""Signed downloads of input files for the worker holding the job's lease."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse

from api import filestore
from api.auth import worker_access
from api.errors import Forbidden, NotFound, documented
from api.jobs import TaskStage
from api.keystore import Principal, Scope
from api.state import app_state
from protocol import paths, signing
from protocol.states import JobState

router = APIRouter(tags=["worker"])


class LargeReadFileResponse(FileResponse):
    """Starlette's FileResponse (Range, HEAD, ``http.response.pathsend`` where the ASGI server offers
    it) with reads of ``chunk_size`` bytes. uvicorn has no pathsend/zero-copy extension, so every
    read is a thread hop plus a socket write: the default 64 KiB reads cap a download at a fraction
    of what the disk and the socket do (docs/benchmarks.md, "Transfer")."""

    def __init__(self, *args: Any, chunk_size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chunk_size = chunk_size


@router.get(
    paths.FILES,
    response_class=FileResponse,
    responses={206: {"description": "Partial content"}, **documented(401, 403, 404, 422)},
)
async def download(
    file_id: str,
    request: Request,
    job: str = Query(..., max_length=64),
    exp: int = Query(...),
    sig: str = Query(..., max_length=128),
    who: Principal = Depends(worker_access),
) -> FileResponse:
    """Stream a job's input file (Range supported) to the worker holding its lease."""
    state = app_state(request)
    row = await state.jobs.get_any(job)
    # One answer for every mismatch, so a probe learns nothing about other users' files.
    denied = NotFound("no such file, or the link is not valid for this key", code="file_not_found")
    # Only while a worker processes the job: not queued, not ended, not while the server indexes it.
    if row is None or row.file_id != file_id or row.state != JobState.running or not row.lease_token:
        raise denied
    if row.stage != TaskStage.process:
        raise denied
    # Whose it is before whether the signature holds: a foreign key learns nothing (always 404).
    if who.scope is Scope.shared_worker:
        if row.worker_key_id != who.key_id:
            raise denied
    elif row.user_id != who.user_id:
        raise denied
    if not signing.verify(state.secret, sig, file_id, job, row.lease_token, exp):
        raise Forbidden("the download link is invalid or expired; claim the job again", code="bad_signature")
    f = await filestore.get_file(state.engine, file_id)
    if f is None:
        raise denied
    path = filestore.file_path(state.settings, f)
    if not path.exists():
        raise denied
    return LargeReadFileResponse(
        path,
        media_type="application/octet-stream",
        filename=f["original_name"] or file_id,
        chunk_size=state.settings.download_chunk_bytes,
    )
