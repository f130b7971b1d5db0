"""The simulator's token counting rule, which other tests use to predict usage."""

from __future__ import annotations

import pytest

from sim.tokens import content_text, count_tokens, last_user_text, message_tokens, prompt_tokens


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)])
def test_a_text_costs_a_token_per_four_characters_rounded_up(text: str, tokens: int) -> None:
    assert count_tokens(text) == tokens


def test_a_message_costs_four_tokens_plus_its_text() -> None:
    assert message_tokens({"role": "user", "content": "hello"}) == 4 + 2
    assert message_tokens({"role": "assistant", "content": None}) == 4


def test_list_content_joins_its_text_parts_and_ignores_the_rest() -> None:
    content = [
        {"type": "text", "text": "ab"},
        {"type": "image_url", "image_url": {"url": "data:..."}},
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "cd"}]},
        {"type": "text", "text": "ef"},
    ]

    assert content_text(content) == "abcdef"


def test_prompt_tokens_add_the_anthropic_system_prompt_as_one_more_message() -> None:
    messages = [{"role": "user", "content": "12345678"}, {"role": "assistant", "content": "1"}]

    assert prompt_tokens(messages) == (4 + 2) + (4 + 1)
    assert prompt_tokens(messages, system="sys") == (4 + 2) + (4 + 1) + (4 + 1)
    assert prompt_tokens(messages, system=[{"type": "text", "text": "12345"}]) == 11 + 4 + 2


def test_the_echoed_text_is_the_last_user_message() -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
        {"role": "assistant", "content": "reply"},
    ]

    assert last_user_text(messages) == "second"
    assert last_user_text([{"role": "system", "content": "only system"}]) == ""
