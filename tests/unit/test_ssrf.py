"""The SSRF guard: which webhook URLs are refused at submission and which addresses at delivery."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import ip_address

import pytest

from core.errors import ForbiddenDestination, InvalidRequest, UnresolvableDestination
from core.settings import Settings
from core.webhooks.ssrf import IPAddress, Resolver, UrlPolicy, forbidden_reason

STRICT = UrlPolicy()
DEVELOPMENT = UrlPolicy(allow_private=True, allow_http=True)

FORBIDDEN_LITERAL_URLS = [
    "https://127.0.0.1/hook",
    "https://127.8.9.10/hook",
    "https://[::1]/hook",
    "https://10.0.0.1/hook",
    "https://172.16.0.1/hook",
    "https://172.31.255.254/hook",
    "https://192.168.1.1/hook",
    "https://100.64.0.1/hook",
    "https://169.254.1.1/hook",
    "https://[fe80::1]/hook",
    "https://[fd00::1]/hook",
    "https://[fc00::1]/hook",
    "https://0.0.0.0/hook",
    "https://[::]/hook",
    "https://224.0.0.1/hook",
    "https://[ff02::1]/hook",
    "https://255.255.255.255/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[::ffff:10.0.0.1]/hook",
    "https://[64:ff9b::7f00:1]/hook",
    "https://[2002:c0a8:101::]/hook",
    "https://2130706433/hook",
    "https://0x7f.1/hook",
    "https://0177.1/hook",
]

METADATA_URLS = [
    "https://169.254.169.254/latest/meta-data/",
    "https://[fd00:ec2::254]/latest/meta-data/",
    "https://[::ffff:169.254.169.254]/",
    "http://metadata.google.internal/computeMetadata/v1/",
]


def refusal(policy: UrlPolicy, url: str) -> str:
    with pytest.raises(InvalidRequest) as info:
        policy.check_url_syntax(url)
    assert info.value.param == "webhook_url"
    assert info.value.status_code == 400
    return info.value.message


@pytest.mark.parametrize("url", FORBIDDEN_LITERAL_URLS)
def test_a_url_whose_host_is_a_non_public_ip_literal_is_refused_at_submission(url: str) -> None:
    assert "not a public internet address" in refusal(STRICT, url)


@pytest.mark.parametrize("url", FORBIDDEN_LITERAL_URLS)
def test_allowing_private_addresses_opens_every_non_public_literal(url: str) -> None:
    assert DEVELOPMENT.check_url_syntax(url).address is not None


@pytest.mark.parametrize("url", METADATA_URLS)
def test_cloud_metadata_endpoints_are_refused_even_when_private_addresses_are_allowed(url: str) -> None:
    refusal(STRICT, url)
    refusal(DEVELOPMENT, url)


@pytest.mark.parametrize("host", ["localhost", "api.localhost", "LOCALHOST."])
def test_localhost_names_are_refused_unless_private_addresses_are_allowed(host: str) -> None:
    assert "use a public host name" in refusal(STRICT, f"https://{host}/hook")
    assert DEVELOPMENT.check_url_syntax(f"https://{host}/hook").host == host.lower().rstrip(".")


def test_plain_http_is_refused_unless_allowed() -> None:
    assert "must be an https:// URL" in refusal(STRICT, "http://example.com/hook")
    assert DEVELOPMENT.check_url_syntax("http://example.com/hook").scheme == "http"


@pytest.mark.parametrize(
    "url", ["ftp://example.com/hook", "file:///etc/passwd", "gopher://example.com/", "/hook"]
)
def test_schemes_other_than_http_and_https_are_refused(url: str) -> None:
    refusal(DEVELOPMENT, url)


@pytest.mark.parametrize(
    "url",
    ["https://user:secret@example.com/hook", "https://user@example.com/", "https://example.com\\@10.0.0.1/"],
)
def test_credentials_in_the_url_are_refused(url: str) -> None:
    assert "user name or password" in refusal(DEVELOPMENT, url)


@pytest.mark.parametrize(
    ("url", "fix"),
    [
        ("https:///hook", "no host name"),
        ("https://0177.0.0.1/hook", "not a valid URL"),
        ("https://example.com:0/", "port"),
        ("https://example.com:70000/", "port"),
        ("https://exa mple.com/", "invalid host name"),
        ("https://-bad-.example.com/", "invalid host name"),
        ("https://example.com/" + "a" * 2100, "at most 2048 characters"),
    ],
)
def test_a_malformed_url_is_refused_with_a_message_saying_what_to_fix(url: str, fix: str) -> None:
    assert fix in refusal(DEVELOPMENT, url)


def test_a_public_https_url_is_parsed_into_what_the_sender_connects_with() -> None:
    parsed = STRICT.check_url_syntax("https://Hooks.Example.com:8443/in/jobs?token=abc#frag")
    assert parsed.scheme == "https"
    assert parsed.host == "hooks.example.com"
    assert parsed.port == 8443
    assert parsed.target == "/in/jobs?token=abc"
    assert parsed.address is None
    assert parsed.host_header == "hooks.example.com:8443"
    assert parsed.url == "https://hooks.example.com:8443/in/jobs?token=abc"


def test_an_international_host_name_is_checked_and_sent_in_its_ascii_form() -> None:
    parsed = STRICT.check_url_syntax("https://bücher.example/hook")
    assert parsed.host == "xn--bcher-kva.example"
    assert parsed.host_header == "xn--bcher-kva.example"


def test_public_ip_literals_are_accepted_and_ipv6_ones_are_bracketed_in_the_host_header() -> None:
    assert STRICT.check_url_syntax("https://93.184.215.14/").host_header == "93.184.215.14"
    parsed = STRICT.check_url_syntax("https://[2606:4700::1111]:8443/")
    assert parsed.host == "2606:4700::1111"
    assert parsed.host_header == "[2606:4700::1111]:8443"


def test_one_setting_opens_both_plain_http_and_private_addresses() -> None:
    policy = UrlPolicy.from_settings(Settings(webhook_allow_private=True))
    assert policy.check_url_syntax("http://127.0.0.1:9000/hook").port == 9000
    assert UrlPolicy.from_settings(Settings()).allow_private is False


# --- At delivery: what DNS answers ------------------------------------------------------------


def answering(*addresses: str) -> Resolver:
    def resolver(host: str, port: int) -> Sequence[IPAddress]:
        return [ip_address(a) for a in addresses]

    return resolver


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.169.254",
        "169.254.10.10",
        "fe80::1",
        "fd00::1",
        "fd00:ec2::254",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "::ffff:127.0.0.1",
        "::ffff:192.168.1.1",
        "::127.0.0.1",
        "192.0.2.1",
        "192.0.0.8",
        "fec0::1",
        "2001::1",
        "2001:db8::1",
    ],
)
def test_a_host_resolving_to_a_forbidden_address_is_refused_at_delivery(address: str) -> None:
    with pytest.raises(ForbiddenDestination) as info:
        STRICT.resolve_and_check("evil.test", 443, answering(address))
    assert info.value.address == str(ip_address(address))
    assert str(info.value).startswith(f"forbidden destination {ip_address(address)} (")
    assert str(info.value).endswith("for evil.test")


def test_one_forbidden_address_among_public_ones_refuses_the_host() -> None:
    with pytest.raises(ForbiddenDestination, match=r"10\.0\.0\.1"):
        STRICT.resolve_and_check("evil.test", 443, answering("93.184.215.14", "10.0.0.1"))


def test_a_host_resolving_to_public_addresses_yields_exactly_those_addresses_once() -> None:
    calls: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> Sequence[IPAddress]:
        calls.append((host, port))
        return [ip_address("93.184.215.14"), ip_address("2606:4700::1111"), ip_address("93.184.215.14")]

    addresses = STRICT.resolve_and_check("hooks.example.com", 443, resolver)
    assert addresses == [ip_address("93.184.215.14"), ip_address("2606:4700::1111")]
    assert calls == [("hooks.example.com", 443)]


def test_the_system_resolver_sees_that_localhost_is_loopback() -> None:
    with pytest.raises(ForbiddenDestination, match="loopback"):
        STRICT.resolve_and_check("localhost", 443)


def test_a_host_without_addresses_is_unresolvable() -> None:
    with pytest.raises(UnresolvableDestination, match=r"evil\.test"):
        STRICT.resolve_and_check("evil.test", 443, answering())
    with pytest.raises(UnresolvableDestination):
        STRICT.resolve_and_check("no-such-host.invalid", 443)


def test_allowed_networks_open_only_themselves() -> None:
    policy = UrlPolicy(allow_networks=["127.0.0.0/8", "fd12::/16"])
    assert policy.resolve_and_check("svc.test", 80, answering("127.0.0.5", "fd12::1")) == [
        ip_address("127.0.0.5"),
        ip_address("fd12::1"),
    ]
    with pytest.raises(ForbiddenDestination):
        policy.resolve_and_check("svc.test", 80, answering("10.0.0.1"))


def test_allowing_private_addresses_still_refuses_the_metadata_service_at_delivery() -> None:
    assert DEVELOPMENT.resolve_and_check("svc.test", 80, answering("10.1.2.3")) == [ip_address("10.1.2.3")]
    with pytest.raises(ForbiddenDestination, match="cloud metadata"):
        DEVELOPMENT.resolve_and_check("svc.test", 80, answering("169.254.169.254"))


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_are_allowed_in_any_of_their_forms(address: str) -> None:
    assert forbidden_reason(ip_address(address)) is None
