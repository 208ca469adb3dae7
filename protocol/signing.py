"""HMAC signatures for download URLs: bound to a file, a job, a lease and an expiry."""

from __future__ import annotations

import hashlib
import hmac
import time


def _payload(file_id: str, job_id: str, lease_token: str, expires: int) -> bytes:
    return f"{file_id}\n{job_id}\n{lease_token}\n{expires}".encode()


def sign(secret: bytes, file_id: str, job_id: str, lease_token: str, expires: int) -> str:
    return hmac.new(secret, _payload(file_id, job_id, lease_token, expires), hashlib.sha256).hexdigest()


def verify(
    secret: bytes,
    signature: str,
    file_id: str,
    job_id: str,
    lease_token: str,
    expires: int,
    now: float | None = None,
) -> bool:
    """True when the signature matches and has not expired (constant-time compare)."""
    if (now if now is not None else time.time()) > expires:
        return False
    expected = sign(secret, file_id, job_id, lease_token, expires)
    return hmac.compare_digest(expected, signature)


def sign_body(secret: bytes, body: bytes, timestamp: int) -> str:
    """Webhook signature: HMAC-SHA256 over ``{timestamp}.{body}``."""
    return hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
