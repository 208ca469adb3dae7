"""The tables the job store owns, typed (declared once: no other module names them again)."""

from __future__ import annotations

from sqlalchemy import Table
from sqlmodel import SQLModel

from api import models as _models  # noqa: F401  (registers the tables on the metadata)

JOBS: Table = SQLModel.metadata.tables["jobs"]
WORKERS: Table = SQLModel.metadata.tables["workers"]
DELIVERIES: Table = SQLModel.metadata.tables["webhook_deliveries"]
ARTIFACTS: Table = SQLModel.metadata.tables["artifacts"]
FILES: Table = SQLModel.metadata.tables["files"]
USERS: Table = SQLModel.metadata.tables["users"]  # read only: owners' names and fallback choices
