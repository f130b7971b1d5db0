"""Standard Webhooks signatures: `whsec_` secrets and the `webhook-*` headers of a delivery.

The signature itself comes from the `standardwebhooks` reference library, so what a receiver
verifies with `Webhook(secret).verify(...)` is by construction what we signed. During a secret
rotation both the old and the new secret sign: the spec's `webhook-signature` header is a
space-separated list, and a receiver accepts the message when any entry matches its secret.
Spec: https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime
from secrets import token_bytes

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
# The spec allows 24-64 random bytes; 32 is the size of the HMAC-SHA256 output.
SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh signing secret as users see it: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(SECRET_BYTES)).decode("ascii")


def sign(secrets: Sequence[str], msg_id: str, timestamp_s: int, body: bytes) -> str:
    """The `webhook-signature` value: one `v1,<base64>` per secret, space-separated.

    `body` must be the exact bytes sent. It has to be UTF-8 (ours is JSON), because the
    reference library signs and verifies text; a repeated secret signs once.
    """
    if not secrets:
        raise ValueError("at least one signing secret is needed")
    # The signed content is `id.timestamp.body`, so a dot in the id would make it ambiguous.
    if not msg_id or "." in msg_id:
        raise ValueError("a webhook id must be non-empty and contain no '.'")
    timestamp = datetime.fromtimestamp(timestamp_s, tz=UTC)
    payload = body.decode("utf-8")
    return " ".join(Webhook(secret).sign(msg_id, timestamp, payload) for secret in dict.fromkeys(secrets))


def webhook_headers(secrets: Sequence[str], msg_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
    """The headers of one delivery attempt: the id stays the same on retries, the timestamp does not."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": sign(secrets, msg_id, timestamp_s, body),
        "content-type": "application/json",
    }
