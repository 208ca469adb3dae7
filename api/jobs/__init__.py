"""The job store: every statement on the jobs, workers and webhook-delivery tables (see ``store``)."""

from api.jobs.deliveries import DeliveryRecord
from api.jobs.records import (
    FailOutcome,
    HeartbeatOutcome,
    JobEvent,
    JobKind,
    JobRecord,
    JobState,
    LaneCount,
    Lease,
    LeasedJob,
    NewJob,
    TaskStage,
    WorkerRecord,
    is_final,
)
from api.jobs.store import JobStore

__all__ = [
    "DeliveryRecord",
    "FailOutcome",
    "HeartbeatOutcome",
    "JobEvent",
    "JobKind",
    "JobRecord",
    "JobState",
    "JobStore",
    "LaneCount",
    "Lease",
    "LeasedJob",
    "NewJob",
    "TaskStage",
    "WorkerRecord",
    "is_final",
]
