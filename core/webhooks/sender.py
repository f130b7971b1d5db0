"""One webhook delivery attempt over HTTP, to an address the SSRF guard checked.

The guard sits where the TCP connection is made: a custom httpcore network backend resolves
the host once, refuses it if any address is forbidden, and connects to one of those very
addresses. The request still names the host, so the `Host` header, TLS SNI and certificate
verification are for the hostname, and pooled connections are keyed by hostname as usual.
httpx has no public hook for this (it builds its httpcore pool itself), so the sender drives
httpcore, the HTTP engine under httpx, directly.

An attempt has one time budget, `timeout_s`: every socket operation (connect, TLS handshake,
each read and write) gets only what is left of it, so a server that trickles bytes cannot hold
a worker thread longer. The DNS lookup (which cannot be interrupted) runs in a thread of its
own; one that outlasts the budget ends the attempt as a connect timeout. Lookups alive at once
are capped per process, and per tenant within that (`core/webhooks/fairness.py`), so one
tenant's hanging name servers cannot take every slot. Redirects are never
followed; only a 2xx is a success. `send` returns a `DeliveryOutcome` for every network problem and never logs
header values: they carry the signature.
"""

from __future__ import annotations

import email.utils
import re
import ssl
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import certifi
import httpcore
import structlog

from core.errors import ForbiddenDestination, InvalidRequest, UnresolvableDestination
from core.webhooks.fairness import TenantShares
from core.webhooks.ssrf import IPAddress, ParsedUrl, Resolver, UrlPolicy, resolve_host

log = structlog.get_logger("jobgate.webhooks")

SNIPPET_BYTES = 1024
USER_AGENT = "jobgate-webhooks/1"
# DNS lookups alive at once per sender (one per worker process), hung ones included, and of
# those, by default, one tenant's (`JOBGATE_WEBHOOK_DNS_LOOKUPS_PER_TENANT`).
MAX_DNS_LOOKUPS = 32
DNS_LOOKUPS_PER_TENANT = 8
# Headers the sender owns: the caller's copies could contradict the URL or the body.
_SENDER_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_DELAY_SECONDS = re.compile(r"\d+")

# The deadline of the attempt running in this thread. Sync httpcore does all of a request's
# I/O in the calling thread, and a pooled stream serves requests of several attempts, so the
# deadline is read from the attempt's context rather than stored on the stream.
_attempt_deadline: ContextVar[float | None] = ContextVar("jobgate_webhook_attempt_deadline", default=None)
# The tenant whose attempt runs in this thread, for its share of the DNS lookup slots.
_attempt_tenant: ContextVar[str | None] = ContextVar("jobgate_webhook_attempt_tenant", default=None)


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """What one attempt did; `error` is None exactly when `success` is True."""

    success: bool
    status_code: int | None
    latency_ms: int
    error: str | None
    response_snippet: str | None = None
    retry_after_s: float | None = None
    gone: bool = False


def retry_after_s(value: str | None, now_s: float) -> float | None:
    """Seconds to wait from a `Retry-After` value (delay-seconds or an HTTP date), None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_s)


def _budget(timeout: float | None, expired: type[Exception]) -> float | None:
    """`timeout` cut to what is left of the current attempt; `expired` is raised when nothing is."""
    deadline = _attempt_deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the attempt's time budget is spent")
    return left if timeout is None else min(timeout, left)


class _BudgetedStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _budget(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _budget(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(ssl_context, server_hostname, _budget(timeout, httpcore.ConnectTimeout))
        return _BudgetedStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def _bounded(
    resolver: Resolver, timeout: float | None, slots: TenantShares, tenant_id: str | None
) -> Resolver:
    """`resolver`, waited for at most `timeout` s. getaddrinfo cannot be interrupted and whoever
    owns a webhook's domain owns its DNS, so the lookup runs in a daemon thread of its own and
    the attempt stops waiting for it at the budget (a connect timeout); the thread ends alone.
    `slots` caps the lookups alive at once, those left behind included, in all and for
    `tenant_id`: with none free, the attempt fails at once rather than start one more thread."""

    def resolve(host: str, port: int) -> Sequence[IPAddress]:
        if not slots.try_take(tenant_id):
            whose = (
                "" if tenant_id is None or slots.held(tenant_id) < slots.per_tenant else " for this tenant"
            )
            raise httpcore.ConnectTimeout(f"too many dns lookups in flight{whose}; {host} not looked up")
        answer: Future[Sequence[IPAddress]] = Future()

        def look_up() -> None:
            try:
                answer.set_result(resolver(host, port))
            except BaseException as exc:  # handed to the waiting attempt, which raises it
                answer.set_exception(exc)
            finally:
                slots.give_back(tenant_id)

        threading.Thread(target=look_up, name="webhook-dns", daemon=True).start()
        try:
            return answer.result(timeout=timeout)
        except FutureTimeout:
            raise httpcore.ConnectTimeout(f"dns lookup for {host} outlasted the attempt's budget") from None

    return resolve


class _CheckedBackend(httpcore.NetworkBackend):
    """Every TCP connection of the pool: resolve once, check every address, connect to a checked one."""

    def __init__(self, policy: UrlPolicy, resolver: Resolver, lookups_per_tenant: int) -> None:
        self._policy = policy
        self._resolver = resolver
        self._lookups = TenantShares(MAX_DNS_LOOKUPS, lookups_per_tenant)
        self._tcp = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        budget = _budget(timeout, httpcore.ConnectTimeout)
        lookup = _bounded(self._resolver, budget, self._lookups, _attempt_tenant.get())
        *fallbacks, last = self._policy.resolve_and_check(host, port, lookup)
        for address in fallbacks:
            try:
                return self._connect(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError:
                # As socket.create_connection does: an unreachable address falls through to the
                # next one, and the last one's error is the one reported.
                continue
        return self._connect(last, port, timeout, local_address, socket_options)

    def _connect(
        self,
        address: IPAddress,
        port: int,
        timeout: float | None,
        local_address: str | None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None,
    ) -> httpcore.NetworkStream:
        stream = self._tcp.connect_tcp(
            str(address),
            port,
            timeout=_budget(timeout, httpcore.ConnectTimeout),
            local_address=local_address,
            socket_options=socket_options,
        )
        return _BudgetedStream(stream)


_TIMEOUT_PHASES: tuple[tuple[type[httpcore.TimeoutException], str], ...] = (
    (httpcore.ConnectTimeout, "connect"),
    (httpcore.WriteTimeout, "write"),
    (httpcore.ReadTimeout, "read"),
    (httpcore.PoolTimeout, "waiting for a free connection"),
)


def _describe_timeout(exc: httpcore.TimeoutException) -> str:
    phase = next((name for kind, name in _TIMEOUT_PHASES if isinstance(exc, kind)), None)
    return "timeout" if phase is None else f"timeout ({phase})"


def _describe_network_error(exc: Exception) -> str:
    # httpcore wraps the OSError as the first argument; its pool re-raises `from None`, so
    # `__cause__` is gone by the time the exception gets here.
    cause = next((arg for arg in exc.args if isinstance(arg, BaseException)), exc.__cause__)
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, ConnectionResetError):
        return "connection reset"
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"tls certificate rejected: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return f"tls error: {cause.reason or cause}"
    if isinstance(exc, httpcore.ProtocolError):
        return f"protocol error: {exc}"
    return f"connection error: {str(exc) or type(exc).__name__}"


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in headers if k.lower() == name), None)


def _read_snippet(response: httpcore.Response) -> str | None:
    """Up to SNIPPET_BYTES of the body, for the attempt log; the status already decided the outcome."""
    collected = bytearray()
    try:
        for chunk in response.iter_stream():
            collected += chunk
            if len(collected) >= SNIPPET_BYTES:
                break
    except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
        # The receiver has answered with its status; a body cut short only shortens the log.
        log.debug("webhook_snippet_incomplete", error=type(exc).__name__)
    return bytes(collected[:SNIPPET_BYTES]).decode("utf-8", errors="replace") or None


class WebhookSender:
    """Sends webhook requests through one connection pool; thread-safe, one per worker process."""

    def __init__(
        self,
        policy: UrlPolicy,
        *,
        timeout_s: float = 10,
        max_connections: int = 100,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        dns_lookups_per_tenant: int = DNS_LOOKUPS_PER_TENANT,
    ) -> None:
        self._policy = policy
        self._timeout_s = timeout_s
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context or ssl.create_default_context(cafile=certifi.where()),
            max_connections=max_connections,
            max_keepalive_connections=min(max_connections, 20),
            # Below the 5 s idle timeout of common servers (uvicorn, Node), so we drop an idle
            # connection before the receiver does rather than race its close with a request.
            keepalive_expiry=4.0,
            network_backend=_CheckedBackend(policy, resolver or resolve_host, dns_lookups_per_tenant),
        )
        self._timeouts = {phase: timeout_s for phase in ("connect", "read", "write", "pool")}

    def __enter__(self) -> WebhookSender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()

    def send(
        self, url: str, body: bytes, headers: Mapping[str, str], *, tenant_id: str | None = None
    ) -> DeliveryOutcome:
        """POST `body` to `url` once, for `tenant_id` (whose share of the DNS lookups it uses);
        the outcome of the attempt, whatever the network did."""
        started = time.monotonic()
        deadline = _attempt_deadline.set(started + self._timeout_s)
        tenant = _attempt_tenant.set(tenant_id)
        try:
            outcome = self._attempt(url, body, headers, started)
        finally:
            _attempt_tenant.reset(tenant)
            _attempt_deadline.reset(deadline)
        (log.info if outcome.success else log.warning)(
            "webhook_attempt",
            webhook_id=headers.get("webhook-id"),
            url=_loggable(url),
            success=outcome.success,
            status_code=outcome.status_code,
            latency_ms=outcome.latency_ms,
            error=outcome.error,
            # Not the response snippet: a receiver that echoes the request would put the job's
            # answer in the log. It is kept in the delivery's SQL attempt log instead.
        )
        return outcome

    def _attempt(self, url: str, body: bytes, headers: Mapping[str, str], started: float) -> DeliveryOutcome:
        def failed(error: str) -> DeliveryOutcome:
            return DeliveryOutcome(False, None, _elapsed_ms(started), error)

        try:
            target = self._policy.check_url_syntax(url)
            with self._pool.stream(
                "POST",
                httpcore.URL(scheme=target.scheme, host=target.host, port=target.port, target=target.target),
                headers=_request_headers(target, headers),
                content=body,
                extensions={"timeout": self._timeouts},
            ) as response:
                status = response.status
                response_headers = response.headers
                snippet = _read_snippet(response)
        except InvalidRequest as exc:
            return failed(f"invalid url: {exc.message}")
        except ForbiddenDestination as exc:
            # The tenant sees why, not the address: an internal name's DNS answer is not theirs
            # to learn. The operator's log has it.
            log.warning(
                "webhook_destination_refused", url=_loggable(url), address=exc.address, reason=exc.reason
            )
            return failed(f"forbidden destination: {exc.host} resolves to a {exc.reason} address")
        except UnresolvableDestination as exc:
            return failed(str(exc))
        except httpcore.TimeoutException as exc:
            return failed(_describe_timeout(exc))
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            return failed(_describe_network_error(exc))
        except Exception as exc:
            # The sender is a process edge (STYLE.md 15): a bug here must fail the attempt, not the job.
            log.exception("webhook_attempt_crashed", url=_loggable(url))
            return failed(f"internal error: {type(exc).__name__}")

        success = 200 <= status < 300
        if success:
            error = None
        elif 300 <= status < 400:
            error = f"redirect not followed ({status})"
        else:
            error = f"http status {status}"
        return DeliveryOutcome(
            success=success,
            status_code=status,
            latency_ms=_elapsed_ms(started),
            error=error,
            response_snippet=snippet,
            retry_after_s=retry_after_s(_header(response_headers, b"retry-after"), time.time()),
            gone=status == 410,
        )


def _request_headers(target: ParsedUrl, headers: Mapping[str, str]) -> list[tuple[str, str]]:
    merged = {"user-agent": USER_AGENT, "accept-encoding": "identity"}
    merged.update((k.lower(), v) for k, v in headers.items() if k.lower() not in _SENDER_HEADERS)
    return [("host", target.host_header), *merged.items()]


def _loggable(url: str) -> str:
    """The URL without credentials, query or fragment: receivers put tokens there."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
