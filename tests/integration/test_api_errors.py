"""The API's edges: auth, validation, size limits, the one error shape, health and readiness.

Every error is `{"error": {"type", "message", "param"}}`. These tests run on SQLite (the SQL
backend does not change what the edge says); readiness is also checked with Postgres and
Redis unreachable.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from core.settings import Settings
from jobgate.children import free_port
from tests.conftest import in_process_api
from tests.pg_proxy import tcp_proxy

MAX_BODY_BYTES = 20_000
MAX_BATCH_BYTES = 60_000


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_body_bytes": MAX_BODY_BYTES, "max_batch_bytes": MAX_BATCH_BYTES})


def job_body(**extra: Any) -> dict[str, Any]:
    return {"model": "fast", "messages": [{"role": "user", "content": "Hello"}], **extra}


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The error object, after checking the response has exactly the one error shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"type", "message", "param"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


PROTECTED_ROUTES = [
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/job_x"),
    ("POST", "/v1/jobs/job_x/cancel"),
    ("GET", "/v1/batches"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches/batch_x"),
    ("GET", "/v1/batches/batch_x/results"),
    ("POST", "/v1/batches/batch_x/cancel"),
    ("GET", "/v1/models"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED_ROUTES)
async def test_every_v1_route_refuses_a_request_without_a_key(
    api_client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await api_client.request(method, path, headers={"Authorization": ""}, json=job_body())

    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs", b'{"model": "fast", "messages": ['),
        ("/v1/chat/completions", b"[1, 2"),
        ("/v1/jobs", b"x" * 2_000_000),  # over JOBGATE_MAX_BODY_BYTES
    ],
    ids=["malformed", "malformed-sync", "over-size"],
)
async def test_a_request_without_a_key_hears_401_before_anything_about_its_body(
    api_client: httpx.AsyncClient, path: str, body: bytes
) -> None:
    headers = {"Authorization": "", "Content-Type": "application/json"}
    response = await api_client.post(path, content=body, headers=headers)

    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_error"
    assert response.headers["x-request-id"]


@pytest.mark.parametrize("header", ["Bearer jg_not-a-real-key", "Basic dXNlcjpwYXNz", "Bearer "])
async def test_wrong_key_or_scheme_is_unauthenticated(api_client: httpx.AsyncClient, header: str) -> None:
    response = await api_client.post("/v1/jobs", json=job_body(), headers={"Authorization": header})

    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_error"
    assert (await api_client.get("/v1/jobs")).json()["data"] == []


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json"])
async def test_health_readiness_and_schema_need_no_key(api_client: httpx.AsyncClient, path: str) -> None:
    response = await api_client.get(path, headers={"Authorization": ""})

    assert response.status_code == 200


async def test_readiness_reports_sql_and_redis_ok(api_client: httpx.AsyncClient) -> None:
    response = await api_client.get("/readyz")

    assert response.json() == {"status": "ready", "database": "ok", "redis": "ok"}


async def test_openapi_schema_describes_jobs_and_batches(api_client: httpx.AsyncClient) -> None:
    schema = (await api_client.get("/openapi.json")).json()

    assert schema["info"]["title"] == "jobgate"
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/batches"):
        assert path in schema["paths"]
    assert "application/x-ndjson" in schema["paths"]["/v1/batches"]["post"]["requestBody"]["content"]


async def test_models_list_names_aliases_and_provider_models(
    api_client: httpx.AsyncClient, upstream_model: str
) -> None:
    listed = (await api_client.get("/v1/models")).json()

    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["fast", upstream_model]
    assert all(m["object"] == "model" and m["owned_by"] == "jobgate" for m in listed["data"])


async def test_unknown_model_is_refused_listing_the_known_ones(
    api_client: httpx.AsyncClient, upstream_model: str
) -> None:
    response = await api_client.post("/v1/jobs", json=job_body(model="gpt-17"))

    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "model"
    assert "gpt-17" in error["message"]
    assert "fast" in error["message"] and upstream_model in error["message"]


async def test_unknown_top_level_field_is_refused_naming_it(api_client: httpx.AsyncClient) -> None:
    response = await api_client.post("/v1/jobs", json=job_body(colour="blue"))

    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "colour"
    assert error["message"] == "Unrecognized request argument supplied: colour"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "fast"}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        (job_body(n=2), "n"),
        (job_body(temperature=3), "temperature"),
        (job_body(stream=True), "stream"),
        (job_body(priority="urgent"), "priority"),
        (job_body(metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
        (job_body(deadline="next tuesday"), "deadline"),
    ],
)
async def test_invalid_job_body_is_refused_naming_the_field(
    api_client: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    response = await api_client.post("/v1/jobs", json=body)

    assert response.status_code == 400
    assert error_of(response)["param"] == param
    assert (await api_client.get("/v1/jobs")).json()["data"] == []


async def test_body_that_is_not_json_is_refused(api_client: httpx.AsyncClient) -> None:
    response = await api_client.post(
        "/v1/jobs", content=b"model=fast", headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert error_of(response)["type"] == "invalid_request_error"


async def test_body_over_the_size_limit_is_refused_with_413(api_client: httpx.AsyncClient) -> None:
    body = job_body(messages=[{"role": "user", "content": "x" * MAX_BODY_BYTES}])

    response = await api_client.post("/v1/jobs", json=body)

    assert response.status_code == 413
    error = error_of(response)
    assert error["type"] == "request_too_large"
    assert str(MAX_BODY_BYTES) in error["message"]
    assert (await api_client.get("/v1/jobs")).json()["data"] == []


async def test_chunked_body_over_the_size_limit_is_refused_with_413(api_client: httpx.AsyncClient) -> None:
    payload = json.dumps(job_body(messages=[{"role": "user", "content": "x" * MAX_BODY_BYTES}])).encode()

    async def chunks() -> Any:
        for start in range(0, len(payload), 4096):
            yield payload[start : start + 4096]

    response = await api_client.post(
        "/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 413
    assert error_of(response)["type"] == "request_too_large"
    assert (await api_client.get("/v1/jobs")).json()["data"] == []


async def test_batch_upload_has_its_own_larger_size_limit(api_client: httpx.AsyncClient) -> None:
    def upload(lines: int) -> bytes:
        return "".join(
            json.dumps(
                {"custom_id": f"r{i}", "body": job_body(messages=[{"role": "user", "content": "y" * 1000}])}
            )
            + "\n"
            for i in range(lines)
        ).encode()

    within = upload(30)  # over the per-request limit, under the batch limit
    over = upload(70)
    assert MAX_BODY_BYTES < len(within) < MAX_BATCH_BYTES < len(over)
    headers = {"Content-Type": "application/x-ndjson"}

    accepted = await api_client.post("/v1/batches", content=within, headers=headers)
    refused = await api_client.post("/v1/batches", content=over, headers=headers)

    assert accepted.status_code == 201, accepted.text
    assert refused.status_code == 413
    assert error_of(refused)["type"] == "request_too_large"
    assert len((await api_client.get("/v1/batches")).json()["data"]) == 1


async def test_unknown_route_and_wrong_method_answer_in_the_error_shape(
    api_client: httpx.AsyncClient,
) -> None:
    missing = await api_client.get("/v1/nothing-here")
    wrong_method = await api_client.delete("/v1/jobs")

    assert missing.status_code == 404
    assert error_of(missing)["type"] == "not_found_error"
    assert wrong_method.status_code == 405
    assert error_of(wrong_method)["type"] == "invalid_request_error"


async def test_readiness_names_redis_when_it_is_down(settings: Settings) -> None:
    down = settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "redis_timeout_s": 1}
    )

    async with in_process_api(down) as client:
        response = await client.get("/readyz")
        health = await client.get("/healthz")

    assert response.status_code == 503
    assert response.headers["retry-after"]
    message = response.json()["error"]["message"]
    assert "redis" in message and "database" not in message
    assert health.status_code == 200


async def test_readiness_names_the_database_when_it_is_down(settings: Settings) -> None:
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/jobgate_nowhere"

    async with in_process_api(settings.model_copy(update={"database_url": unreachable})) as client:
        response = await client.get("/readyz")

    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "database" in message and "redis" not in message


async def test_request_needing_an_unreachable_database_is_a_503_with_retry_after(settings: Settings) -> None:
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/jobgate_nowhere"

    async with in_process_api(settings.model_copy(update={"database_url": unreachable}), "jg_any") as client:
        response = await client.get("/v1/jobs")

    assert response.status_code == 503
    assert error_of(response)["type"] == "service_unavailable"
    assert response.headers["retry-after"]


async def test_job_is_accepted_while_redis_is_down(settings: Settings, api_key: str) -> None:
    # The row is the job (committed first); the sweeper enqueues it once Redis is back.
    down = settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "redis_timeout_s": 1}
    )

    async with in_process_api(down, api_key) as client:
        response = await client.post("/v1/jobs", json=job_body())
        stored = await client.get(f"/v1/jobs/{response.json()['id']}")

    assert response.status_code == 202
    assert stored.json()["status"] == "queued"


async def test_cancel_answers_while_redis_is_partitioned(settings: Settings, api_key: str) -> None:
    # Cancelling tells waiters over Redis; a Redis that accepts bytes and never answers must
    # cost that notification (best effort, waiters re-read SQL), not hang the request.
    redis_port = int(str(settings.redis_url).rsplit(":", 1)[1].split("/")[0])
    with tcp_proxy(redis_port) as redis_proxy:
        through = settings.model_copy(
            update={"redis_url": f"redis://127.0.0.1:{redis_proxy.port}/0", "redis_timeout_s": 1}
        )
        async with in_process_api(through, api_key) as client:
            job = (await client.post("/v1/jobs", json=job_body())).json()
            redis_proxy.freeze()
            started = time.monotonic()
            response = await asyncio.wait_for(client.post(f"/v1/jobs/{job['id']}/cancel"), timeout=15)
            elapsed_s = time.monotonic() - started
            redis_proxy.thaw()

    assert elapsed_s < 3, "bounded by JOBGATE_REDIS_TIMEOUT_S (1 s here), not by Redis"
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
