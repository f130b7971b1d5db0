"""The webhook sender against real local HTTP(S) servers: outcomes, timeouts and the SSRF guard.

The receivers listen on 127.0.0.1, so most tests allow private addresses; the guard's tests
take that away and show that nothing reaches the receiver, not even a TCP connection.
"""

from __future__ import annotations

import shlex
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import structlog
from standardwebhooks import Webhook

from core.webhooks import sender as sender_module
from core.webhooks.sender import SNIPPET_BYTES, WebhookSender
from core.webhooks.signing import new_secret, webhook_headers
from core.webhooks.ssrf import IPAddress, Resolver, UrlPolicy

DEVELOPMENT = UrlPolicy(allow_private=True, allow_http=True)
BODY = b'{"type": "job.succeeded", "data": {"id": "job_1"}}'
TIMEOUT_S = 1.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int
    scheme: str
    requests: list[Received] = field(default_factory=list)
    connections: list[Any] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    receiver: Receiver

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests assert on what arrived instead."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.receiver.requests.append(
            Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        if self.path == "/hang":
            self.receiver.release.wait(10)
        elif self.path == "/trickle":
            self._trickle_headers()
        else:
            self._answer(*_ANSWERS[self.path.split("?")[0]])

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _trickle_headers(self) -> None:
        # One header line every 0.2 s: each socket read succeeds well within the read timeout.
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            while not self.receiver.release.wait(0.2):
                self.wfile.write(b"X-Slow: 1\r\n")
                self.wfile.flush()
        except OSError:
            self.close_connection = True


_ANSWERS: dict[str, tuple[int, dict[str, str], bytes]] = {
    "/ok": (200, {}, b"thanks"),
    "/accepted": (202, {}, b""),
    "/fail": (500, {}, b"boom"),
    "/redirect": (302, {"Location": "/ok"}, b""),
    "/gone": (410, {}, b"endpoint removed"),
    "/busy": (503, {"Retry-After": "7"}, b"later"),
    "/big": (200, {}, b"x" * 10_000),
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[_Handler], receiver: Receiver) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.receiver = receiver

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.receiver.connections.append(client_address)
        return True


@contextmanager
def serving(tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    receiver = Receiver(port=0, scheme="https" if tls else "http")
    handler = type("Handler", (_Handler,), {"receiver": receiver})
    server = _Server(handler, receiver)
    if tls is not None:
        tls.sni_callback = lambda _sock, name, _ctx: receiver.server_names.append(name)
        server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving() as running:
        yield running


@pytest.fixture
def sender() -> Iterator[WebhookSender]:
    with WebhookSender(DEVELOPMENT, timeout_s=TIMEOUT_S) as running:
        yield running


def answering(host: str, *addresses: str) -> Resolver:
    def resolver(name: str, port: int) -> Sequence[IPAddress]:
        assert name == host
        return [ip_address(a) for a in addresses]

    return resolver


def signed(body: bytes = BODY, secret: str | None = None) -> dict[str, str]:
    return webhook_headers([secret or new_secret()], "msg_test1", int(time.time()), body)


# --- Outcomes ---------------------------------------------------------------------------------


def test_a_2xx_answer_is_a_success_and_the_receiver_verifies_the_signature(
    receiver: Receiver, sender: WebhookSender
) -> None:
    secret = new_secret()
    outcome = sender.send(receiver.url("/ok"), BODY, signed(secret=secret))

    assert (outcome.success, outcome.status_code, outcome.error) == (True, 200, None)
    assert outcome.response_snippet == "thanks"
    assert outcome.latency_ms < TIMEOUT_S * 1000
    [request] = receiver.requests
    assert request.body == BODY
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert request.headers["content-type"] == "application/json"
    assert Webhook(secret).verify(request.body, request.headers)["data"]["id"] == "job_1"


def test_any_2xx_is_a_success(receiver: Receiver, sender: WebhookSender) -> None:
    outcome = sender.send(receiver.url("/accepted"), BODY, signed())
    assert (outcome.success, outcome.status_code, outcome.response_snippet) == (True, 202, None)


def test_a_5xx_answer_is_a_failure_with_its_status_and_snippet(
    receiver: Receiver, sender: WebhookSender
) -> None:
    outcome = sender.send(receiver.url("/fail"), BODY, signed())
    assert (outcome.success, outcome.status_code, outcome.error) == (False, 500, "http status 500")
    assert outcome.response_snippet == "boom"
    assert outcome.gone is False


def test_a_redirect_is_a_failure_and_is_not_followed(receiver: Receiver, sender: WebhookSender) -> None:
    outcome = sender.send(receiver.url("/redirect"), BODY, signed())
    assert (outcome.success, outcome.status_code, outcome.error) == (
        False,
        302,
        "redirect not followed (302)",
    )
    assert [r.path for r in receiver.requests] == ["/redirect"]


def test_410_marks_the_endpoint_gone(receiver: Receiver, sender: WebhookSender) -> None:
    outcome = sender.send(receiver.url("/gone"), BODY, signed())
    assert (outcome.success, outcome.status_code, outcome.gone) == (False, 410, True)


def test_retry_after_is_reported_in_seconds(receiver: Receiver, sender: WebhookSender) -> None:
    outcome = sender.send(receiver.url("/busy"), BODY, signed())
    assert (outcome.status_code, outcome.retry_after_s) == (503, 7.0)


def test_only_the_first_kilobyte_of_the_answer_is_kept(receiver: Receiver, sender: WebhookSender) -> None:
    outcome = sender.send(receiver.url("/big"), BODY, signed())
    assert outcome.success
    assert outcome.response_snippet == "x" * SNIPPET_BYTES


def test_attempts_to_one_host_reuse_a_checked_connection(receiver: Receiver) -> None:
    lookups: list[str] = []

    def resolver(host: str, port: int) -> Sequence[IPAddress]:
        lookups.append(host)
        return [ip_address("127.0.0.1")]

    with WebhookSender(DEVELOPMENT, timeout_s=TIMEOUT_S, resolver=resolver) as pooled:
        outcomes = [pooled.send(receiver.url("/ok", host="hooks.test"), BODY, signed()) for _ in range(3)]

    assert all(outcome.success for outcome in outcomes)
    assert len(receiver.requests) == 3
    assert len(receiver.connections) == 1
    assert lookups == ["hooks.test"]


def test_a_server_that_never_answers_times_out_within_the_budget(
    receiver: Receiver, sender: WebhookSender
) -> None:
    started = time.monotonic()
    outcome = sender.send(receiver.url("/hang"), BODY, signed())
    assert time.monotonic() - started < TIMEOUT_S + 1
    assert (outcome.success, outcome.status_code, outcome.error) == (False, None, "timeout (read)")


def test_a_server_trickling_its_answer_cannot_hold_the_attempt_past_the_budget(
    receiver: Receiver, sender: WebhookSender
) -> None:
    started = time.monotonic()
    outcome = sender.send(receiver.url("/trickle"), BODY, signed())
    assert time.monotonic() - started < TIMEOUT_S + 1
    assert (outcome.success, outcome.error) == (False, "timeout (read)")


def test_a_closed_port_is_a_connection_error(sender: WebhookSender) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outcome = sender.send(f"http://127.0.0.1:{port}/ok", BODY, signed())
    assert (outcome.success, outcome.status_code, outcome.error) == (False, None, "connection refused")


def test_a_dns_lookup_that_hangs_ends_the_attempt_within_its_budget(receiver: Receiver) -> None:
    release = threading.Event()

    def hanging(name: str, port: int) -> Sequence[IPAddress]:
        release.wait(30)  # as a resolver stuck on a domain owner's slow name server
        return [ip_address("127.0.0.1")]

    policy = UrlPolicy(allow_private=True, allow_http=True)
    try:
        with WebhookSender(policy, timeout_s=TIMEOUT_S, resolver=hanging) as slow_dns:
            started = time.monotonic()
            outcome = slow_dns.send(receiver.url("/ok", host="slow-dns.test"), BODY, signed())
            elapsed_s = time.monotonic() - started
    finally:
        release.set()

    assert (outcome.success, outcome.error) == (False, "timeout (connect)")
    assert elapsed_s < TIMEOUT_S + 1
    assert receiver.requests == []


def test_hung_dns_lookups_are_capped_and_later_attempts_fail_at_once(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender_module, "MAX_DNS_LOOKUPS", 2)
    release = threading.Event()

    def hanging(name: str, port: int) -> Sequence[IPAddress]:
        release.wait(30)
        return [ip_address("127.0.0.1")]

    policy = UrlPolicy(allow_private=True, allow_http=True)
    try:
        with WebhookSender(policy, timeout_s=0.2, resolver=hanging) as slow_dns:
            for n in range(2):  # each leaves its lookup thread behind
                slow_dns.send(receiver.url("/ok", host=f"slow-{n}.test"), BODY, signed())
            threads_before = threading.active_count()
            started = time.monotonic()
            third = slow_dns.send(receiver.url("/ok", host="slow-2.test"), BODY, signed())
            elapsed_s = time.monotonic() - started
            threads_after = threading.active_count()
    finally:
        release.set()

    assert (third.success, third.error) == (False, "timeout (connect)")
    assert elapsed_s < 0.2  # refused without waiting out its budget
    assert threads_after == threads_before  # and without a third lookup thread


def test_a_host_that_does_not_resolve_is_a_failure(sender: WebhookSender) -> None:
    outcome = sender.send("http://no-such-host.invalid/ok", BODY, signed())
    assert outcome.success is False
    assert outcome.error is not None and outcome.error.startswith(
        "dns lookup failed for no-such-host.invalid"
    )


def test_attempts_are_logged_without_signature_query_or_response_body(
    receiver: Receiver, sender: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = signed()
    with structlog.testing.capture_logs() as logs:
        # A fresh logger: the module's own may be cached, by an earlier test, on a configuration
        # that `capture_logs` cannot reach (`cache_logger_on_first_use`).
        monkeypatch.setattr(sender_module, "log", structlog.get_logger("jobgate.webhooks"))
        sender.send(receiver.url("/fail") + "?token=s3cret", BODY, headers)
    [entry] = logs
    assert entry["event"] == "webhook_attempt"
    assert (entry["status_code"], entry["error"]) == (500, "http status 500")
    assert "boom" not in repr(logs)  # what the receiver answered stays in SQL, not in logs
    assert entry["url"] == receiver.url("/fail")
    assert headers["webhook-signature"] not in repr(logs)
    assert "s3cret" not in repr(logs)


# --- The SSRF guard at delivery ---------------------------------------------------------------


def test_a_host_resolving_to_loopback_is_refused_before_any_connection(receiver: Receiver) -> None:
    policy = UrlPolicy(allow_private=False, allow_http=True)
    with WebhookSender(policy, timeout_s=TIMEOUT_S, resolver=answering("evil.test", "127.0.0.1")) as guarded:
        outcome = guarded.send(receiver.url("/ok", host="evil.test"), BODY, signed())

    assert outcome.success is False
    assert outcome.error == "forbidden destination: evil.test resolves to a loopback address"
    assert receiver.requests == []
    assert receiver.connections == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_stored_url_the_policy_now_refuses_is_refused_at_delivery_without_connecting(
    receiver: Receiver, host: str
) -> None:
    with WebhookSender(UrlPolicy(allow_http=True), timeout_s=TIMEOUT_S) as guarded:
        outcome = guarded.send(receiver.url("/ok", host=host), BODY, signed())

    assert outcome.error is not None and outcome.error.startswith("invalid url: webhook_url ")
    assert receiver.connections == []


def test_the_connection_goes_to_the_address_that_was_checked(receiver: Receiver) -> None:
    answers: list[str] = []

    def rebinding(host: str, port: int) -> Sequence[IPAddress]:
        # First answer: the receiver. Any later lookup would point somewhere else entirely.
        answers.append(host)
        return [ip_address("127.0.0.1" if len(answers) == 1 else "192.0.2.1")]

    with WebhookSender(DEVELOPMENT, timeout_s=TIMEOUT_S, resolver=rebinding) as pinned:
        outcome = pinned.send(receiver.url("/ok", host="example.test"), BODY, signed())

    assert outcome.success, outcome.error
    assert answers == ["example.test"]
    [request] = receiver.requests
    assert request.headers["host"] == f"example.test:{receiver.port}"


# --- TLS to a pinned address ------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA and a certificate for example.test signed by it."""
    folder = tmp_path_factory.mktemp("tls")

    def openssl(command: str) -> None:
        try:
            subprocess.run(
                ["openssl", *shlex.split(command)], cwd=folder, check=True, capture_output=True, timeout=30
            )
        except FileNotFoundError:
            pytest.skip("the openssl command is needed to make test certificates")

    key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    openssl(f"req -x509 {key} -days 2 -keyout ca.key -out ca.pem -subj '/CN=jobgate test CA'")
    openssl(f"req {key} -keyout leaf.key -out leaf.csr -subj /CN=example.test")
    (folder / "leaf.ext").write_text(
        "subjectAltName=DNS:example.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        "keyUsage=digitalSignature\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
    )
    openssl("x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -set_serial 2 -extfile leaf.ext -out leaf.pem")
    return folder


@pytest.fixture
def tls_receiver(certificates: Path) -> Iterator[Receiver]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates / "leaf.pem", certificates / "leaf.key")
    with serving(tls=context) as running:
        yield running


def test_tls_to_a_pinned_address_uses_the_hostname_for_sni_and_certificate_checks(
    tls_receiver: Receiver, certificates: Path
) -> None:
    trust = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    resolver = answering("example.test", "127.0.0.1")
    with WebhookSender(DEVELOPMENT, timeout_s=TIMEOUT_S, resolver=resolver, ssl_context=trust) as pinned:
        outcome = pinned.send(tls_receiver.url("/ok", host="example.test"), BODY, signed())

    assert outcome.success, outcome.error
    assert tls_receiver.server_names == ["example.test"]
    assert tls_receiver.requests[0].headers["host"] == f"example.test:{tls_receiver.port}"


def test_a_certificate_for_another_name_is_rejected(tls_receiver: Receiver, certificates: Path) -> None:
    trust = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    resolver = answering("other.test", "127.0.0.1")
    with WebhookSender(DEVELOPMENT, timeout_s=TIMEOUT_S, resolver=resolver, ssl_context=trust) as pinned:
        outcome = pinned.send(tls_receiver.url("/ok", host="other.test"), BODY, signed())

    assert outcome.success is False
    assert outcome.error is not None and outcome.error.startswith("tls certificate rejected")
    assert tls_receiver.requests == []
