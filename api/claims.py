"""The claim answer: leased jobs as a worker receives them (download link, file facts, cookies).

Everything a batch of jobs needs is read in one query per kind (the files of all jobs, the cookies
of the URL jobs whose processor fetches with them), never once per job, and nothing a batch does
not need (a claim of echo or document-URL jobs reads no cookies).
"""

from __future__ import annotations

import time

from api import filestore
from api.contenttypes import COOKIE_TYPES
from api.jobs import LeasedJob
from api.keystore import Principal
from api.state import AppState
from protocol import signing
from protocol.models import ClaimedJob


async def claim_answer(
    state: AppState, who: Principal, base_url: str, leased: list[LeasedJob]
) -> list[ClaimedJob]:
    """The wire form of ``leased`` jobs for the claiming key ``who``: signed download links, and the
    users' cookies where ``who`` may have them (a shared worker only when the owner opted in)."""
    settings = state.settings
    files = await filestore.get_files(state.engine, [j.file_id for j in leased if j.file_id])
    wanted = [
        (j.user_id, j.source_url)
        for j in leased
        if j.source_url and j.user_id is not None and j.content_type in COOKIE_TYPES
    ]
    cookies = await state.cookies.for_worker(who, wanted) if wanted else {}
    exp = int(time.time() + settings.signed_url_ttl_s)
    out = []
    for j in leased:
        item = ClaimedJob(
            job_id=j.id,
            lease_token=j.lease_token,
            lease_expires_at=j.lease_expires_at,
            attempt=j.attempt,
            content_type=j.content_type,
            options=j.options,
        )
        f = files.get(j.file_id) if j.file_id else None
        if j.file_id and f is not None:
            sig = signing.sign(state.secret, j.file_id, j.id, j.lease_token, exp)
            item.download_url = f"{base_url}/files/{j.file_id}?job={j.id}&exp={exp}&sig={sig}"
            item.file_name, item.file_size, item.file_sha256 = f["original_name"], f["size"], f["sha256"]
        if j.source_url:
            item.source_url = j.source_url
            if j.user_id is not None:  # only the pairs in `wanted` have cookies
                item.cookies = cookies.get((j.user_id, j.source_url))
        out.append(item)
    return out
