"""Python client and ``morag`` command for a morag-remote server (needs only httpx and pydantic)."""

from client.api import AsyncMoragClient, MoragClient
from client.errors import ApiError, AuthError, MoragClientError, ServerUnreachable, TaskTimeout

__all__ = [
    "ApiError",
    "AsyncMoragClient",
    "AuthError",
    "MoragClient",
    "MoragClientError",
    "ServerUnreachable",
    "TaskTimeout",
]
