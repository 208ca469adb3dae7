"""The key a user verifies webhook signatures with."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from api.auth import client_access
from api.keystore import Principal
from api.webhooks import SIGNATURE_HEADER, user_secret

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])


class WebhookSecret(BaseModel):
    secret: str
    header: str
    scheme: str


@router.get("/secret", response_model=WebhookSecret)
async def webhook_secret(request: Request, who: Principal = Depends(client_access)) -> WebhookSecret:
    """Your webhook signing secret: verify ``v1 == HMAC_SHA256(secret, f"{t}.{body}")``."""
    return WebhookSecret(
        secret=user_secret(request.app.state.morag.secret, who.user_id),
        header=SIGNATURE_HEADER,
        scheme="t=UNIX_TIME,v1=hex(HMAC_SHA256(secret, f'{t}.{raw_body}')); refuse old t to stop replays",
    )
