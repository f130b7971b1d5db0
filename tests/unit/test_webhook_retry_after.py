"""A receiver's Retry-After, in either form HTTP allows, becomes seconds to wait."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from core.webhooks.sender import retry_after_s

NOW = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)


def test_delay_seconds_are_taken_as_they_are() -> None:
    assert retry_after_s("120", NOW.timestamp()) == 120.0
    assert retry_after_s(" 0 ", NOW.timestamp()) == 0.0


def test_an_http_date_becomes_the_seconds_until_it() -> None:
    later = format_datetime(NOW.replace(minute=1, second=30), usegmt=True)
    assert retry_after_s(later, NOW.timestamp()) == 90.0


def test_a_date_in_the_past_means_no_wait() -> None:
    earlier = format_datetime(NOW.replace(hour=9), usegmt=True)
    assert retry_after_s(earlier, NOW.timestamp()) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "inf", "nan"])
def test_a_missing_or_malformed_value_is_ignored(value: str | None) -> None:
    assert retry_after_s(value, NOW.timestamp()) is None
