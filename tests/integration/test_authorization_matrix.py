"""The authorisation matrix of issue 14: every keyed operation, answered as CONTRACT.md says.

The operations come from the app's own `/openapi.json`, so a route added later is in the matrix
without anyone editing this file: every path and method under `/v1/`, `/openai/v1/` and
`/anthropic/v1/` is asked with no key, a wrong key, a revoked key and an expired key (401), with
a key of the other scope (403 `permission_denied`: operator routes are `/v1/admin/...` and
`/v1/providers`), and, for each of tenant A's ids a path parameter can name, by tenant B
(404, answered exactly as for a random id of the same shape: never confirm that it exists).
The Anthropic surface answers in Anthropic's error shape, with Anthropic's error types, and
takes its key as `x-api-key` too. Each test gathers every mismatch before failing, so one run
names every route that answers otherwise.

Requests carry no body unless the check needs the route to get past body validation: a key is
refused by `api/key_gate.py` before the body is read, so a malformed body is never reported to
a caller whose key is no good.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import fastapi.routing
import httpx
import pytest
from sqlalchemy import update

from api.app import create_app
from core.auth import hash_key
from core.settings import Settings
from core.store.clock import system_utcnow
from core.store.db import make_sync_engine
from core.store.models import ApiKey
from tests.api_calls import job_body
from tests.conftest import IN_PROCESS_URL, bearer, in_process_api, sqlite_only

pytestmark = sqlite_only

KEYED_PREFIXES = ("/v1/", "/openai/v1/", "/anthropic/v1/")
SURFACES = ("/openai/v1", "/anthropic/v1", "/v1")
HTTP_METHODS = ("get", "put", "post", "patch", "delete")
HOOK_URL = "https://hooks.example.com/jobgate"
ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"

# jobgate's error types as the Anthropic surface names them (api/anthropic_wire.py).
ANTHROPIC_TYPES = {
    "authentication_error": "authentication_error",
    "key_revoked": "authentication_error",
    "key_expired": "authentication_error",
    "permission_denied": "permission_error",
    "not_found_error": "not_found_error",
}

# Bodies for the operations tenant B asks about A's ids whose body is validated before the
# route loads the object: without one they would answer 400 and never reach the lookup.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PATCH", "/v1/webhook-endpoints/{endpoint_id}"): {"enabled": True},
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    path_params: tuple[str, ...] = ()
    has_body: bool = False

    def __str__(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def surface(self) -> str:
        return next(surface for surface in SURFACES if self.path.startswith(surface + "/"))

    @property
    def anthropic(self) -> bool:
        return self.surface == "/anthropic/v1"

    @property
    def operator_only(self) -> bool:
        """CONTRACT.md "Roles and keys": the operator API and the fleet's provider state."""
        return self.path.startswith(("/v1/admin/", "/v1/providers/")) or self.path in (
            "/v1/admin",
            "/v1/providers",
        )

    def url(self, values: dict[str, str]) -> str:
        url = self.path
        for name in self.path_params:
            url = url.replace("{" + name + "}", values.get(name, f"{name}-probe"))
        return url

    def error_type(self, jobgate_type: str) -> str:
        """The error type this operation's surface answers for one of jobgate's."""
        return ANTHROPIC_TYPES[jobgate_type] if self.anthropic else jobgate_type


async def keyed_operations(client: httpx.AsyncClient) -> list[Operation]:
    """Every operation of the app's `/openapi.json` that needs a key."""
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    operations = []
    for path, item in response.json()["paths"].items():
        if not path.startswith(KEYED_PREFIXES):
            continue
        for method, spec in item.items():
            if method not in HTTP_METHODS:
                continue
            params = tuple(p["name"] for p in spec.get("parameters", []) if p["in"] == "path")
            operations.append(Operation(method.upper(), path, params, "requestBody" in spec))
    return operations


def refusal_problem(
    operation: Operation,
    response: httpx.Response,
    status: int,
    jobgate_type: str,
    *,
    message_says: str | None = None,
) -> str | None:
    """What is wrong with `response` as the refusal expected, in the surface's error shape."""
    expected = operation.error_type(jobgate_type)
    got = f"{response.status_code} {response.text[:300]}"
    if response.status_code != status:
        return f"{operation}: expected {status} {expected}, got {got}"
    try:
        body = response.json()
        error = body["error"]
        error_type, message = error["type"], error["message"]
    except (ValueError, KeyError, TypeError):
        return f"{operation}: not an error body: {got}"
    if operation.anthropic and body.get("type") != "error":
        return f"{operation}: not Anthropic's error shape: {got}"
    if not operation.anthropic and "param" not in error:
        return f"{operation}: not jobgate's error shape: {got}"
    if error_type != expected:
        return f"{operation}: expected error type {expected}, got {got}"
    if message_says is not None and message_says not in message:
        return f"{operation}: expected a message saying {message_says!r}, got {got}"
    return None


def key_headers(operation: Operation, key: str) -> list[dict[str, str]]:
    """Each way this operation takes a key: Bearer, and `x-api-key` on the Anthropic surface."""
    ways = [bearer(key)]
    if operation.anthropic:
        ways.append({"x-api-key": key})
    return ways


def set_key_columns(settings: Settings, key: str, **values: Any) -> None:
    """Change a key's row in SQL, as another process (or an operator's CLI) would."""
    engine = make_sync_engine(settings)
    try:
        with engine.begin() as connection:
            connection.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(key)).values(**values))
    finally:
        engine.dispose()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API in this process, with no key of its own: each request names its key.

    The matrix tries some sixty wrong keys from one address, past the limit on key guessing
    (`JOBGATE_AUTH_FAILURES_PER_ADDRESS`, whose 429 is its own test's subject): raised here."""
    async with in_process_api(settings.model_copy(update={"auth_failures_per_address": 10_000})) as client:
        yield client


async def test_every_keyed_route_is_in_the_schema_the_matrix_is_built_from(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    operations = {(op.method, op.path) for op in await keyed_operations(client)}
    # FastAPI 0.16x keeps an included router whole in `app.routes` (`iter_route_contexts`
    # walks into it); earlier versions list the routes themselves.
    walk: Callable[[list[Any]], Iterable[Any]] = getattr(fastapi.routing, "iter_route_contexts", iter)
    routes = {
        (method, path)
        for route in walk(create_app(settings).routes)
        if (path := getattr(route, "path_format", None) or "").startswith(KEYED_PREFIXES)
        for method in getattr(route, "methods", None) or ()
    }

    assert routes - operations == set(), "routes hidden from /openapi.json escape the matrix"
    surfaces = {Operation(method, path).surface for method, path in operations}
    assert surfaces == set(SURFACES)
    assert {op for op in operations if Operation(*op).operator_only}


@pytest.mark.parametrize(
    ("credential", "jobgate_type", "message_says"),
    [
        ("missing", "authentication_error", None),
        ("wrong", "authentication_error", None),
        ("revoked", "key_revoked", "revoked"),
        ("expired", "key_expired", "expired"),
    ],
)
async def test_every_operation_refuses_a_missing_wrong_revoked_or_expired_key_with_401(
    settings: Settings,
    make_key: Callable[..., str],
    client: httpx.AsyncClient,
    credential: str,
    jobgate_type: str,
    message_says: str | None,
) -> None:
    # A key of each scope, so the route's own scope is not what refuses it.
    keys = {"tenant": make_key("tenant-a"), "operator": make_key(None, scope="operator")}
    for key in keys.values():
        if credential == "revoked":
            set_key_columns(settings, key, revoked_at=system_utcnow())
        elif credential == "expired":
            set_key_columns(settings, key, expires_at=system_utcnow() - timedelta(minutes=1))
    wrong_key = "jg_" + secrets.token_urlsafe(32)

    problems = []
    for operation in await keyed_operations(client):
        key = keys["operator" if operation.operator_only else "tenant"]
        if credential == "missing":
            # `x-api-key` is a key only on the Anthropic surface.
            ways: list[dict[str, str]] = [{}] if operation.anthropic else [{}, {"x-api-key": key}]
        else:
            ways = key_headers(operation, wrong_key if credential == "wrong" else key)
        for headers in ways:
            response = await client.request(operation.method, operation.url({}), headers=headers)
            problem = refusal_problem(operation, response, 401, jobgate_type, message_says=message_says)
            if problem is not None:
                problems.append(f"{problem} (headers: {', '.join(headers) or 'none'})")

    assert not problems, "\n".join(problems)


async def test_a_wrong_key_is_refused_with_401_before_a_malformed_body_is_reported(
    client: httpx.AsyncClient,
) -> None:
    wrong_key = "jg_" + secrets.token_urlsafe(32)
    malformed = {**bearer(wrong_key), "Content-Type": "application/json"}

    problems = []
    for operation in await keyed_operations(client):
        if operation.has_body:
            response = await client.request(
                operation.method, operation.url({}), content=b"{not json", headers=malformed
            )
            problems.append(refusal_problem(operation, response, 401, "authentication_error"))

    refused_otherwise = [problem for problem in problems if problem is not None]
    assert not refused_otherwise, "\n".join(refused_otherwise)


async def test_a_key_of_the_other_scope_is_refused_with_403_on_every_operation(
    make_key: Callable[..., str], client: httpx.AsyncClient
) -> None:
    tenant_key, operator_key = make_key("tenant-a"), make_key(None, scope="operator")

    problems = []
    for operation in await keyed_operations(client):
        other = tenant_key if operation.operator_only else operator_key
        for headers in key_headers(operation, other):
            response = await client.request(operation.method, operation.url({}), headers=headers)
            problems.append(refusal_problem(operation, response, 403, "permission_denied"))

    refused_otherwise = [problem for problem in problems if problem is not None]
    assert not refused_otherwise, "\n".join(refused_otherwise)


async def test_a_key_of_the_right_scope_gets_past_authentication_on_every_operation(
    make_key: Callable[..., str], client: httpx.AsyncClient
) -> None:
    """The control for the refusals above: the same keys, unchanged, are let through (the
    answer is then about the request: 200, 400 for a missing body, 404 for a probe id)."""
    tenant_key, operator_key = make_key("tenant-a"), make_key(None, scope="operator")

    problems = []
    for operation in await keyed_operations(client):
        key = operator_key if operation.operator_only else tenant_key
        for headers in key_headers(operation, key):
            response = await client.request(operation.method, operation.url({}), headers=headers)
            if response.status_code in (401, 403) or response.status_code >= 500:
                problems.append(f"{operation}: got {response.status_code} {response.text[:300]}")

    assert not problems, "\n".join(problems)


# --- Tenant B on tenant A's ids -----------------------------------------------------------------


async def tenant_a_ids(client: httpx.AsyncClient, a: dict[str, str]) -> dict[tuple[str, str], list[str]]:
    """Real objects of tenant A's, made through the API, by (surface, path parameter name)."""

    async def made(response: httpx.Response, status: int = 201) -> str:
        assert response.status_code == status, response.text
        object_id: str = response.json()["id"]
        return object_id

    job_id = await made(
        await client.post("/v1/jobs", json=job_body("A's prompt", webhook_url=HOOK_URL), headers=a), 202
    )
    # Cancelling the job logs its webhook delivery (job.cancelled).
    assert (await client.post(f"/v1/jobs/{job_id}/cancel", headers=a)).status_code == 200
    deliveries = (await client.get(f"/v1/jobs/{job_id}/deliveries", headers=a)).json()["data"]
    delivery_id: str = deliveries[0]["id"]
    batch_id = await made(
        await client.post(
            "/v1/batches", json={"requests": [{"custom_id": "a-0", "body": job_body("A's")}]}, headers=a
        )
    )
    endpoint_id = await made(await client.post("/v1/webhook-endpoints", json={"url": HOOK_URL}, headers=a))
    line = {"custom_id": "a-0", "method": "POST", "url": "/v1/chat/completions", "body": job_body("A's")}
    file_id = await made(
        await client.post(
            "/openai/v1/files",
            files={"file": ("input.jsonl", json.dumps(line).encode() + b"\n", "application/jsonl")},
            data={"purpose": "batch"},
            headers=a,
        ),
        200,
    )
    openai_batch_id = await made(
        await client.post(
            "/openai/v1/batches",
            json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
            headers=a,
        ),
        200,
    )
    params = {"model": "fast", "max_tokens": 16, "messages": [{"role": "user", "content": "A's"}]}
    message_batch_id = await made(
        await client.post(
            "/anthropic/v1/messages/batches",
            json={"requests": [{"custom_id": "a-0", "params": params}]},
            headers=a,
        ),
        200,
    )
    return {
        ("/v1", "job_id"): [job_id],
        # The compatibility surfaces' batches are jobgate batches of the same id.
        ("/v1", "batch_id"): [batch_id, openai_batch_id, message_batch_id],
        ("/v1", "endpoint_id"): [endpoint_id],
        ("/v1", "delivery_id"): [delivery_id],
        ("/openai/v1", "file_id"): [file_id],
        ("/openai/v1", "batch_id"): [openai_batch_id],
        ("/anthropic/v1", "batch_id"): [message_batch_id],
    }


def random_id_like(object_id: str) -> str:
    """An id of the same prefix and length that names nothing."""
    match = re.fullmatch(r"(.*[_-])([0-9a-z]+)", object_id)
    prefix, tail = (match.group(1), match.group(2)) if match else ("", object_id)
    return prefix + "".join(secrets.choice(ID_ALPHABET) for _ in tail)


def answer_without(response: httpx.Response, ids: Iterable[str]) -> tuple[int, str | None, Any]:
    """Status, content type and body, with the ids the request named written as `{id}`."""
    text = response.text
    for object_id in ids:
        text = text.replace(object_id, "{id}")
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    return response.status_code, response.headers.get("content-type"), body


@dataclass(frozen=True)
class Case:
    """One request naming one of A's ids (`values`), and its twin naming a random id instead."""

    operation: Operation
    values: dict[str, str]
    random_values: dict[str, str]

    def __str__(self) -> str:
        return f"{self.operation} with {self.values}"


def cases_of(operation: Operation, ids: dict[tuple[str, str], list[str]]) -> list[Case]:
    """Each of A's ids each path parameter of `operation` can name (the others at their first)."""
    firsts = {name: ids[(operation.surface, name)][0] for name in operation.path_params}
    cases = []
    for name in operation.path_params:
        for object_id in ids[(operation.surface, name)]:
            values = {**firsts, name: object_id}
            cases.append(Case(operation, values, {**values, name: random_id_like(object_id)}))
    return cases


async def test_tenant_b_on_each_of_tenant_as_ids_gets_the_404_of_a_random_id(
    make_key: Callable[..., str], client: httpx.AsyncClient
) -> None:
    a, b = bearer(make_key("tenant-a")), bearer(make_key("tenant-b"))
    ids = await tenant_a_ids(client, a)
    operations = [op for op in await keyed_operations(client) if op.path_params and not op.operator_only]
    unmapped = [
        f"{op}: map {{{name}}} to an object of A's in tenant_a_ids"
        for op in operations
        for name in op.path_params
        if (op.surface, name) not in ids
    ]
    assert not unmapped, "\n".join(unmapped)
    cases = [case for op in operations for case in cases_of(op, ids)]

    problems = []
    for case in cases:
        body = BODIES.get((case.operation.method, case.operation.path))
        stolen = await client.request(
            case.operation.method, case.operation.url(case.values), json=body, headers=b
        )
        missing = await client.request(
            case.operation.method, case.operation.url(case.random_values), json=body, headers=b
        )
        problem = refusal_problem(case.operation, stolen, 404, "not_found_error")
        if problem is not None:
            problems.append(f"{problem} (naming {case.values})")
        elif answer_without(stolen, case.values.values()) != answer_without(
            missing, case.random_values.values()
        ):
            problems.append(f"{case}: {stolen.text[:300]} differs from a random id's {missing.text[:300]}")
    # B may not start an OpenAI batch on A's file either (an id in the body, not the path).
    batch_on = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
    file_id = ids[("/openai/v1", "file_id")][0]
    random_file_id = random_id_like(file_id)
    on_a_file = await client.post(
        "/openai/v1/batches", json={**batch_on, "input_file_id": file_id}, headers=b
    )
    on_no_file = await client.post(
        "/openai/v1/batches", json={**batch_on, "input_file_id": random_file_id}, headers=b
    )
    if on_a_file.status_code != 404 or answer_without(on_a_file, [file_id]) != answer_without(
        on_no_file, [random_file_id]
    ):
        problems.append(
            f"POST /openai/v1/batches on A's file: {on_a_file.status_code} {on_a_file.text[:300]}"
        )

    # The control: every one of those ids is A's own, and A reaches it (deletions last, so
    # nothing is gone before it is asked for).
    for case in sorted(cases, key=lambda case: case.operation.method == "DELETE"):
        body = BODIES.get((case.operation.method, case.operation.path))
        own = await client.request(
            case.operation.method, case.operation.url(case.values), json=body, headers=a
        )
        if own.status_code == 404 or own.status_code >= 500:
            problems.append(f"{case}: tenant A itself got {own.status_code} {own.text[:300]}")

    assert not problems, "\n".join(problems)


# --- Revocation through the key cache ------------------------------------------------------------


async def test_a_revoked_key_is_refused_within_the_key_cache_ttl_even_once_cached(
    settings: Settings, make_key: Callable[..., str]
) -> None:
    ttl_s = 1.0
    key, operator = make_key("tenant-a"), make_key(None, scope="operator")
    app = create_app(settings.model_copy(update={"key_cache_ttl_s": ttl_s}))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=IN_PROCESS_URL) as client,
    ):
        assert (await client.get("/v1/jobs", headers=bearer(key))).status_code == 200
        cached_at = time.monotonic()
        assert app.state.jobgate.principals.get(hash_key(key)) is not None

        revoked = await client.delete(f"/v1/admin/keys/{key[:10]}", headers=bearer(operator))
        assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None

        async def refused() -> httpx.Response:
            while (response := await client.get("/v1/jobs", headers=bearer(key))).status_code == 200:
                await asyncio.sleep(0.02)
            return response

        response = await asyncio.wait_for(refused(), timeout=ttl_s + 10)
        refused_after_s = time.monotonic() - cached_at

    assert response.status_code == 401
    assert response.json()["error"]["type"] == "key_revoked"
    assert refused_after_s <= ttl_s + 1.0
