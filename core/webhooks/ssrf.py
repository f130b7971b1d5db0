"""Which URLs and addresses a webhook may reach: the SSRF guard.

Two checks, at two moments. At submission `UrlPolicy.check_url_syntax` refuses what is plainly
bad (not https, credentials in the URL, a forbidden IP literal, `localhost`) with a 400. At
delivery `UrlPolicy.resolve_and_check` resolves the host once and refuses it if any address is
forbidden; the sender then connects to one of exactly those addresses, so DNS cannot answer
differently between the check and the connection (DNS rebinding).

Forbidden unless the policy allows private addresses: loopback, RFC 1918, CGNAT, IPv6 ULA,
link-local, multicast, unspecified, reserved and other non-global ranges, also when written as
IPv4 inside IPv6 (mapped, NAT64, 6to4). Cloud metadata endpoints stay forbidden even then: a
development setting left on in a cloud VM must not hand out its credentials. `allow_networks`
opens chosen networks only (tests, a receiver on a private network).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TYPE_CHECKING

import httpx

from core.errors import ForbiddenDestination, InvalidRequest, UnresolvableDestination

if TYPE_CHECKING:
    from core.settings import Settings

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
# (host, port) -> every address the host resolves to; injectable so tests need no DNS.
Resolver = Callable[[str, int], Sequence[IPAddress]]

PARAM = "webhook_url"
MAX_URL_CHARS = 2048
DEFAULT_PORTS = {"https": 443, "http": 80}

# Checked before Python's `is_private`/`is_global`, whose tables change between patch releases
# (3.11.10 and 3.12.4 rewrote them); the reason is what the refusal message says.
_FORBIDDEN_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), reason)
    for cidr, reason in (
        ("0.0.0.0/8", "unspecified"),  # Linux connects 0.0.0.0 to the local host
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.168.0.0/16", "private"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # includes the broadcast address
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "unique local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)

# Refused even when private addresses are allowed: AWS/GCP/Azure/OpenStack, AWS over IPv6,
# ECS task credentials, Alibaba Cloud.
_METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)
_METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})

_NAT64 = IPv6Network("64:ff9b::/96")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_LEGACY_IPV4 = re.compile(r"[0-9a-fx.]+")


@dataclass(frozen=True, slots=True)
class ParsedUrl:
    """A webhook URL that passed the syntax check, in the form the sender connects with."""

    url: str  # normalised, fragment dropped
    scheme: str  # "https" or "http"
    host: str  # ASCII (IDNA), lower case, no brackets, no trailing dot
    port: int  # explicit or the scheme's default
    target: str  # path and query, as sent in the request line
    address: IPAddress | None  # set when the host is an IP literal

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if isinstance(self.address, IPv6Address) else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def _embedded_ipv4(address: IPAddress) -> IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64, 6to4), where a connection to it lands."""
    if isinstance(address, IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def forbidden_reason(address: IPAddress) -> str | None:
    """Why a webhook may not reach `address` when private addresses are not allowed, or None."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        reason = forbidden_reason(embedded)
        return None if reason is None else f"{reason}, inside IPv6"
    for network, reason in _FORBIDDEN_NETWORKS:
        if address in network:
            return reason
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "not globally routable"
    return None


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every TCP address of `host` from the system resolver, deduplicated, in its order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise UnresolvableDestination(host, str(exc)) from exc
    addresses: dict[IPAddress, None] = {}
    for family, _type, _proto, _canonname, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            # An IPv6 link-local answer may carry a zone ("fe80::1%eth0"); the zone is not the address.
            addresses[ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])] = None
    return list(addresses)


def _legacy_ipv4(host: str) -> IPv4Address | None:
    """`2130706433`, `0x7f.1`, `0177.0.0.1`: forms `getaddrinfo` reads as IPv4 (inet_aton rules)."""
    if not _LEGACY_IPV4.fullmatch(host) or not any(c.isdigit() for c in host):
        return None
    try:
        return IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _is_valid_hostname(host: str) -> bool:
    return len(host) <= 253 and all(_LABEL.fullmatch(label) for label in host.split("."))


class UrlPolicy:
    """Where webhooks may go: built once per process from settings and shared by API and workers."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        allow_http: bool = False,
        allow_networks: Iterable[str | IPNetwork] = (),
    ) -> None:
        self.allow_private = allow_private
        self.allow_http = allow_http
        self.allow_networks: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in allow_networks)

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlPolicy:
        # One development switch opens both, as CONTRACT.md's WEBHOOK_ALLOW_PRIVATE says.
        return cls(allow_private=settings.webhook_allow_private, allow_http=settings.webhook_allow_private)

    def refusal(self, address: IPAddress) -> str | None:
        """Why this policy refuses `address`, or None when a webhook may connect to it."""
        forms = [address] + [a for a in [_embedded_ipv4(address)] if a is not None]
        if any(form in network for form in forms for network in self.allow_networks):
            return None
        if any(form in _METADATA_ADDRESSES for form in forms):
            return "cloud metadata service"
        if self.allow_private:
            return None
        return forbidden_reason(address)

    def check_url_syntax(self, url: str) -> ParsedUrl:
        """The parsed URL, or `InvalidRequest` (param `webhook_url`) with a message saying what to fix."""
        if len(url) > MAX_URL_CHARS:
            raise InvalidRequest(f"webhook_url must be at most {MAX_URL_CHARS} characters long", param=PARAM)
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise InvalidRequest(f"webhook_url is not a valid URL: {exc}", param=PARAM) from exc
        scheme = parsed.scheme
        if scheme != "https" and not (scheme == "http" and self.allow_http):
            wanted = "an http:// or https://" if self.allow_http else "an https://"
            raise InvalidRequest(f"webhook_url must be {wanted} URL, not {scheme or 'relative'}", param=PARAM)
        if parsed.userinfo:
            raise InvalidRequest("webhook_url must not contain a user name or password (user@)", param=PARAM)
        host = parsed.raw_host.decode("ascii").rstrip(".")
        if not host:
            raise InvalidRequest("webhook_url has no host name", param=PARAM)
        port = parsed.port if parsed.port is not None else DEFAULT_PORTS[scheme]
        if not 1 <= port <= 65535:
            raise InvalidRequest("webhook_url has a port outside 1-65535", param=PARAM)

        address = self._literal_address(host)
        if address is not None:
            reason = self.refusal(address)
            if reason is not None:
                raise InvalidRequest(
                    f"webhook_url points to {host}, which is not a public internet address ({reason}); "
                    "use a URL whose host is reachable from the internet",
                    param=PARAM,
                )
        else:
            if not _is_valid_hostname(host):
                raise InvalidRequest(f"webhook_url has an invalid host name: {host!r}", param=PARAM)
            if host in _METADATA_HOSTS or (
                not self.allow_private and (host == "localhost" or host.endswith(".localhost"))
            ):
                raise InvalidRequest(
                    f"webhook_url host {host} is not reachable from the internet; use a public host name",
                    param=PARAM,
                )
        return ParsedUrl(
            url=str(parsed.copy_with(fragment=None)),
            scheme=scheme,
            host=str(address) if address is not None else host,
            port=port,
            target=parsed.raw_path.decode("ascii"),
            address=address,
        )

    def resolve_and_check(self, host: str, port: int, resolver: Resolver = resolve_host) -> list[IPAddress]:
        """Resolve `host` once; every address it returns, or `ForbiddenDestination` if any is refused.

        One bad answer refuses them all: an attacker's DNS could otherwise mix a private
        address in and win whenever the client happens to try that one.
        """
        addresses = list(dict.fromkeys(resolver(host, port)))
        if not addresses:
            raise UnresolvableDestination(host, "no addresses")
        for address in addresses:
            reason = self.refusal(address)
            if reason is not None:
                raise ForbiddenDestination(host, str(address), reason)
        return addresses

    @staticmethod
    def _literal_address(host: str) -> IPAddress | None:
        try:
            return ipaddress.ip_address(host)
        except ValueError:
            return _legacy_ipv4(host)
