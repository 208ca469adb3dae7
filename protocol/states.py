"""Job states and stages, key scopes, content types and lanes."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"
    dead = "dead"


FINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.canceled, JobState.dead})


class TaskStage(StrEnum):
    """Where a task is: with a worker (``process``), being indexed by the server (``index``), or ``done``."""

    process = "process"
    indexing = "index"
    done = "done"


class Scope(StrEnum):
    """What an API key may do."""

    client = "client"
    worker = "worker"
    shared_worker = "shared-worker"
    admin = "admin"


class ContentType(StrEnum):
    echo = "echo"
    audio = "audio"
    video = "video"
    youtube = "youtube"
    document = "document"
    web = "web"
    image = "image"


class LaneKind(StrEnum):
    gpu = "gpu"
    cpu = "cpu"
    default = "default"


#: Heavy media goes to the GPU lane, everything else to the CPU lane.
GPU_CONTENT_TYPES = frozenset({ContentType.audio, ContentType.video, ContentType.youtube})

DEFAULT_LANE = "default"


def lane_kind_for(content_type: ContentType) -> LaneKind:
    """The lane a content type lands in when the job does not ask for one."""
    return LaneKind.gpu if content_type in GPU_CONTENT_TYPES else LaneKind.cpu


def lane_name(kind: LaneKind, user_id: int | None) -> str:
    """``gpu-tasks-{user_id}``, ``cpu-tasks-{user_id}`` or ``default``."""
    if kind is LaneKind.default or user_id is None:
        return DEFAULT_LANE
    return f"{kind.value}-tasks-{user_id}"
