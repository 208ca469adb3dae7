"""Keep capabilities out of logs: lease tokens and download signatures in access-log lines."""

from __future__ import annotations

import logging
import re

_SECRET_PARAM = re.compile(r"(?i)\b((?:sig|lease_token|token)=)[^&\s\"']+")


def redact(text: str) -> str:
    """``...&sig=abc`` -> ``...&sig=[redacted]`` (also ``lease_token=``, ``token=``)."""
    return _SECRET_PARAM.sub(r"\1[redacted]", text)


class RedactSecrets(logging.Filter):
    """A filter for uvicorn's access log (its path argument carries the query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install() -> None:
    """Redact the access log of this process (idempotent)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSecrets) for f in access.filters):
        access.addFilter(RedactSecrets())
