"""The deterministic answer: echo, stop sequences, max_tokens cuts and tool calls."""

from __future__ import annotations

import json

from sim.answer import Finish, compose_answer
from sim.tokens import count_tokens


def test_the_answer_echoes_the_last_user_message() -> None:
    answer = compose_answer("hello")

    assert answer.text == "echo: hello"
    assert answer.finish is Finish.END
    assert answer.completion_tokens == count_tokens("echo: hello") == 3


def test_an_answer_over_max_tokens_is_cut_to_four_characters_per_token() -> None:
    answer = compose_answer("a long question indeed", max_tokens=2)

    assert answer.text == "echo: a "
    assert answer.finish is Finish.LENGTH
    assert answer.completion_tokens == 2


def test_an_answer_exactly_at_max_tokens_ends_normally() -> None:
    answer = compose_answer("ab", max_tokens=2)

    assert answer.text == "echo: ab"
    assert answer.finish is Finish.END


def test_the_earliest_stop_sequence_cuts_the_answer() -> None:
    answer = compose_answer("one two three", stop=["three", "two", ""])

    assert answer.text == "echo: one "
    assert answer.finish is Finish.STOP_SEQUENCE
    assert answer.stop_sequence == "two"


def test_whichever_cut_comes_first_wins() -> None:
    stopped_first = compose_answer("ab|cdefghijkl", stop=["|"], max_tokens=3)
    cut_first = compose_answer("abcdefghijkl|", stop=["|"], max_tokens=3)

    assert (stopped_first.text, stopped_first.finish) == ("echo: ab", Finish.STOP_SEQUENCE)
    assert (cut_first.text, cut_first.finish, cut_first.stop_sequence) == (
        "echo: abcdef",
        Finish.LENGTH,
        None,
    )


def test_call_tool_prefix_calls_the_offered_tool_with_the_rest_of_the_message() -> None:
    answer = compose_answer("call_tool:  find cats ", tool_name="search", max_tokens=1, stop=["cats"])

    assert answer.finish is Finish.TOOL_CALL
    assert answer.tool_name == "search"
    assert answer.tool_input == {"input": "find cats"}
    assert json.loads(answer.tool_arguments_json) == {"input": "find cats"}
    assert answer.completion_tokens == count_tokens(answer.tool_arguments_json)


def test_call_tool_prefix_without_tools_is_just_echoed() -> None:
    assert compose_answer("call_tool: x").text == "echo: call_tool: x"
