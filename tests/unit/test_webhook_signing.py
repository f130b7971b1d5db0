"""Webhook signatures are what a Standard Webhooks receiver verifies, during rotation too."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from core.webhooks.signing import new_secret, sign, webhook_headers

# The spec's test vector (wire-formats.md section 5).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP_S = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

BODY = b'{"type": "job.succeeded", "data": {"id": "job_1", "note": "caf\xc3\xa9"}}'


def test_signature_matches_the_spec_test_vector() -> None:
    assert sign([SPEC_SECRET], SPEC_ID, SPEC_TIMESTAMP_S, SPEC_BODY) == SPEC_SIGNATURE


def test_new_secrets_are_whsec_prefixed_32_random_bytes() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    assert first != second


def test_headers_carry_id_timestamp_signature_and_json_content_type() -> None:
    headers = webhook_headers([SPEC_SECRET], SPEC_ID, SPEC_TIMESTAMP_S, SPEC_BODY)
    assert headers == {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP_S),
        "webhook-signature": SPEC_SIGNATURE,
        "content-type": "application/json",
    }


def test_a_standard_webhooks_receiver_accepts_a_fresh_delivery() -> None:
    secret = new_secret()
    headers = webhook_headers([secret], "msg_1", int(time.time()), BODY)
    assert Webhook(secret).verify(BODY, headers)["data"]["id"] == "job_1"


def test_during_rotation_both_the_old_and_the_new_secret_verify_the_two_signature_header() -> None:
    old, new = new_secret(), new_secret()
    headers = webhook_headers([new, old], "msg_1", int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(BODY, headers)


def test_a_secret_outside_the_signing_set_does_not_verify() -> None:
    headers = webhook_headers([new_secret(), new_secret()], "msg_1", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(new_secret()).verify(BODY, headers)


def test_a_tampered_body_fails_verification() -> None:
    secret = new_secret()
    headers = webhook_headers([secret], "msg_1", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(secret).verify(BODY.replace(b"job_1", b"job_2"), headers)


def test_a_timestamp_older_than_five_minutes_fails_verification() -> None:
    secret = new_secret()
    headers = webhook_headers([secret], "msg_1", int(time.time()) - 6 * 60, BODY)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(BODY, headers)


def test_a_replayed_signature_with_a_fresh_timestamp_fails_verification() -> None:
    secret = new_secret()
    old_headers = webhook_headers([secret], "msg_1", int(time.time()) - 6 * 60, BODY)
    replayed = {**old_headers, "webhook-timestamp": str(int(time.time()))}
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(secret).verify(BODY, replayed)


def test_a_repeated_secret_signs_once() -> None:
    secret = new_secret()
    assert sign([secret, secret], "msg_1", 1, BODY) == sign([secret], "msg_1", 1, BODY)


@pytest.mark.parametrize("msg_id", ["", "msg.1"])
def test_an_id_that_would_make_the_signed_content_ambiguous_is_refused(msg_id: str) -> None:
    with pytest.raises(ValueError, match="webhook id"):
        sign([new_secret()], msg_id, 1, BODY)


def test_signing_without_any_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        sign([], "msg_1", 1, BODY)
