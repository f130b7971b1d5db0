"""Nothing secret or foreign leaks: every kind of traffic through real processes, with canaries.

Unique canary values stand where secrets and foreign text live:
- the provider API keys (the environment variables the config's `api_key_env` names);
- every jobgate API key in play: tenant A's, tenant B's (a second tenant) and an operator's;
- each tenant's webhook secrets: A's signing secret before and after a rotation, B's, and B's
  endpoint secret before and after a rotation;
- an `org-…` id that the simulated upstream writes into its 429 messages, as OpenAI's
  ("Rate limit reached for M in organization org-… on requests per min…") and Anthropic's do.

The traffic (an API process, a worker process, the sim and a webhook receiver, all on
127.0.0.1): sync `/v1/chat/completions`, streamed too; `/v1/jobs` with `?wait=`; a small
`/v1/batches` and its results; `/anthropic/v1/messages`, streamed too; jobs and a batch with a
`webhook_url`; a tenant webhook endpoint; and upstream failures on each path: 429s from both
wire formats, 500s, and a provider whose port refuses connections. Then every place a canary
could surface is searched, and there must be no hit:
- every HTTP response the test received from jobgate, status line, headers and body;
- every log line of the API and worker processes (stdout and stderr, logging at DEBUG);
- every webhook request the receiver got (payloads);
- every row of every SQL table, read generically as JSON (jobs' errors, attempts, deliveries…);
- `/metrics` of the API, and the worker's view of the same multiprocess files (what
  `jobgate worker --metrics-port` serves; built here, so no port opens on 0.0.0.0).

Exclusions, each exact:
- a tenant's own webhook secrets in the answers of the routes whose purpose is to show them to
  their owner (`POST /v1/webhook-endpoints`, `GET …/{id}/secret`, `POST …/{id}/rotate-secret`,
  `GET /v1/webhook-secret`, `POST /v1/webhook-secret/rotate`); any other canary there is a leak;
- the `secret` and `previous_secret` columns of `tenant_webhook_secrets` and
  `webhook_endpoints`, where signing needs them stored (the test checks they do hold them, so
  the scan is known to see what it looks for). API keys are stored as hashes and a prefix,
  neither of which contains a key.
The sim and the receiver stand for the provider and the tenant: what they hold and log is
theirs, so they are not searched. The test checks the sim did send the `org-` canary and did
receive the provider keys, so every canary was really in play.
"""

from __future__ import annotations

import functools
import json
import re
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from psycopg import sql

from core.auth import create_key
from core.settings import Settings
from core.store.db import make_sync_engine, make_sync_sessions
from tests.fleet import Fleet, run_fleet
from tests.processes import ServiceProcess, wait_until
from tests.sim_process import SimHandle, run_sim
from tests.webhook_receiver import ReceiverHandle, run_receiver

pytestmark = pytest.mark.e2e

OPENAI_KEY_ENV = "CANARY_TEST_OPENAI_API_KEY"
ANTHROPIC_KEY_ENV = "CANARY_TEST_ANTHROPIC_API_KEY"
# Upstream models, each with its own behaviour in the sim.
ECHO, LIMITED, BROKEN = "canary-echo", "canary-limited", "canary-broken"
FINAL = ("succeeded", "failed", "cancelled")
# Routes that show a tenant its own webhook secrets (method, path pattern).
OWN_SECRET_ROUTES = (
    ("POST", re.compile(r"/v1/webhook-endpoints")),
    ("GET", re.compile(r"/v1/webhook-endpoints/[^/]+/secret")),
    ("POST", re.compile(r"/v1/webhook-endpoints/[^/]+/rotate-secret")),
    ("GET", re.compile(r"/v1/webhook-secret")),
    ("POST", re.compile(r"/v1/webhook-secret/rotate")),
)
# Columns where the webhook secrets must be stored (signing needs them, not a hash).
SECRET_COLUMNS = {
    "tenant_webhook_secrets": ("secret", "previous_secret"),
    "webhook_endpoints": ("secret", "previous_secret"),
}


def closed_port() -> int:
    """A port nothing listens on (bound and released), for a provider that refuses connections."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def gateway_config(sim: SimHandle) -> dict[str, Any]:
    """One provider per failure kind, so a 429's pause or a 500's breaker touches only its own."""

    def openai_kind(base_url: str) -> dict[str, Any]:
        return {"kind": "openai", "base_url": base_url, "api_key_env": OPENAI_KEY_ENV, "timeout_s": 10}

    def anthropic_kind() -> dict[str, Any]:
        return {"kind": "anthropic", "base_url": sim.url, "api_key_env": ANTHROPIC_KEY_ENV, "timeout_s": 10}

    return {
        "providers": {
            "canary-openai": openai_kind(sim.openai_base_url),
            "canary-openai-limited": openai_kind(sim.openai_base_url),
            "canary-openai-broken": openai_kind(sim.openai_base_url),
            "canary-unreachable": openai_kind(f"http://127.0.0.1:{closed_port()}/v1"),
            "canary-anthropic": anthropic_kind(),
            "canary-anthropic-limited": anthropic_kind(),
        },
        "models": {
            "fast": {"targets": [{"provider": "canary-openai", "model": ECHO}]},
            "limited": {"targets": [{"provider": "canary-openai-limited", "model": LIMITED}]},
            "broken": {"targets": [{"provider": "canary-openai-broken", "model": BROKEN}]},
            "down": {"targets": [{"provider": "canary-unreachable", "model": ECHO}]},
            "claude": {"targets": [{"provider": "canary-anthropic", "model": ECHO}]},
            "claude-limited": {"targets": [{"provider": "canary-anthropic-limited", "model": LIMITED}]},
        },
        "pricing": {
            model: {"input_per_mtok": 0.15, "output_per_mtok": 0.6} for model in (ECHO, LIMITED, BROKEN)
        },
        "cache": {"default": False, "ttl_s": 60},
    }


@dataclass
class Canaries:
    """Canary name → value, and which tenant owns which webhook secret."""

    values: dict[str, str] = field(default_factory=dict)
    own_secrets: dict[str, set[str]] = field(default_factory=dict)

    def add(self, name: str, value: str, *, secret_of: str | None = None) -> str:
        assert value not in self.values.values()
        self.values[name] = value
        if secret_of is not None:
            self.own_secrets.setdefault(secret_of, set()).add(name)
        return value

    def found_in(self, text: str, *, allowed: frozenset[str] = frozenset()) -> list[str]:
        """The names of the canaries in `text` (also hex-encoded, as SQL shows bytes), but `allowed`."""
        return [
            name
            for name, value in self.values.items()
            if name not in allowed and (value in text or value.encode().hex() in text)
        ]


@dataclass(frozen=True)
class Exchange:
    who: str
    method: str
    path: str
    text: str


class Recorder:
    """Makes each request as one of the test's principals and keeps every answer whole."""

    def __init__(self, base_url: str, keys: dict[str, str]) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=60)
        self.keys = keys
        self.exchanges: list[Exchange] = []

    def __call__(
        self, who: str, method: str, path: str, *, anthropic: bool = False, **kwargs: Any
    ) -> httpx.Response:
        auth = {"x-api-key": self.keys[who]} if anthropic else {"Authorization": f"Bearer {self.keys[who]}"}
        response = self.client.request(method, path, headers=auth, **kwargs)
        headers = "\n".join(f"{name}: {value}" for name, value in response.headers.multi_items())
        self.exchanges.append(
            Exchange(
                who,
                method,
                path,
                f"{response.status_code} {response.reason_phrase}\n{headers}\n\n{response.text}",
            )
        )
        assert response.status_code < 500 or path.startswith(("/v1/chat", "/anthropic")), (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        return response

    def ok(self, who: str, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON of a request that must succeed."""
        response = self(who, method, path, **kwargs)
        assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def job(self, who: str, job_id: str) -> dict[str, Any]:
        """The job once final (long polls of up to 10 s each; the whole run is bounded anyway)."""
        deadline = time.monotonic() + 30
        while True:
            job: dict[str, Any] = self(who, "GET", f"/v1/jobs/{job_id}", params={"wait": 10}).json()
            if job["status"] in FINAL or time.monotonic() > deadline:
                return job

    def close(self) -> None:
        self.client.close()


def chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def message(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": text}], **extra}


def new_key(database_url: str, tenant: str) -> str:
    engine = make_sync_engine(Settings(database_url=database_url))
    try:
        with make_sync_sessions(engine)() as session:
            return create_key(session, tenant).key
    finally:
        engine.dispose()


@pytest.fixture
def canaries(monkeypatch: pytest.MonkeyPatch) -> Canaries:
    found = Canaries()
    monkeypatch.setenv(OPENAI_KEY_ENV, found.add("openai key", f"sk-proj-canary{uuid.uuid4().hex}"))
    monkeypatch.setenv(ANTHROPIC_KEY_ENV, found.add("anthropic key", f"sk-ant-canary{uuid.uuid4().hex}"))
    found.add("organization", f"org-canary{uuid.uuid4().hex}")
    return found


@pytest.fixture
def fleet(canaries: Canaries, tmp_path: Path) -> Iterator[Fleet]:
    with run_sim(organization=canaries.values["organization"]) as sim:
        sim.configure(
            models={
                # No Retry-After: a 429 then fails its job at once instead of pausing the provider.
                LIMITED: {"fail_rate": 1.0, "fail_status": 429, "retry_after_s": None},
                BROKEN: {"fail_rate": 1.0, "fail_status": 500},
            }
        )
        settings = {
            "log_level": "DEBUG",
            "max_attempts": "1",
            "webhook_allow_private": "true",
            "webhook_retry_schedule_s": "0,1,1,1",
            "metrics_dir": str(tmp_path / "metrics"),
        }
        with run_fleet(sim=sim, config=gateway_config(sim), workers=1, threads=4, settings=settings) as fleet:
            yield fleet


def run_tenant_a(call: Recorder, receiver: ReceiverHandle) -> list[str]:
    """Tenant A's traffic; returns the ids whose webhooks must arrive (jobs, then the batch)."""
    assert call("a", "POST", "/v1/chat/completions", json=chat("fast", "hello")).status_code == 200
    assert call("a", "POST", "/v1/chat/completions", json=chat("limited", "hello")).status_code == 429
    assert call("a", "POST", "/v1/chat/completions", json=chat("down", "hello")).status_code == 502
    call("a", "POST", "/v1/chat/completions", json=chat("fast", "stream me", stream=True))
    call("a", "POST", "/v1/chat/completions", json=chat("limited", "stream me", stream=True))
    hooked = []
    for model in ("fast", "limited", "broken", "down"):
        body = chat(model, f"a job on {model}", webhook_url=f"{receiver.url}/a-job")
        job_id = call.ok("a", "POST", "/v1/jobs", json=body)["id"]
        assert call.job("a", job_id)["status"] == ("succeeded" if model == "fast" else "failed")
        call("a", "GET", f"/v1/jobs/{job_id}/attempts")
        hooked.append(job_id)
    requests = [
        {"custom_id": f"r-{i}", "body": chat(model, f"batch {i}")}
        for i, model in enumerate(("fast", "fast", "limited", "broken"))
    ]
    body = {"requests": requests, "webhook_url": f"{receiver.url}/a-batch"}
    batch_id = call.ok("a", "POST", "/v1/batches", json=body)["id"]
    wait_until(
        lambda: call("a", "GET", f"/v1/batches/{batch_id}").json()["status"] == "completed",
        timeout_s=30,
        interval_s=0.2,
        what="the batch",
    )
    results = call("a", "GET", f"/v1/batches/{batch_id}/results").text.splitlines()
    lines = [json.loads(line) for line in results]
    assert sorted(line["status"] for line in lines) == ["failed", "failed", "succeeded", "succeeded"]
    hooked += [line["job_id"] for line in lines]
    for job_id in hooked:
        call("a", "GET", f"/v1/jobs/{job_id}/deliveries")
    call("a", "GET", "/v1/jobs", params={"limit": 100})
    call("a", "GET", "/v1/batches")
    call("a", "GET", "/v1/usage")
    call("a", "GET", "/v1/models")
    return [*hooked, batch_id]


def run_tenant_b(call: Recorder) -> list[str]:
    """Tenant B's traffic; returns its job ids (its endpoint hears each)."""
    assert (
        call("b", "POST", "/anthropic/v1/messages", anthropic=True, json=message("claude", "hi")).status_code
        == 200
    )
    limited = call(
        "b", "POST", "/anthropic/v1/messages", anthropic=True, json=message("claude-limited", "hi")
    )
    assert limited.status_code == 429
    call("b", "POST", "/anthropic/v1/messages", anthropic=True, json=message("claude", "stream", stream=True))
    call(
        "b",
        "POST",
        "/anthropic/v1/messages",
        anthropic=True,
        json=message("claude-limited", "x", stream=True),
    )
    for model in ("fast", "limited"):
        job_id = call.ok("b", "POST", "/v1/jobs", json=chat(model, f"b job on {model}"))["id"]
        call.job("b", job_id)
    jobs = call.ok("b", "GET", "/v1/jobs", params={"limit": 100})["data"]
    for job in jobs:
        call.job("b", job["id"])
        call("b", "GET", f"/v1/jobs/{job['id']}/attempts")
    call("b", "GET", "/v1/webhook-endpoints")
    return [job["id"] for job in jobs]


def delivered_all(records: list[dict[str, Any]], ids: set[str]) -> bool:
    delivered = {r["data_id"] for r in records if r["status"] == 200 and r["verified"] is True}
    return ids <= delivered


def rows_as_text(database_url: str) -> tuple[dict[str, str], str]:
    """Every table's rows as JSON text without the secret columns, and those columns' text."""
    scanned: dict[str, str] = {}
    secrets: list[str] = []
    with psycopg.connect(database_url) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
            )
        ]
        for table in tables:
            columns = list(SECRET_COLUMNS.get(table, ()))
            rows = conn.execute(
                sql.SQL("SELECT (to_jsonb(t) - %s::text[])::text FROM {} t").format(sql.Identifier(table)),
                (columns,),
            ).fetchall()
            scanned[table] = "\n".join(row[0] for row in rows)
            for column in columns:
                query = sql.SQL("SELECT {} FROM {}").format(sql.Identifier(column), sql.Identifier(table))
                secrets += [str(row[0]) for row in conn.execute(query)]
    return scanned, "\n".join(secrets)


def stdout_read(process: ServiceProcess) -> bool:
    return process.stdout_closed


def outputs_once_stopped(processes: list[ServiceProcess]) -> dict[str, str]:
    """Everything each process wrote (stdout and the stderr file), read once all have exited;
    SIGTERM to every pid first, so they stop side by side."""
    for process in processes:
        process.terminate()
    outputs = {}
    for process in processes:
        process.process.wait(timeout=30)
        wait_until(functools.partial(stdout_read, process), timeout_s=10, what=f"{process.name}'s stdout")
        text = "\n".join(process.lines) + "\n" + process.stderr_path.read_text(errors="replace")
        outputs[f"{process.name} {process.pid}"] = text
    return outputs


def test_no_canary_reaches_a_response_a_log_a_webhook_a_stored_row_or_a_metric(
    fleet: Fleet, canaries: Canaries, tmp_path: Path
) -> None:
    keys = {
        "a": fleet.api_key,
        "b": new_key(fleet.database_url, "canary-tenant-b"),
        "operator": fleet.operator_key,
    }
    for who, key in keys.items():
        canaries.add(f"{who} api key", key)
    call = Recorder(fleet.api_url, keys)
    hits: list[str] = []
    try:
        # Each tenant's secrets, rotated once so the previous ones sign too.
        canaries.add("a secret", call.ok("a", "GET", "/v1/webhook-secret")["secret"], secret_of="a")
        a_secret = call.ok("a", "POST", "/v1/webhook-secret/rotate")["secret"]
        canaries.add("a secret, rotated", a_secret, secret_of="a")
        canaries.add("b secret", call.ok("b", "GET", "/v1/webhook-secret")["secret"], secret_of="b")
        with run_receiver() as receiver:
            url = f"{receiver.url}/b-endpoint"
            endpoint = call.ok("b", "POST", "/v1/webhook-endpoints", json={"url": url})
            canaries.add("b endpoint secret", endpoint["secret"], secret_of="b")
            rotate = f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret"
            rotated = call.ok("b", "POST", rotate)["secret"]
            canaries.add("b endpoint secret, rotated", rotated, secret_of="b")
            assert call.ok("b", "GET", f"/v1/webhook-endpoints/{endpoint['id']}/secret")["secret"] == rotated
            # Tenant A may not read B's endpoint secret: a plain 404.
            assert call("a", "GET", f"/v1/webhook-endpoints/{endpoint['id']}/secret").status_code == 404
            receiver.configure(secrets=[a_secret, rotated])

            hooked = [*run_tenant_a(call, receiver), *run_tenant_b(call)]
            received = receiver.wait_for(
                lambda records: delivered_all(records, set(hooked)),
                timeout_s=30,
                what="every webhook of A's jobs and batch, and of B's endpoint",
                payloads=True,
            )
            hits += [
                f"webhook to {r['path']}: {name}"
                for r in received
                for name in canaries.found_in(json.dumps(r))
            ]

        call("operator", "GET", "/v1/providers")
        assert "jobgate_upstream_requests_total" in call("operator", "GET", "/metrics").text
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(tmp_path / "metrics"))
        hits += [f"worker metrics: {name}" for name in canaries.found_in(generate_latest(registry).decode())]
    finally:
        call.close()

    for exchange in call.exchanges:
        own = any(m == exchange.method and p.fullmatch(exchange.path) for m, p in OWN_SECRET_ROUTES)
        allowed = frozenset(canaries.own_secrets.get(exchange.who, set()) if own else ())
        hits += [
            f"answer to {exchange.who}'s {exchange.method} {exchange.path}: {name}"
            for name in canaries.found_in(exchange.text, allowed=allowed)
        ]

    scanned, secret_columns = rows_as_text(fleet.database_url)
    hits += [
        f"SQL table {table}: {name}" for table, text in scanned.items() for name in canaries.found_in(text)
    ]
    every_secret = canaries.own_secrets["a"] | canaries.own_secrets["b"]
    assert every_secret <= set(canaries.found_in(secret_columns)), "the scan sees where secrets live"

    # The sim's side proves the provider keys and the organisation were really in play.
    assert {canaries.values["openai key"], canaries.values["anthropic key"]} <= set(
        fleet.sim.stats()["by_key"]
    )
    assert canaries.values["organization"] in sim_429_text(fleet.sim)

    outputs = outputs_once_stopped([fleet.api, *fleet.workers])
    hits += [
        f"{process} log: {name}" for process, text in outputs.items() for name in canaries.found_in(text)
    ]
    assert '"upstream_error"' in "".join(outputs.values())  # the failures were logged, and searched

    assert not hits, "canaries found:\n" + "\n".join(hits)


def sim_429_text(sim: SimHandle) -> str:
    """The body of a 429 straight from the sim (OpenAI's wire format), as jobgate received them."""
    request = urllib.request.Request(
        f"{sim.openai_base_url}/chat/completions",
        data=json.dumps(chat(LIMITED, "probe")).encode(),
        headers={"content-type": "application/json", "authorization": "Bearer probe"},
    )
    try:
        urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as refused:
        assert refused.code == 429
        return refused.read().decode()
    raise AssertionError("the sim answered the limited model")
