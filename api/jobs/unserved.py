"""Whether any online worker can take a queued job, and the status message saying it cannot.

Pure functions over worker and job rows (mappings): the store uses them inside the enqueue and retry
transactions (the new rows carry the note from their insert on) and in the periodic check
(:meth:`api.jobs.upkeep.UpkeepStore.note_unserved`) that sets and clears it as workers come and go.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from protocol.states import DEFAULT_LANE

# The start of the status message of a queued task nobody can take (refreshed, then cleared).
UNSERVED_PREFIX = "waiting: no online worker"
# Messages the note may replace: none yet, or the one a retry leaves.
REPLACEABLE = (None, "retried")


def can_take(worker: Mapping[str, Any], job: Mapping[str, Any]) -> bool:
    """Whether this (online) worker could claim this queued job now or once its fallback is due.

    ``job`` carries its owner's fallback choices as they are now (``cpu_fallback``,
    ``shared_fallback``): the claim applies them, not the enqueue (``api.jobs.claim``).
    """
    if job["content_type"] not in (worker["content_types"] or "").split(","):
        return False
    if job["lane"] == DEFAULT_LANE or worker["shared"]:
        if not worker["shared"]:
            return False
        return job["lane"] == DEFAULT_LANE or bool(job["shared_at"] is not None and job["shared_fallback"])
    if worker["user_id"] != job["user_id"]:
        return False
    if job["lane"].startswith("gpu-"):
        if worker["serves_gpu"]:
            return True
        # A CPU-only worker of the owner takes GPU-lane jobs once their CPU fallback is due.
        return bool(worker["serves_cpu"] and job["fallback_at"] is not None and job["cpu_fallback"])
    return bool(worker["serves_cpu"])


def unserved_message(job: Mapping[str, Any]) -> str:
    return (
        f"{UNSERVED_PREFIX} takes {job['content_type']} jobs in lane {job['lane']}; it runs once one "
        f"connects (python -m worker --content-types {job['content_type']} ...)"
    )


def wanted_message(job: Mapping[str, Any], online: Iterable[Mapping[str, Any]]) -> str | None:
    """The status message the queued job should show: the note when nobody can take it, else its own."""
    current: str | None = job.get("progress_message")
    ours = bool(current and current.startswith(UNSERVED_PREFIX))
    served = any(can_take(w, job) for w in online)
    if not served and (current in REPLACEABLE or ours):
        return unserved_message(job)
    if served and ours:
        return None
    return current
