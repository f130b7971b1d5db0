"""Streamed answers (SSE) in both wire formats, as the SDKs read them (wire-formats.md §7).

The answer (`sim.answer`) is cut into pieces of one token (`CHARS_PER_TOKEN` characters);
the app sends one event a piece, `stream_delay_ms` apart. OpenAI: `chat.completion.chunk`
objects (a role delta, content deltas, a finish chunk, a usage chunk when
`stream_options.include_usage` is set), then `data: [DONE]`. Anthropic: `message_start`,
`content_block_start`, `content_block_delta` (text deltas, or one `input_json_delta` for a
tool call), `content_block_stop`, `message_delta` (stop reason and output tokens),
`message_stop`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from sim.answer import Answer, Finish
from sim.tokens import CHARS_PER_TOKEN
from sim.wire import ChatRequest

_OPENAI_FINISH = {
    Finish.END: "stop",
    Finish.STOP_SEQUENCE: "stop",
    Finish.LENGTH: "length",
    Finish.TOOL_CALL: "tool_calls",
}
_ANTHROPIC_STOP = {
    Finish.END: "end_turn",
    Finish.STOP_SEQUENCE: "stop_sequence",
    Finish.LENGTH: "max_tokens",
    Finish.TOOL_CALL: "tool_use",
}


def pieces(text: str) -> list[str]:
    return [text[i : i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]


def _data(payload: Any) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload}, separators=(',', ':'))}\n\n".encode()


def openai_events(request: ChatRequest, answer: Answer) -> list[bytes]:
    base = {
        "id": f"chatcmpl-{os.urandom(14).hex()}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": request.model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _data(
            {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        )

    events = [chunk({"role": "assistant", "content": ""})]
    if answer.finish is Finish.TOOL_CALL:
        call = {"index": 0, "id": f"call_{os.urandom(12).hex()}", "type": "function"}
        events.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            **call,
                            "function": {"name": answer.tool_name, "arguments": answer.tool_arguments_json},
                        }
                    ]
                }
            )
        )
    else:
        events += [chunk({"content": piece}) for piece in pieces(answer.text)]
    events.append(chunk({}, _OPENAI_FINISH[answer.finish]))
    if request.include_usage:
        usage = {
            "prompt_tokens": request.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": request.prompt_tokens + answer.completion_tokens,
        }
        events.append(_data({**base, "choices": [], "usage": usage}))
    return [*events, b"data: [DONE]\n\n"]


def anthropic_events(request: ChatRequest, answer: Answer) -> list[bytes]:
    message: dict[str, Any] = {
        "id": f"msg_{os.urandom(12).hex()}",
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": request.prompt_tokens, "output_tokens": 1},
    }
    events = [_event("message_start", {"message": message})]
    block: dict[str, Any]
    if answer.finish is Finish.TOOL_CALL:
        block = {
            "type": "tool_use",
            "id": f"toolu_{os.urandom(12).hex()}",
            "name": answer.tool_name,
            "input": {},
        }
        deltas = [{"type": "input_json_delta", "partial_json": answer.tool_arguments_json}]
    else:
        block = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in pieces(answer.text)]
    events.append(_event("content_block_start", {"index": 0, "content_block": block}))
    events += [_event("content_block_delta", {"index": 0, "delta": delta}) for delta in deltas]
    events.append(_event("content_block_stop", {"index": 0}))
    stop = {"stop_reason": _ANTHROPIC_STOP[answer.finish], "stop_sequence": answer.stop_sequence}
    events.append(
        _event("message_delta", {"delta": stop, "usage": {"output_tokens": answer.completion_tokens}})
    )
    events.append(_event("message_stop", {}))
    return events
