"""Verifying a webhook jobgate sent, on the receiving side (Standard Webhooks).

jobgate signs each delivery with the `standardwebhooks` reference library
(core/webhooks/signing.py); this wraps the same library's check, so what verifies here is by
construction what was signed. While a secret is being rotated the receiver may hold two
(`secrets=[new, old]`): a delivery verifies when any of them signed it. The body must be the
exact bytes received, before any JSON parsing; a timestamp more than 5 minutes from now is
refused (the library's tolerance, against replays).
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Mapping
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import EmptyWebhookSecretError
from standardwebhooks.webhooks import WebhookVerificationError as _LibraryVerificationError

from jobgate.client.errors import WebhookVerificationError


def verify_webhook(
    body: bytes | str, headers: Mapping[str, str], secrets: str | Iterable[str]
) -> dict[str, Any]:
    """The event (`{"type", "timestamp", "data"}`) once its signature verifies with one of
    `secrets` (`whsec_...`); `WebhookVerificationError` otherwise. `headers`: the request's
    headers, any mapping (their names in any case)."""
    candidates = [secrets] if isinstance(secrets, str) else list(secrets)
    if not candidates:
        raise ValueError("give at least one webhook secret (whsec_...)")
    plain_headers = {str(name): str(value) for name, value in headers.items()}
    reasons: list[str] = []
    for secret in candidates:
        try:
            webhook = Webhook(secret)
        except (EmptyWebhookSecretError, binascii.Error, ValueError) as exc:
            raise ValueError("not a webhook secret: expected whsec_ followed by base64") from exc
        try:
            event = webhook.verify(body, plain_headers)
        except _LibraryVerificationError as exc:
            reasons.append(str(exc))
            continue
        if not isinstance(event, dict):
            raise WebhookVerificationError("the webhook's body is not a JSON object")
        return event
    raise WebhookVerificationError("; ".join(dict.fromkeys(reasons)))
