"""``JobStore``: every statement on the jobs, workers and webhook-delivery tables, in one object.

Each concern lives in its own module and the store puts them together:

- :mod:`api.jobs.submit`      queue and cancel (client writes);
- :mod:`api.jobs.claim`       the claim and worker presence;
- :mod:`api.jobs.leases`      heartbeat, complete, fail: every change fenced by the lease;
- :mod:`api.jobs.reads`       what clients read, and waiting for a result;
- :mod:`api.jobs.upkeep`      expired leases, fallback, file and artifact retention;
- :mod:`api.jobs.indexing`    the indexing stage of ingest jobs;
- :mod:`api.jobs.deliveries`  webhook delivery attempts.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from api.jobs.claim import ClaimStore
from api.jobs.deliveries import DeliveryStore
from api.jobs.indexing import IndexStageStore
from api.jobs.leases import LeaseStore
from api.jobs.reads import ReadStore
from api.jobs.submit import SubmitStore
from api.jobs.upkeep import UpkeepStore
from api.notifier import Notifier
from api.settings import Settings


class JobStore(SubmitStore, ClaimStore, LeaseStore, ReadStore, UpkeepStore, IndexStageStore, DeliveryStore):
    """The job store of one server process (engine, settings and notifier held once)."""

    def __init__(self, engine: AsyncEngine, settings: Settings, notifier: Notifier) -> None:
        super().__init__(engine, settings, notifier)
