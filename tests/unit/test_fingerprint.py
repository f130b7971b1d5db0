"""Request fingerprints: equal for requests that must get the same answer, different otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from core.domain.chat import ChatRequest
from core.fingerprint import SHARED_SCOPE, canonical_request, request_fingerprint

MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Wie heißt die Hauptstadt von Österreich?"},
]


def fingerprint(params: dict[str, Any] | None = None, *, model: str = "fast", scope: str = "acme") -> str:
    return request_fingerprint(model, ChatRequest(messages=MESSAGES, params=params or {}), scope=scope)


def test_fingerprint_is_a_sha256_hex_digest() -> None:
    value = fingerprint()
    assert len(value) == 64
    assert int(value, 16) >= 0


def test_canonical_form_is_sorted_compact_json_that_keeps_non_ascii_text() -> None:
    request = ChatRequest(messages=[{"role": "user", "content": "Grüß dich"}], params={"temperature": 0})
    assert canonical_request("fast", request, scope="acme") == (
        '{"messages":[{"content":"Grüß dich","role":"user"}],"model":"fast",'
        '"params":{"temperature":0.0},"scope":"acme","v":1}'
    )


def test_same_request_gives_same_fingerprint_whatever_the_key_order() -> None:
    reordered = [{"content": m["content"], "role": m["role"]} for m in MESSAGES]
    params = {
        "temperature": 0.2,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    }
    reversed_params = dict(reversed(list(params.items())))
    assert request_fingerprint("fast", ChatRequest(MESSAGES, params), scope="acme") == request_fingerprint(
        "fast", ChatRequest(reordered, reversed_params), scope="acme"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", 0.7),
        ("top_p", 0.5),
        ("max_tokens", 50),
        ("max_completion_tokens", 50),
        ("stop", ["\n"]),
        ("seed", 7),
        ("tools", [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]),
        ("tool_choice", "required"),
        ("response_format", {"type": "json_object"}),
        ("presence_penalty", 0.5),
        ("frequency_penalty", 0.5),
        ("n", 2),
    ],
)
def test_every_param_that_changes_the_answer_changes_the_fingerprint(name: str, value: Any) -> None:
    assert fingerprint({name: value}) != fingerprint()


def test_model_alias_messages_and_scope_each_change_the_fingerprint() -> None:
    base = fingerprint()
    assert fingerprint(model="smart") != base
    assert fingerprint(scope="globex") != base
    other_messages = ChatRequest(messages=[*MESSAGES[:1], {"role": "user", "content": "And of Italy?"}])
    assert request_fingerprint("fast", other_messages, scope="acme") != base


def test_tenants_share_a_fingerprint_only_in_the_shared_scope() -> None:
    assert fingerprint(scope="acme") != fingerprint(scope="globex")
    assert fingerprint(scope=SHARED_SCOPE) == fingerprint(scope=SHARED_SCOPE)
    assert fingerprint(scope=SHARED_SCOPE) != fingerprint(scope="acme")


def test_end_user_id_does_not_change_the_fingerprint() -> None:
    assert fingerprint({"user": "alice"}) == fingerprint({"user": "bob"}) == fingerprint()


def test_stop_string_equals_a_one_item_list() -> None:
    assert fingerprint({"stop": "END"}) == fingerprint({"stop": ["END"]})


def test_stop_sequence_order_and_repeats_do_not_matter() -> None:
    assert fingerprint({"stop": ["a", "b"]}) == fingerprint({"stop": ["b", "a", "b"]})
    assert fingerprint({"stop": ["a", "b"]}) != fingerprint({"stop": ["a"]})


def test_empty_stop_list_equals_no_stop() -> None:
    assert fingerprint({"stop": []}) == fingerprint()


def test_max_tokens_and_max_completion_tokens_with_the_same_value_are_the_same() -> None:
    assert fingerprint({"max_tokens": 100}) == fingerprint({"max_completion_tokens": 100})
    assert fingerprint({"max_tokens": 100, "max_completion_tokens": 100}) == fingerprint({"max_tokens": 100})
    assert fingerprint({"max_tokens": 100}) != fingerprint({"max_tokens": 200})


def test_conflicting_token_limits_differ_from_either_alone() -> None:
    both = fingerprint({"max_tokens": 100, "max_completion_tokens": 200})
    assert both not in {fingerprint({"max_tokens": 100}), fingerprint({"max_tokens": 200})}


def test_explicit_n_of_one_equals_absent() -> None:
    assert fingerprint({"n": 1}) == fingerprint()


def test_explicit_null_equals_absent() -> None:
    assert fingerprint({"temperature": None, "stop": None, "seed": None}) == fingerprint()


def test_integral_and_fractional_spellings_of_a_number_are_the_same() -> None:
    assert fingerprint({"temperature": 1}) == fingerprint({"temperature": 1.0})
    assert fingerprint({"temperature": 0}) == fingerprint({"temperature": -0.0})
    assert fingerprint({"max_tokens": 64}) == fingerprint({"max_tokens": 64.0})


def test_explicit_sampling_defaults_are_not_assumed_to_equal_absent() -> None:
    # OpenAI-compatible servers (Ollama, vLLM) apply their own defaults when a field is absent.
    assert fingerprint({"temperature": 1.0}) != fingerprint()
