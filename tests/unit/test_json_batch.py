"""Splitting a JSON batch body into its requests and options as it arrives (`api/json_batch.py`).

However the body is cut into chunks, the same values come out in the same order, each as the
bytes `json.loads` then reads; a body that is not a JSON object of string keys is refused,
naming why; a value too long to hold is refused before it is read whole.
"""

from __future__ import annotations

import json

import pytest

from api.json_batch import SCAN_FACTOR, RequestsSplitter
from core.errors import ApiError, InvalidRequest, PayloadTooLarge

LIMIT = 1000
CUTS = (1, 2, 3, 7, 64, 1 << 20)


def split(body: bytes, size: int) -> list[tuple[str | None, bytes]]:
    splitter = RequestsSplitter(request_limit=LIMIT)
    found: list[tuple[str | None, bytes]] = []
    for start in range(0, len(body), size):
        found += splitter.feed(body[start : start + size])
    return found + splitter.finish()


def refusal(body: bytes, size: int) -> ApiError:
    with pytest.raises(ApiError) as refused:
        split(body, size)
    return refused.value


@pytest.mark.parametrize("size", CUTS)
def test_requests_and_options_come_out_in_order_however_the_body_is_cut(size: int) -> None:
    body = (
        b'\xef\xbb\xbf {"metadata": {"k": "v\\"]}"}, "requests" : [ {"a": [1, {"b": "x]}["}]} ,'
        b' "s\\u00e9" , 12.5e3, null ,true, [] ], "priority":"batch", "n": -7 } \n'
    )

    found = split(body, size)

    assert found == [
        ("metadata", b'{"k": "v\\"]}"}'),
        (None, b'{"a": [1, {"b": "x]}["}]}'),
        (None, b'"s\\u00e9"'),
        (None, b"12.5e3"),
        (None, b"null"),
        (None, b"true"),
        (None, b"[]"),
        ("priority", b'"batch"'),
        ("n", b"-7"),
    ]
    assert [json.loads(raw) for _, raw in found][1:3] == [{"a": [1, {"b": "x]}["}]}, "sé"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "The body is not valid JSON: the body ends before the object does"),
        (b'{"requests": [1], "n": 12', "The body is not valid JSON: the body ends before the object does"),
        (b'{"requests": [1, "ab', "The body is not valid JSON: the body ends inside a value"),
        (b'{"requests": [1] "n": 2}', "The body is not valid JSON: Expecting ',' delimiter (byte 17)"),
        (b'{"requests": [1]} {}', "The body is not valid JSON: Extra data (byte 18)"),
        (b"{requests: [1]}", "The body is not valid JSON: Expecting property name"),
        (b'{"requests" [1]}', "The body is not valid JSON: Expecting ':' delimiter"),
        (b'{"requests": [' + b"[" * 5000 + b"]" * 5000 + b"]}", "nested too deeply"),
        (b"\xff\xfe{\x00}\x00", "send it as UTF-8"),
        (b"[1, 2]", "Expected a JSON object with a 'requests' array."),
        (b'{"requests": {"a": 1}}', "Expected a JSON object with a 'requests' array."),
        (b'{"priority": "batch"}', "Expected a JSON object with a 'requests' array."),
        (b'{"requests": [], "requests": []}', "Expected a JSON object with a 'requests' array."),
    ],
)
@pytest.mark.parametrize("size", (1, 1 << 20))
def test_a_body_that_is_not_a_json_object_with_a_requests_array_is_refused_saying_why(
    body: bytes, says: str, size: int
) -> None:
    refused = refusal(body, size)

    assert isinstance(refused, InvalidRequest)
    assert refused.message.startswith(says) or says in refused.message


@pytest.mark.parametrize("size", (512, 1 << 24))
def test_a_request_too_long_to_hold_is_refused_413_naming_it_before_it_is_read_whole(size: int) -> None:
    padding = "x" * (SCAN_FACTOR * LIMIT)
    body = json.dumps({"requests": [{"a": 1}, {"a": padding}]}).encode()

    refused = refusal(body, size)

    assert isinstance(refused, PayloadTooLarge)
    assert refused.message.startswith(f"Line 2 is longer than {LIMIT} bytes")
    assert refused.param == "requests.1"


def test_only_the_value_being_read_is_held() -> None:
    splitter = RequestsSplitter(request_limit=LIMIT)
    request = json.dumps({"custom_id": "a", "body": {"model": "m", "messages": []}}).encode()
    splitter.feed(b'{"requests": [')
    for _ in range(1000):
        assert splitter.feed(request + b",") == [(None, request)]
        assert len(splitter.buf) < 2 * len(request)
