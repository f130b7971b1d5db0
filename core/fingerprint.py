"""Request fingerprints: which chat requests count as "the same" for the cache and single-flight.

A fingerprint is the SHA-256 (hex) of one canonical JSON document holding everything that
can change a provider's answer: the scope (the tenant id, or `"shared"` for tenants that opted
into the shared cache), the model alias the client asked for, the messages, and every chat
parameter except `user`. Spellings that provably cannot change the answer are normalised
first, so equivalent requests share one cache entry and one upstream call. Anything we are
not sure about is left as given: a false miss costs one upstream call, a false hit hands a
client an answer to a different question.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from core.domain.chat import ChatRequest

# Bump when the canonical form changes, so old entries can never match a new meaning.
FINGERPRINT_VERSION = 1

# The scope of tenants that opted into the fleet-wide shared cache.
SHARED_SCOPE = "shared"

# `user` is the end user's id, which OpenAI uses for abuse monitoring only: it never changes
# the answer. Keeping it would split a tenant's cache per end user (a chatbot's users asking
# the same question would each cost an upstream call); isolation between tenants is the
# scope's job, not this field's.
_PARAMS_THAT_DO_NOT_CHANGE_THE_ANSWER: frozenset[str] = frozenset({"user"})

# Real-valued sampling parameters: 1 and 1.0 (and -0.0 and 0.0) are the same value.
_REAL_PARAMS: frozenset[str] = frozenset({"temperature", "top_p", "presence_penalty", "frequency_penalty"})

# Integer parameters that JSON clients sometimes send as 100.0.
_INTEGER_PARAMS: frozenset[str] = frozenset({"max_tokens", "max_completion_tokens", "n", "seed"})

# Explicit values that mean exactly what leaving the field out means, on every provider.
# `n` is 1 unless asked (CONTRACT.md allows only 1). Sampling defaults such as temperature=1
# are deliberately absent: OpenAI-compatible servers (Ollama, vLLM) use their own model
# defaults when the field is left out, so "absent" and "1.0" can give different answers.
_VALUES_EQUAL_TO_ABSENT: dict[str, Any] = {"n": 1}


def request_fingerprint(model: str, request: ChatRequest, *, scope: str) -> str:
    """The cache / single-flight key of `request` sent to the model alias `model` within `scope`.

    `scope` is the tenant id, or `SHARED_SCOPE` when the tenant opted into the shared cache.
    """
    return hashlib.sha256(canonical_request(model, request, scope=scope).encode("utf-8")).hexdigest()


def canonical_request(model: str, request: ChatRequest, *, scope: str) -> str:
    """The canonical JSON that `request_fingerprint` hashes (public for tests and debugging)."""
    document = {
        "v": FINGERPRINT_VERSION,
        "scope": scope,
        "model": model,
        "messages": request.messages,
        "params": _normalised_params(request.params),
    }
    if request.anthropic is not None:  # what only Anthropic has can change the answer too
        document["anthropic"] = request.anthropic
    # allow_nan=False: NaN is not equal to itself, so it has no canonical form.
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _normalised_params(params: dict[str, Any]) -> dict[str, Any]:
    # An explicit null means "not set" in the OpenAI API.
    normalised = {
        name: _normalised_number(name, value)
        for name, value in params.items()
        if value is not None and name not in _PARAMS_THAT_DO_NOT_CHANGE_THE_ANSWER
    }

    if "stop" in normalised:
        stop = _normalised_stop(normalised.pop("stop"))
        if stop is not None:
            normalised["stop"] = stop

    # `max_tokens` is the older name of `max_completion_tokens`. Both given with different
    # values is ambiguous (the adapter decides which wins), so that case keeps both as given.
    max_tokens = normalised.pop("max_tokens", None)
    max_completion_tokens = normalised.pop("max_completion_tokens", None)
    if max_tokens is None or max_completion_tokens is None or max_tokens == max_completion_tokens:
        limit = max_completion_tokens if max_completion_tokens is not None else max_tokens
        if limit is not None:
            normalised["max_completion_tokens"] = limit
    else:
        normalised["max_tokens"] = max_tokens
        normalised["max_completion_tokens"] = max_completion_tokens

    for name, default in _VALUES_EQUAL_TO_ABSENT.items():
        if name in normalised and normalised[name] == default:
            del normalised[name]
    return normalised


def _normalised_stop(stop: Any) -> Any:
    """`"x"` is `["x"]`; generation halts at the first match of any sequence, so order and
    repeats do not matter; no sequences is no `stop`."""
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        return sorted(set(stop)) or None
    return stop


def _normalised_number(name: str, value: Any) -> Any:
    if name in _REAL_PARAMS:
        return _as_real(value)
    if name in _INTEGER_PARAMS:
        return _as_integer(value)
    return value


def _as_real(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value  # invalid, left for the provider to refuse; never equal to a valid value
    return float(value) + 0.0  # + 0.0 turns -0.0 into 0.0


def _as_integer(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
