"""Pure translation between OpenAI chat-completions and Anthropic Messages, both ways.

Requests: system and developer messages become the top-level `system` (joined with blank
lines); text and image parts become Anthropic blocks (`data:` URLs as base64 sources, other
URLs as url sources); assistant `tool_calls` become `tool_use` blocks and `tool` messages
become `tool_result` blocks in a user message; consecutive messages of one role are merged,
since Anthropic requires the roles to alternate. `max_completion_tokens`/`max_tokens` become
`max_tokens` (4096 when absent), `stop` becomes `stop_sequences`, `temperature` is clamped to
Anthropic's 0..1, `top_p` is kept only without `temperature` (Claude 4 models reject the two
together, and OpenAI clients often send both), `tools`/`tool_choice` are mapped, `user`
becomes `metadata.user_id`.
`response_format` asking for JSON becomes one forced tool whose input is the answer (turned
back into the message's text), `parallel_tool_calls: false` becomes
`disable_parallel_tool_use`, `reasoning_effort` becomes `thinking` with a token budget.
A parameter that would change the answer and has no Anthropic counterpart (`seed`,
`logprobs`, `logit_bias`, penalties, audio, ...) is never dropped: `unsupported_parameter`
names it and the request is refused as `Unsupported`, which sends it to the model's next
target. Operational hints (`store`, `service_tier`, `prompt_cache_key`, `safety_identifier`,
`prediction`) change nothing in the answer and are not sent. `n` above 1 and content it
cannot express (audio, files) are a `BadRequest`, since answering them differently would be
silently wrong. Responses become an
OpenAI `chat.completion` body; a refusal is `ContentFiltered`, an unfinished turn `Truncated`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from core.domain.chat import ChatRequest
from core.errors import BadRequest, ContentFiltered, Truncated, Unsupported

DEFAULT_MAX_TOKENS = 4096
# OpenAI parameters that change the answer and have no Anthropic counterpart, with the value
# that means "not used" (sending that one is fine).
_NO_COUNTERPART: dict[str, Any] = {
    "seed": None,
    "logprobs": False,
    "top_logprobs": None,
    "logit_bias": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "audio": None,
    "web_search_options": None,
    "verbosity": None,
}
# `reasoning_effort` → `thinking.budget_tokens` (Anthropic's minimum budget is 1,024).
THINKING_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}
JSON_TOOL = "json_answer"

_SYSTEM_ROLES = frozenset({"system", "developer"})
_DATA_URL = re.compile(r"data:(?P<media_type>[^;,]+);base64,(?P<data>.*)", re.DOTALL)
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
}


def unsupported_parameter(request: ChatRequest, *, provider: str) -> Unsupported | None:
    """Why an Anthropic target cannot honour `request`, naming the parameter; None if it can."""
    if request.anthropic is not None:
        return None
    params = {key: value for key, value in request.params.items() if value is not None}
    for name, unused in _NO_COUNTERPART.items():
        value = params.get(name)
        if value is not None and value != unused and value not in ({}, []):
            return Unsupported(
                f"{provider}: Anthropic has no counterpart of {name!r}", param=name, provider=provider
            )
    if params.get("modalities") not in (None, ["text"]):
        return Unsupported(
            f"{provider}: Anthropic answers with text only", param="modalities", provider=provider
        )
    if _json_schema(params) is not None and ("tools" in params or "tool_choice" in params):
        message = f"{provider}: a JSON response_format cannot be forced on Anthropic while tools are offered"
        return Unsupported(message, param="response_format", provider=provider)
    effort = params.get("reasoning_effort")
    if effort is not None:
        budget = THINKING_BUDGETS.get(str(effort))
        if budget is None:
            return Unsupported(
                f"{provider}: unknown reasoning_effort {effort!r}",
                param="reasoning_effort",
                provider=provider,
            )
        if (request.max_output_tokens or DEFAULT_MAX_TOKENS) <= budget:
            message = f"{provider}: reasoning_effort {effort!r} needs max_tokens above {budget} on Anthropic"
            return Unsupported(message, param="max_tokens", provider=provider)
        for name in ("temperature", "top_p"):
            if name in params:
                message = f"{provider}: Anthropic takes no {name} with extended thinking (reasoning_effort)"
                return Unsupported(message, param=name, provider=provider)
    return None


def json_tool_name(request: ChatRequest) -> str | None:
    """The forced tool that carries a JSON answer, when `response_format` asks for one."""
    schema = _json_schema(request.params)
    return None if schema is None else schema[0]


def _json_schema(params: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    response_format = params.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return JSON_TOOL, {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}  # type: ignore[union-attr]
        return str(spec.get("name") or JSON_TOOL), spec.get("schema") or {"type": "object"}
    return None


def anthropic_request(request: ChatRequest, model: str, *, provider: str) -> dict[str, Any]:
    """The keyword arguments of `messages.create` for an OpenAI-shaped request, or the
    request as it came when it came in Anthropic's own shape."""
    if request.anthropic is not None:
        return {**request.anthropic, "model": model}
    refused = unsupported_parameter(request, provider=provider)
    if refused is not None:
        raise refused
    params = {key: value for key, value in request.params.items() if value is not None}
    if params.get("n", 1) != 1:
        raise BadRequest(
            f"{provider}: Anthropic returns one choice; n={params['n']} is not supported", provider=provider
        )
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        role = message.get("role")
        if role in _SYSTEM_ROLES:
            system.extend(_texts(message.get("content"), provider=provider))
        elif role == "user":
            _append(messages, "user", _blocks(message.get("content"), provider=provider))
        elif role == "assistant":
            blocks = _blocks(message.get("content"), provider=provider)
            _append(
                messages, "assistant", blocks + _tool_use_blocks(message.get("tool_calls"), provider=provider)
            )
        elif role == "tool":
            _append(messages, "user", [_tool_result_block(message, provider=provider)])
        else:
            raise BadRequest(
                f"{provider}: message role {role!r} cannot be sent to Anthropic", provider=provider
            )

    arguments: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_output_tokens or DEFAULT_MAX_TOKENS,
        "messages": [_collapsed(message) for message in messages],
    }
    if system:
        arguments["system"] = "\n\n".join(system)
    if "stop" in params:
        stop = params["stop"]
        arguments["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if "temperature" in params:
        arguments["temperature"] = min(1.0, max(0.0, float(params["temperature"])))
    elif "top_p" in params:
        arguments["top_p"] = params["top_p"]
    if "tools" in params:
        arguments["tools"] = [_tool(tool, provider=provider) for tool in params["tools"]]
    if "tool_choice" in params:
        arguments["tool_choice"] = _tool_choice(params["tool_choice"], provider=provider)
    if "user" in params:
        arguments["metadata"] = {"user_id": str(params["user"])}
    _add_answer_shape(arguments, params)
    return arguments


def _add_answer_shape(arguments: dict[str, Any], params: dict[str, Any]) -> None:
    """JSON answers, parallel tool use and thinking, as Anthropic expresses them."""
    json_schema = _json_schema(params)
    if json_schema is not None:
        name, schema = json_schema
        arguments["tools"] = [
            {"name": name, "description": "Give the answer as this tool's input.", "input_schema": schema}
        ]
        arguments["tool_choice"] = {"type": "tool", "name": name}
    if params.get("parallel_tool_calls") is False and "tools" in arguments:
        arguments["tool_choice"] = {
            **arguments.get("tool_choice", {"type": "auto"}),
            "disable_parallel_tool_use": True,
        }
    effort = params.get("reasoning_effort")
    if effort is not None:
        arguments["thinking"] = {"type": "enabled", "budget_tokens": THINKING_BUDGETS[str(effort)]}


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": list(blocks)})


def _collapsed(message: dict[str, Any]) -> dict[str, Any]:
    """A message of one text block sent as a plain string, the simplest form the API accepts."""
    content = message["content"]
    if len(content) == 1 and content[0]["type"] == "text":
        return {"role": message["role"], "content": content[0]["text"]}
    return message


def _texts(content: Any, *, provider: str) -> list[str]:
    texts = []
    for block in _blocks(content, provider=provider):
        if block["type"] != "text":
            raise BadRequest(f"{provider}: a system message may hold text only", provider=provider)
        texts.append(block["text"])
    return texts


def _blocks(content: Any, *, provider: str) -> list[dict[str, Any]]:
    """Anthropic content blocks for an OpenAI message content; empty text is dropped, as
    Anthropic rejects empty text blocks."""
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise BadRequest(
            f"{provider}: message content must be a string or a list of parts", provider=provider
        )
    blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image_block(part.get("image_url"), provider=provider))
        else:
            raise BadRequest(
                f"{provider}: content part type {kind!r} cannot be sent to Anthropic", provider=provider
            )
    return blocks


def _image_block(image_url: Any, *, provider: str) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str) or not url:
        raise BadRequest(f"{provider}: an image_url part needs a url", provider=provider)
    if url.startswith("data:"):
        match = _DATA_URL.fullmatch(url)
        if match is None:
            raise BadRequest(f"{provider}: an image data URL must be base64-encoded", provider=provider)
        source = {"type": "base64", "media_type": match["media_type"], "data": match["data"]}
        return {"type": "image", "source": source}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _tool_use_blocks(tool_calls: Any, *, provider: str) -> list[dict[str, Any]]:
    blocks = []
    for call in tool_calls or []:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except json.JSONDecodeError as exc:
            raise BadRequest(
                f"{provider}: tool call arguments are not valid JSON", provider=provider
            ) from exc
        if not isinstance(arguments, dict):
            raise BadRequest(f"{provider}: tool call arguments must be a JSON object", provider=provider)
        blocks.append(
            {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments}
        )
    return blocks


def _tool_result_block(message: dict[str, Any], *, provider: str) -> dict[str, Any]:
    blocks = _blocks(message.get("content"), provider=provider)
    content: Any = blocks
    if all(block["type"] == "text" for block in blocks):
        content = "".join(block["text"] for block in blocks)
    return {"type": "tool_result", "tool_use_id": message.get("tool_call_id"), "content": content}


def _tool(tool: Any, *, provider: str) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(function, dict):
        raise BadRequest(f"{provider}: only function tools can be sent to Anthropic", provider=provider)
    translated: dict[str, Any] = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        translated["description"] = function["description"]
    return translated


def _tool_choice(choice: Any, *, provider: str) -> dict[str, Any]:
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    raise BadRequest(f"{provider}: tool_choice {choice!r} cannot be sent to Anthropic", provider=provider)


def openai_body(
    message: dict[str, Any], *, provider: str, created_s: int, json_tool: str | None = None
) -> dict[str, Any]:
    """An OpenAI `chat.completion` body for an Anthropic `message` body (as a dict). With
    `json_tool`, that forced tool's input is the answer: the message's text, as JSON."""
    stop_reason = message.get("stop_reason")
    if stop_reason == "refusal":
        raise ContentFiltered(f"{provider} refused to answer (stop_reason='refusal')", provider=provider)
    finish_reason = _FINISH_REASONS.get(str(stop_reason))
    if finish_reason is None:
        raise Truncated(
            f"{provider} answered without finishing its turn (stop_reason={stop_reason!r})", provider=provider
        )
    content = message.get("content")
    blocks: list[Any] = (
        [block for block in content if isinstance(block, dict)] if isinstance(content, list) else []
    )
    texts = [
        block["text"]
        for block in blocks
        if block.get("type") == "text" and isinstance(block.get("text"), str)
    ]
    uses = [block for block in blocks if block.get("type") == "tool_use"]
    answer = next((block for block in uses if json_tool is not None and block.get("name") == json_tool), None)
    if answer is not None:
        texts, uses, finish_reason = [json.dumps(answer.get("input") or {})], [], "stop"
    tool_calls = [
        {
            "id": block.get("id"),
            "type": "function",
            "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})},
        }
        for block in uses
    ]
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if tool_calls:
        reply["tool_calls"] = tool_calls
    body: dict[str, Any] = {
        "id": f"chatcmpl-{message.get('id')}",
        "object": "chat.completion",
        "created": created_s,
        "model": message.get("model"),
        "choices": [{"index": 0, "message": reply, "finish_reason": finish_reason, "logprobs": None}],
    }
    usage = message.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("input_tokens"), int):
        body["usage"] = _openai_usage(usage)
    return body


def _openai_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """OpenAI counts cached prompt tokens inside `prompt_tokens`; Anthropic reports them apart."""
    cache_read = usage.get("cache_read_input_tokens") or 0
    cache_write = usage.get("cache_creation_input_tokens") or 0
    prompt_tokens = usage["input_tokens"] + cache_read + cache_write
    completion_tokens = usage.get("output_tokens")
    usage_body: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    if isinstance(completion_tokens, int):
        usage_body["total_tokens"] = prompt_tokens + completion_tokens
    usage_body["prompt_tokens_details"] = {"cached_tokens": cache_read}
    if cache_write:
        usage_body["prompt_tokens_details"]["cache_write_tokens"] = cache_write
    return usage_body
