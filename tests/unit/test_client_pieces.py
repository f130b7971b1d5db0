"""The client library's and batch CLI's pure parts: retry timing, the shared request core
driven by hand, progress arithmetic and its display, the upload's lines, the resumable
results file, webhook verification."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.webhooks.signing import new_secret, webhook_headers
from jobgate.client import (
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    RetryPolicy,
    WebhookVerificationError,
    verify_webhook,
)
from jobgate.client._core import Call, Pause, Send, exchange, status_error
from jobgate.client._operations import Operations
from jobgate.client._retry import parse_retry_after
from jobgate.client._upload import NdjsonUpload
from jobgate.client.errors import APIConnectionError
from jobgate.client.progress import BatchProgress, ProgressMeter
from jobgate.progress_bar import ProgressDisplay, bar_line, duration_text
from jobgate.results_file import NotAResultsFile, ResultsFile


def _error(status: int, error_type: str = "x", retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = {"error": {"type": error_type, "message": "no", "param": "model"}}
    return httpx.Response(status, json=body, headers=headers)


# --- retries -----------------------------------------------------------------------------------


def test_retry_after_is_waited_exactly_and_past_the_cap_the_error_is_raised() -> None:
    policy = RetryPolicy(max_retry_after_s=30)
    assert policy.delay_s(0, status_error(_error(429, retry_after="7"))) == 7.0
    assert policy.delay_s(0, status_error(_error(503, retry_after="0"))) == 0.0
    assert policy.delay_s(0, status_error(_error(429, retry_after="31"))) is None


def test_backoff_doubles_with_jitter_up_to_its_cap_and_stops_after_max_retries() -> None:
    policy = RetryPolicy(max_retries=3, base_delay_s=1, max_delay_s=3, random=lambda: 1.0)
    failure = APIConnectionError("reset")
    assert [policy.delay_s(n, failure) for n in range(4)] == [1.0, 2.0, 3.0, None]
    low = RetryPolicy(base_delay_s=1, random=lambda: 0.0)
    assert low.delay_s(0, failure) == 0.5


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413])
def test_a_refusal_is_never_retried(status: int) -> None:
    assert RetryPolicy().delay_s(0, status_error(_error(status))) is None


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3", now=now) == 3.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now=now) == 90.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("nan", now=now) is None
    assert parse_retry_after(None) is None


def test_errors_are_typed_by_status_in_the_apis_own_words() -> None:
    error = status_error(_error(400, "invalid_request_error"))
    assert isinstance(error, BadRequestError)
    assert (error.status_code, error.type, error.message, error.param) == (
        400,
        "invalid_request_error",
        "no",
        "model",
    )
    assert isinstance(status_error(_error(404)), NotFoundError)
    assert isinstance(status_error(_error(409)), ConflictError)
    limited = status_error(_error(429, retry_after="5"))
    assert isinstance(limited, RateLimitError) and limited.retry_after_s == 5.0
    assert isinstance(status_error(httpx.Response(502, text="<html>bad gateway</html>")), InternalServerError)


def test_a_retried_submit_sends_the_same_call_with_the_same_idempotency_key() -> None:
    ops = Operations(RetryPolicy(), new_key=lambda: "key-1")
    op = ops.submit_job({"model": "fast", "messages": []}, None)
    first = op.send(None)
    assert isinstance(first, Send) and first.call.headers()["Idempotency-Key"] == "key-1"
    assert op.send(_error(429, retry_after="2")) == Pause(2.0)
    second = op.send(None)
    assert isinstance(second, Send) and second.call == first.call
    with pytest.raises(StopIteration) as done:
        op.send(httpx.Response(202, json={"id": "job_1"}))
    assert done.value.value == {"id": "job_1"}


def test_each_logical_submit_gets_its_own_key() -> None:
    ops = Operations(RetryPolicy())
    keys = {ops.submit_job({}, None).send(None).call.idempotency_key for _ in range(3)}  # type: ignore[union-attr]
    assert len(keys) == 3


def test_a_connection_failure_is_retried_then_raised_from_the_transport_error() -> None:
    op = exchange(Call("GET", "/v1/jobs/x"), RetryPolicy(max_retries=1, random=lambda: 0.0))
    op.send(None)
    failure = httpx.ConnectError("refused")
    assert isinstance(op.send(failure), Pause)
    op.send(None)
    with pytest.raises(APIConnectionError) as raised:
        op.send(failure)
    assert raised.value.__cause__ is failure


# --- progress ----------------------------------------------------------------------------------


def _batch(done: int, total: int = 100, failed: int = 0) -> dict[str, Any]:
    counts = {"total": total, "queued": total - done, "running": 0, "succeeded": done - failed}
    return {"id": "batch_1", "counts": {**counts, "failed": failed, "cancelled": 0}}


def test_rate_and_eta_come_from_reads_within_the_window() -> None:
    meter = ProgressMeter(window_s=10)
    first = meter.update(_batch(0), 100.0)  # type: ignore[arg-type]
    assert first.rate_per_s is None and first.eta_s is None
    second = meter.update(_batch(20, failed=2), 104.0)  # type: ignore[arg-type]
    assert second.rate_per_s == 5.0 and second.eta_s == 16.0 and second.failed == 2
    # Reads older than the window stop counting: a batch that slowed down shows its new rate.
    meter.update(_batch(60), 112.0)  # type: ignore[arg-type]
    slower = meter.update(_batch(62), 122.0)  # type: ignore[arg-type]
    assert slower.rate_per_s == pytest.approx(0.2)
    done = meter.update(_batch(100), 130.0)  # type: ignore[arg-type]
    assert done.eta_s == 0.0 and done.final and done.elapsed_s == 30.0


def _progress(done: int, *, total: int = 2000, failed: int = 0) -> BatchProgress:
    return BatchProgress(
        batch=_batch(done, total, failed),  # type: ignore[arg-type]
        total=total,
        done=done,
        succeeded=done - failed,
        failed=failed,
        cancelled=0,
        elapsed_s=10,
        rate_per_s=85.25,
        eta_s=125,
    )


def test_the_bar_says_done_of_total_rate_eta_and_failures() -> None:
    line = bar_line(_progress(1000, failed=3), unicode=False)
    assert line == "[############------------] 1000/2000 (50%)  85.2/s  ETA 2m05s  3 failed"
    assert duration_text(None) == "--" and duration_text(7200) == "2h00m"


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_on_a_terminal_the_bar_is_redrawn_in_place_and_ends_its_line_when_final() -> None:
    stream = _Stream(tty=True)
    display = ProgressDisplay(stream)
    display(_progress(10))
    display(_progress(2000))
    frames = stream.getvalue().split("\r\x1b[K")
    assert (
        frames[0] == ""
        and "10/2000" in frames[1]
        and frames[2].endswith("2000/2000 (100%)  85.2/s  ETA 2m05s\n")
    )


def test_elsewhere_plain_lines_are_printed_when_the_count_moved_at_most_every_interval() -> None:
    clock = iter([0.0, 1.0, 2.0, 6.0, 7.0])
    stream = _Stream(tty=False)
    display = ProgressDisplay(stream, plain_interval_s=5, monotonic=lambda: next(clock))
    for done in (0, 5, 5, 9, 2000):
        display(_progress(done))
    lines = stream.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["0/2000", "9/2000", "2000/2000"]
    assert "\r" not in stream.getvalue()


# --- the upload --------------------------------------------------------------------------------


def _body(upload: NdjsonUpload) -> list[bytes]:
    return b"".join(upload.chunks()).split(b"\n")


def test_model_fills_only_bodies_without_one_and_every_other_line_goes_as_it_is(tmp_path: Path) -> None:
    lines = [
        b'{"custom_id":"a","body":{"messages":[{"role":"user","content":"hi"}]}}',
        b'{"custom_id":"b","body":{"model":"other","messages":[]}}',
        b'{"custom_id":"c","method":"POST","url":"/v1/chat/completions","body":{"messages":[]}}',
        b"",
        b"{not json",
    ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\r\n".join(lines) + b"\n")
    sent = _body(NdjsonUpload(path, model="fast"))
    assert json.loads(sent[0])["body"]["model"] == "fast"
    assert sent[1] == lines[1]
    assert json.loads(sent[2]) == {**json.loads(lines[2]), "body": {"messages": [], "model": "fast"}}
    assert sent[3:] == [b"", b"{not json", b""]  # line numbers stay the file's
    assert _body(NdjsonUpload(path, model="fast")) == sent  # a retry sends the same bytes


def test_a_list_of_requests_is_sent_as_ndjson() -> None:
    upload = NdjsonUpload([{"custom_id": "a", "body": {"messages": []}}], model="fast")
    assert _body(upload) == [b'{"custom_id":"a","body":{"messages":[],"model":"fast"}}', b""]


# --- the results file --------------------------------------------------------------------------


def _line(n: int) -> dict[str, Any]:
    return {"custom_id": f"c{n}", "job_id": f"job_{n}", "status": "succeeded", "result": None, "error": None}


def test_a_resumed_download_keeps_complete_lines_cuts_a_partial_one_and_skips_what_it_has(
    tmp_path: Path,
) -> None:
    path = tmp_path / "out.jsonl"
    with ResultsFile.open_for_resume(path) as results:
        for n in range(3):
            results.append(_line(n))
    with path.open("ab") as file:
        file.write(json.dumps(_line(3)).encode()[:20])  # a write cut short
    resumed = ResultsFile.open_for_resume(path)
    assert resumed.job_ids == {"job_0", "job_1", "job_2"} and resumed.lines == 3
    with resumed:
        for n in range(5):
            resumed.append(_line(n))
    assert [json.loads(raw)["job_id"] for raw in path.read_text().splitlines()] == [
        f"job_{n}" for n in range(5)
    ]
    assert (resumed.lines, resumed.written) == (5, 2)


def test_a_file_that_is_not_results_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my notes\nmore\n")
    with pytest.raises(NotAResultsFile, match="line 1"):
        ResultsFile.open_for_resume(path)
    assert path.read_text() == "my notes\nmore\n"


# --- webhooks ----------------------------------------------------------------------------------


def test_a_webhook_verifies_with_any_held_secret_and_a_tampered_one_does_not() -> None:
    old, new = new_secret(), new_secret()
    body = json.dumps({"type": "job.succeeded", "data": {"id": "job_1"}}).encode()
    now = int(datetime.now(UTC).timestamp())
    headers = webhook_headers([new], "msg_1", now, body)
    assert verify_webhook(body, headers, [old, new])["data"]["id"] == "job_1"
    assert verify_webhook(body.decode(), {k.upper(): v for k, v in headers.items()}, new)["type"]
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body.replace(b"job_1", b"job_2"), headers, new)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, old)
    stale = webhook_headers([new], "msg_1", now - 3600, body)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(body, stale, new)
    with pytest.raises(ValueError, match="not a webhook secret"):
        verify_webhook(body, headers, "whsec_!!!")
