"""Failed key checks are counted per client: an IPv4 address, or an IPv6 address's /64."""

from __future__ import annotations

import pytest

from core.redis.auth_failures import client_group


@pytest.mark.parametrize(
    ("address", "group"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.9", "198.51.100.9"),
        ("/run/jobgate.sock", "/run/jobgate.sock"),
        (None, "unknown"),
    ],
)
def test_failures_are_counted_by_ipv4_address_and_ipv6_slash_64(address: str | None, group: str) -> None:
    assert client_group(address) == group
