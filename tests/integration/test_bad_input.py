"""Bad input at the API's edge: each kind is a 4xx saying what to fix, and nothing is stored.

Complements `test_api_errors.py` (auth, unknown fields, size limits) and `test_api_batches.py`
(a bad line, duplicate ids, the request count of a JSON batch). Every refusal here is checked
three ways: its status, an error object whose message names the field, line or limit (and
whose `param` points at it), and an empty database afterwards. Valid text that is merely
unusual (emoji, astral planes, right-to-left) must be accepted and come back unchanged.

Validation alone runs on SQLite; what a database might refuse (NUL, lone surrogates, times
out of range) or mangle (Unicode) runs on SQLite and Postgres.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.schemas import MAX_JSON_DEPTH, MAX_MESSAGES, MAX_OUTPUT_TOKENS
from core.settings import Settings
from core.store.db import make_sync_engine, make_sync_sessions
from core.store.models import Batch, Job
from tests.conftest import InlineWorker, sqlite_only

MAX_BATCH_REQUESTS = 8
MAX_BODY_BYTES: int = Settings.model_fields["max_body_bytes"].default
NDJSON = {"Content-Type": "application/x-ndjson"}
JSON = {"Content-Type": "application/json"}
# Spread over several chunks, as a server receives a large upload: earlier lines are parsed
# (and would be kept, were the batch not all or nothing) before the bad one arrives.
CHUNK_BYTES = 512

postgres_only = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_batch_requests": MAX_BATCH_REQUESTS})


@pytest.fixture
def sql(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_sync_engine(settings)
    yield make_sync_sessions(engine)
    engine.dispose()


def job_body(content: Any = "Hello", **extra: Any) -> dict[str, Any]:
    return {"model": "fast", "messages": [{"role": "user", "content": content}], **extra}


def line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "body": job_body(f"prompt for {custom_id}", **body)}


def ndjson(lines: list[Any]) -> bytes:
    return b"".join(
        (item if isinstance(item, bytes) else json.dumps(item).encode()) + b"\n" for item in lines
    )


async def in_chunks(payload: bytes, size: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    for start in range(0, len(payload), size):
        yield payload[start : start + size]


def error_of(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    """The error object, after checking the status and that the body has exactly the error shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"type", "message", "param"}, body
    error: dict[str, Any] = body["error"]
    assert error["type"] == "invalid_request_error", error
    return error


async def assert_nothing_stored(client: httpx.AsyncClient, sql: sessionmaker[Session]) -> None:
    """No job and no batch, as the tenant lists them and as SQL counts them (for every tenant)."""
    assert (await client.get("/v1/jobs")).json()["data"] == []
    assert (await client.get("/v1/batches")).json()["data"] == []
    with sql() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert session.scalar(select(func.count()).select_from(Batch)) == 0


# --- Limits on one job ------------------------------------------------------------------------


@sqlite_only
async def test_job_with_more_messages_than_the_limit_is_refused_naming_the_limit(
    api_client: httpx.AsyncClient, sql: sessionmaker[Session]
) -> None:
    messages = [{"role": "user", "content": f"m{i}"} for i in range(MAX_MESSAGES + 1)]

    response = await api_client.post("/v1/jobs", json={"model": "fast", "messages": messages})

    error = error_of(response)
    assert error["param"] == "messages"
    assert str(MAX_MESSAGES) in error["message"]
    await assert_nothing_stored(api_client, sql)


@sqlite_only
async def test_job_with_exactly_the_message_limit_is_accepted(api_client: httpx.AsyncClient) -> None:
    messages = [{"role": "user", "content": f"m{i}"} for i in range(MAX_MESSAGES)]

    response = await api_client.post("/v1/jobs", json={"model": "fast", "messages": messages})

    assert response.status_code == 202, response.text


@sqlite_only
@pytest.mark.parametrize(
    ("field", "value", "bound"),
    [
        ("max_tokens", MAX_OUTPUT_TOKENS + 1, f"less than or equal to {MAX_OUTPUT_TOKENS}"),
        ("max_completion_tokens", 10**30, f"less than or equal to {MAX_OUTPUT_TOKENS}"),
        ("max_tokens", -5, "greater than or equal to 1"),
        ("max_completion_tokens", 0, "greater than or equal to 1"),
        ("temperature", -1, "greater than or equal to 0"),
        ("top_p", -0.1, "greater than or equal to 0"),
        ("presence_penalty", -2.5, "greater than or equal to -2"),
        ("frequency_penalty", 2.5, "less than or equal to 2"),
    ],
)
async def test_number_out_of_range_is_refused_naming_the_field_and_the_bound(
    api_client: httpx.AsyncClient, sql: sessionmaker[Session], field: str, value: float, bound: str
) -> None:
    response = await api_client.post("/v1/jobs", json=job_body(**{field: value}))

    error = error_of(response)
    assert error["param"] == field
    assert f"'{field}'" in error["message"] and bound in error["message"]
    await assert_nothing_stored(api_client, sql)


# --- Bodies that are not JSON objects, or JSON that cannot be read ----------------------------


@sqlite_only
@pytest.mark.parametrize(
    "send",
    [
        pytest.param(
            {"content": json.dumps(job_body()), "headers": {"Content-Type": "text/plain"}}, id="text"
        ),
        pytest.param({"data": {"model": "fast", "messages": "hi"}}, id="form-urlencoded"),
        pytest.param({"files": {"body": ("job.json", json.dumps(job_body()).encode())}}, id="multipart"),
    ],
)
async def test_job_sent_as_another_content_type_is_refused_asking_for_json(
    api_client: httpx.AsyncClient, sql: sessionmaker[Session], send: dict[str, Any]
) -> None:
    response = await api_client.post("/v1/jobs", **send)

    error = error_of(response)
    assert "Content-Type: application/json" in error["message"]
    await assert_nothing_stored(api_client, sql)


TOO_DEEP = b"[" * 100_000 + b"]" * 100_000
TOO_LONG_NUMBER = b"1" * 5_000


@sqlite_only
@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/v1/jobs", b'{"model": "fast", "messages": ' + TOO_DEEP + b"}", "nested too deeply"),
        ("/v1/jobs", b'{"model": "fast", "seed": ' + TOO_LONG_NUMBER + b"}", "more than 4300 digits"),
        ("/v1/jobs", b'{"model": "fast", "user": "\xff"}', "can't decode byte 0xff"),
        ("/v1/jobs", b'{"model": "fast", ', "Expecting property name"),
        ("/v1/batches", b'{"requests": ' + TOO_DEEP + b"}", "nested too deeply"),
        ("/v1/batches", b'{"requests": [], "n": ' + TOO_LONG_NUMBER + b"}", "more than 4300 digits"),
    ],
)
async def test_json_that_cannot_be_read_is_refused_saying_why(
    api_client: httpx.AsyncClient, sql: sessionmaker[Session], path: str, body: bytes, reason: str
) -> None:
    response = await api_client.post(path, content=body, headers=JSON)

    error = error_of(response)
    assert error["message"].startswith("The body is not valid JSON")
    assert reason in error["message"]
    await assert_nothing_stored(api_client, sql)


# --- NaN and Infinity (Python's JSON reader accepts them; JSON does not) -----------------------

NAN_BODY = '{"model": "fast", "messages": [{"role": "user", "content": "hi"%s}]%s}'


@sqlite_only
@pytest.mark.parametrize(
    ("message_extra", "body_extra", "param"),
    [
        ("", ', "temperature": NaN', "temperature"),
        ("", ', "top_p": Infinity', "top_p"),
        ("", ', "max_tokens": -Infinity', "max_tokens"),
        ("", ', "seed": NaN', "seed"),
        ("", ', "max_completion_tokens": 1e400', "max_completion_tokens"),  # overflows to inf
        # Inside free-form objects pydantic would have stored null in their place, silently.
        ("", ', "response_format": {"type": "json_schema", "weight": NaN}', "response_format.weight"),
        ("", ', "tools": [{"type": "function", "function": {"score": Infinity}}]', "tools.0.function.score"),
        (', "weight": NaN', "", "messages.0.weight"),
    ],
)
async def test_nan_or_infinity_anywhere_in_a_job_is_refused_naming_where(
    api_client: httpx.AsyncClient, sql: sessionmaker[Session], message_extra: str, body_extra: str, param: str
) -> None:
    body = NAN_BODY % (message_extra, body_extra)

    response = await api_client.post("/v1/jobs", content=body.encode(), headers=JSON)

    error = error_of(response)
    assert error["param"] == param
    assert f"'{param}'" in error["message"] and "NaN and Infinity" in error["message"]
    await assert_nothing_stored(api_client, sql)


@sqlite_only
async def test_nan_in_a_batch_line_rejects_the_batch_naming_line_and_field(
    api_client: httpx.AsyncClient, sql: sessionmaker[Session]
) -> None:
    bad = b'{"custom_id": "b", "body": ' + (NAN_BODY % ("", ', "temperature": NaN')).encode() + b"}"

    response = await api_client.post("/v1/batches", content=ndjson([line("a"), bad]), headers=NDJSON)

    error = error_of(response)
    assert error["message"].startswith("Line 2:")
    assert error["param"] == "line 2.body.temperature"
    await assert_nothing_stored(api_client, sql)


@sqlite_only
async def test_nesting_deeper_than_the_limit_is_refused_naming_where(
    api_client: httpx.AsyncClient, sql: sessionmaker[Session]
) -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(MAX_JSON_DEPTH):
        schema = {"type": "object", "properties": {"x": schema}}
    tool = {"type": "function", "function": {"name": "deep", "parameters": schema}}

    response = await api_client.post("/v1/jobs", json=job_body(tools=[tool]))

    error = error_of(response)
    assert error["param"].startswith("tools.0.function.parameters.properties.x")
    assert f"nested more than {MAX_JSON_DEPTH} levels" in error["message"]
    await assert_nothing_stored(api_client, sql)


# --- Unicode: what cannot be stored is refused; the rest comes back exactly as sent ------------


def batch(*lines: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {"requests": list(lines), **options}


@pytest.mark.parametrize(
    ("path", "body", "param", "reason"),
    [
        ("/v1/jobs", job_body("a\ud800b"), "messages.0.content", "lone surrogate"),
        ("/v1/jobs", job_body("a\x00b"), "messages.0.content", "NUL"),
        ("/v1/jobs", job_body(metadata={"k": "\udfff"}), "metadata.k", "lone surrogate"),
        ("/v1/jobs", job_body(metadata={"k\x00": "v"}), "metadata", "NUL"),
        ("/v1/jobs", job_body([{"type": "text", "text": "\x00"}]), "messages.0.content.0.text", "NUL"),
        ("/v1/batches", batch(line("a"), line("b") | {"custom_id": "b\x00"}), "requests.1.custom_id", "NUL"),
        (
            "/v1/batches",
            batch(line("a"), line("b") | {"custom_id": "\ud83d"}),
            "requests.1.custom_id",
            "surrogate",
        ),
        ("/v1/batches", batch(line("a"), metadata={"team": "\x00"}), "metadata.team", "NUL"),
        ("/v1/batches", batch(line("a", user="\x00")), "requests.0.body.user", "NUL"),
    ],
)
async def test_text_a_database_cannot_store_is_refused_naming_where(
    api_client: httpx.AsyncClient,
    sql: sessionmaker[Session],
    path: str,
    body: dict[str, Any],
    param: str,
    reason: str,
) -> None:
    # Escaped as JSON sends them (`\ud800`, `\u0000`): valid JSON, invalid text.
    response = await api_client.post(path, content=json.dumps(body).encode(), headers=JSON)

    error = error_of(response)
    assert error["param"] == param
    assert f"'{param}'" in error["message"] and reason in error["message"]
    await assert_nothing_stored(api_client, sql)


UNUSUAL_TEXT = (
    "emoji 😀👍🏽🇳🇴, astral \U0001d54f𝄞𓀀, right-to-left مرحبا بالعالم שלום \u200f(rlm) 中文 e\u0301"
)


async def test_emoji_astral_and_right_to_left_text_is_stored_and_answered_unchanged(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sql: sessionmaker[Session]
) -> None:
    metadata = {"note": "👍🏽 שלום", "\U0001d54f": "ok"}

    submitted = await api_client.post("/v1/jobs", json=job_body(UNUSUAL_TEXT, metadata=metadata))
    job_id = submitted.json()["id"]
    await asyncio.to_thread(inline_worker.run, job_id)
    job = (await api_client.get(f"/v1/jobs/{job_id}")).json()

    assert submitted.status_code == 202, submitted.text
    assert job["metadata"] == metadata
    assert job["result"]["choices"][0]["message"]["content"] == f"echo: {UNUSUAL_TEXT}"
    with sql() as session:
        stored = session.get(Job, job_id)
        assert stored is not None
        assert stored.request["messages"] == [{"role": "user", "content": UNUSUAL_TEXT}]


async def test_unusual_text_in_batch_custom_ids_comes_back_in_the_results(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker
) -> None:
    custom_ids = ["行-😀", "שלום-1", "𝄞"]

    created = await api_client.post(
        "/v1/batches", content=ndjson([line(c) for c in custom_ids]), headers=NDJSON
    )
    await asyncio.to_thread(inline_worker.run_queued)
    results = await api_client.get(f"/v1/batches/{created.json()['id']}/results")

    assert created.status_code == 201, created.text
    lines = [json.loads(text) for text in results.text.splitlines()]
    assert [r["custom_id"] for r in lines] == custom_ids
    assert [r["result"]["choices"][0]["message"]["content"] for r in lines] == [
        f"echo: prompt for {c}" for c in custom_ids
    ]


# --- Other values a database would refuse -----------------------------------------------------


async def test_deadline_out_of_range_in_utc_is_refused_naming_it(
    api_client: httpx.AsyncClient, sql: sessionmaker[Session]
) -> None:
    # A valid RFC 3339 time, but year 10000 once converted to UTC.
    response = await api_client.post("/v1/jobs", json=job_body(deadline="9999-12-31T23:59:59-23:59"))

    error = error_of(response)
    assert error["param"] == "deadline"
    assert "out of range" in error["message"]
    await assert_nothing_stored(api_client, sql)


@postgres_only
@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/job_%00",
        "/v1/jobs?after=%00",
        "/v1/batches/batch_%00",
        "/v1/usage?from=0001-01-01T00:00:00%2B23:59",  # year 0 in UTC
    ],
)
async def test_value_postgres_refuses_in_a_path_or_query_is_a_400_not_an_outage(
    api_client: httpx.AsyncClient, path: str
) -> None:
    response = await api_client.get(path)

    error = error_of(response)
    assert error["message"].startswith("The database refused a value of this request")
    assert "retry-after" not in response.headers


@sqlite_only
@pytest.mark.parametrize(
    ("path", "param"),
    [("/v1/jobs?after=", "after"), ("/v1/jobs?batch_id=", "batch_id"), ("/v1/batches?after=", "after")],
)
async def test_an_id_in_a_query_longer_than_any_id_is_refused_naming_it(
    api_client: httpx.AsyncClient, path: str, param: str
) -> None:
    response = await api_client.get(path + "x" * 65)

    assert error_of(response)["param"] == param


@sqlite_only
async def test_empty_idempotency_key_is_refused_naming_the_header(
    api_client: httpx.AsyncClient, sql: sessionmaker[Session]
) -> None:
    response = await api_client.post("/v1/jobs", json=job_body(), headers={"Idempotency-Key": ""})

    error = error_of(response)
    assert error["param"] == "Idempotency-Key"
    await assert_nothing_stored(api_client, sql)


@sqlite_only
async def test_webhook_endpoint_url_cannot_be_set_to_null(api_client: httpx.AsyncClient) -> None:
    created = (
        await api_client.post("/v1/webhook-endpoints", json={"url": "https://hooks.example.com/a"})
    ).json()

    response = await api_client.patch(f"/v1/webhook-endpoints/{created['id']}", json={"url": None})
    after = (await api_client.get(f"/v1/webhook-endpoints/{created['id']}")).json()

    error = error_of(response)
    assert error["param"] == "url"
    assert "null" in error["message"]
    assert after["url"] == "https://hooks.example.com/a"


# --- Batches: all or nothing, whatever the line says -----------------------------------------


def assert_too_large(response: httpx.Response, line_number: int, param: str) -> None:
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["type"] == "request_too_large"
    assert error["message"].startswith(f"Line {line_number} is longer than {MAX_BODY_BYTES} bytes")
    assert error["param"] == param


@sqlite_only
@pytest.mark.parametrize("delivery", ["one-chunk", "streamed"])
async def test_ndjson_line_longer_than_one_request_may_be_is_refused_413_naming_the_line(
    api_client: httpx.AsyncClient, sql: sessionmaker[Session], delivery: str
) -> None:
    long_line = {"custom_id": "long", "body": job_body("x" * (MAX_BODY_BYTES + 1))}
    payload = ndjson([line("a"), long_line, line("c")])
    content = payload if delivery == "one-chunk" else in_chunks(payload, 64 * 1024)

    response = await api_client.post("/v1/batches", content=content, headers=NDJSON)

    assert_too_large(response, 2, "line 2")
    await assert_nothing_stored(api_client, sql)


@sqlite_only
async def test_blank_ndjson_lines_are_skipped_up_to_the_request_cap_then_refused(
    api_client: httpx.AsyncClient, sql: sessionmaker[Session]
) -> None:
    few_blanks = ndjson([line("a"), b"", b"  ", line("b")])
    newlines_only = ndjson([line("a"), *[b""] * (MAX_BATCH_REQUESTS + 1), line("b")])

    accepted = await api_client.post("/v1/batches", content=few_blanks, headers=NDJSON)
    refused = await api_client.post("/v1/batches", content=newlines_only, headers=NDJSON)

    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["counts"]["total"] == 2
    error = error_of(refused)
    blank_line = MAX_BATCH_REQUESTS + 2  # the first blank line past the cap
    assert error["message"].startswith(f"Line {blank_line}: more than {MAX_BATCH_REQUESTS} blank lines")
    assert error["param"] == f"line {blank_line}"


@sqlite_only
async def test_json_batch_request_is_measured_in_utf8_bytes_not_escaped_json(
    api_client: httpx.AsyncClient,
) -> None:
    # 900 KB of UTF-8 (3 bytes a character), 1.8 MB if non-ASCII were counted \u-escaped.
    wide = {"custom_id": "wide", "body": job_body("字" * 300_000)}
    padding = {"custom_id": "padding", "body": job_body("x" * 200_000)}  # the upload passes 1 MB

    response = await api_client.post("/v1/batches", json={"requests": [wide, padding]})

    assert response.status_code == 201, response.text


@sqlite_only
async def test_json_batch_request_longer_than_one_request_may_be_is_refused_413_naming_it(
    api_client: httpx.AsyncClient, sql: sessionmaker[Session]
) -> None:
    long_line = {"custom_id": "long", "body": job_body("x" * (MAX_BODY_BYTES + 1))}

    response = await api_client.post("/v1/batches", json={"requests": [line("a"), line("b"), long_line]})

    assert_too_large(response, 3, "requests.2")
    await assert_nothing_stored(api_client, sql)


BAD_LINES = {
    "truncated": b'{"custom_id": "bad", "body": {"model": "fast"',
    "not-utf8": b'{"custom_id": "bad\xff", "body": {}}',
    "not-an-object": b'["custom_id", "bad"]',
    "number-too-long": b'{"custom_id": "bad", "n": ' + TOO_LONG_NUMBER + b"}",
    "nested-too-deep": TOO_DEEP[:5000] + TOO_DEEP[-5000:],
}


@sqlite_only
@pytest.mark.parametrize("bad", BAD_LINES.values(), ids=BAD_LINES.keys())
async def test_malformed_ndjson_line_after_valid_ones_stores_nothing(
    api_client: httpx.AsyncClient, sql: sessionmaker[Session], bad: bytes
) -> None:
    valid = [{"custom_id": f"ok-{i}", "body": job_body("p" * 400)} for i in range(MAX_BATCH_REQUESTS - 1)]
    payload = ndjson([*valid, bad, line("after")])
    assert len(payload) > 4 * CHUNK_BYTES  # the valid lines arrive, and are parsed, first

    response = await api_client.post("/v1/batches", content=in_chunks(payload), headers=NDJSON)

    error = error_of(response)
    bad_line = MAX_BATCH_REQUESTS
    assert error["message"].startswith(f"Line {bad_line}:")
    assert error["param"].startswith(f"line {bad_line}")
    await assert_nothing_stored(api_client, sql)


@sqlite_only
@pytest.mark.parametrize(
    ("upload", "param"),
    [
        ("json", "requests.1.body.colour"),
        ("ndjson", "line 2.body.colour"),
    ],
)
async def test_unknown_field_in_a_batch_line_body_is_refused_naming_its_full_path(
    api_client: httpx.AsyncClient, sql: sessionmaker[Session], upload: str, param: str
) -> None:
    lines = [line("a"), line("b", colour="blue"), line("c")]
    if upload == "json":
        response = await api_client.post("/v1/batches", json={"requests": lines})
    else:
        response = await api_client.post("/v1/batches", content=ndjson(lines), headers=NDJSON)

    error = error_of(response)
    assert error["message"] == f"Line 2: Unrecognized request argument supplied: {param}"
    assert error["param"] == param
    await assert_nothing_stored(api_client, sql)


@sqlite_only
async def test_unknown_field_beside_custom_id_is_refused_naming_it(
    api_client: httpx.AsyncClient, sql: sessionmaker[Session]
) -> None:
    # (`method` and `url` are an OpenAI batch line's own fields, and accepted.)
    lines = [line("a"), {**line("b"), "colour": "blue"}]

    response = await api_client.post("/v1/batches", json={"requests": lines})

    error = error_of(response)
    assert error["message"] == "Line 2: Unrecognized request argument supplied: requests.1.colour"
    await assert_nothing_stored(api_client, sql)


@sqlite_only
async def test_ndjson_batch_over_the_request_limit_is_refused_naming_the_limit(
    api_client: httpx.AsyncClient, sql: sessionmaker[Session]
) -> None:
    payload = ndjson([line(f"r{i}") for i in range(MAX_BATCH_REQUESTS + 1)])

    response = await api_client.post("/v1/batches", content=in_chunks(payload), headers=NDJSON)

    error = error_of(response)
    assert f"at most {MAX_BATCH_REQUESTS} requests" in error["message"]
    assert error["param"] == "requests"
    await assert_nothing_stored(api_client, sql)


async def test_a_missing_body_is_named_as_such(api_client: httpx.AsyncClient) -> None:
    answer = await api_client.post("/v1/jobs")

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] is None and "no body" in error["message"] and "None" not in error["message"]
