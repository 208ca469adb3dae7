"""The job store: every statement on the jobs, workers and webhook-delivery tables (see ``store``)."""

from api.jobs.deliveries import DeliveryRecord
from api.jobs.records import (
    FailOutcome,
    HeartbeatOutcome,
    IndexedDocument,
    JobEvent,
    JobKind,
    JobRecord,
    JobState,
    LaneCount,
    LaneLoad,
    Lease,
    LeasedJob,
    ListedJob,
    LiveLane,
    NewJob,
    OnlineWorkers,
    TaskStage,
    WorkerRecord,
    is_final,
)
from api.jobs.store import JobStore

__all__ = [
    "DeliveryRecord",
    "FailOutcome",
    "HeartbeatOutcome",
    "IndexedDocument",
    "JobEvent",
    "JobKind",
    "JobRecord",
    "JobState",
    "JobStore",
    "LaneCount",
    "LaneLoad",
    "Lease",
    "LeasedJob",
    "ListedJob",
    "LiveLane",
    "NewJob",
    "OnlineWorkers",
    "TaskStage",
    "WorkerRecord",
    "is_final",
]
