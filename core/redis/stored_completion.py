"""How a finished `Completion` is stored in Redis: cache entries and single-flight results.

One JSON format for both, so an answer taken from the cache, from a flight's leader or from an
upstream call looks the same to the caller. Only complete answers (a terminal finish reason)
may be stored: an error or a partial answer handed to another job would be a wrong answer
that cost nothing to produce and is never retried. Per-call rate-limit headers are not stored;
they describe the upstream at the moment of the original call, not the answer.
"""

from __future__ import annotations

import json
from typing import Any

from core.domain.chat import TERMINAL_FINISH_REASONS, Completion

# Bump when the stored shape changes. During a rolling deploy, a worker that meets an entry in
# another version treats it as a miss instead of misreading it.
STORED_COMPLETION_VERSION = 1


def require_complete_answer(completion: Completion) -> None:
    """Raise ValueError unless `completion` ended with a terminal finish reason."""
    if completion.finish_reason not in TERMINAL_FINISH_REASONS:
        raise ValueError(
            f"refusing to store a completion with finish_reason={completion.finish_reason!r}: "
            f"only {sorted(TERMINAL_FINISH_REASONS)} are complete answers"
        )


def completion_to_document(completion: Completion) -> dict[str, Any]:
    """The JSON-ready form of a complete answer; raises ValueError for a partial one."""
    require_complete_answer(completion)
    return {
        "v": STORED_COMPLETION_VERSION,
        "body": completion.body,
        "input_tokens": completion.input_tokens,
        "output_tokens": completion.output_tokens,
        "finish_reason": completion.finish_reason,
        "provider": completion.provider,
        "model": completion.model,
    }


def completion_from_document(document: Any) -> Completion | None:
    """The completion in `document`; None if it was stored in another format version.

    Raises ValueError when the document is not a stored completion at all.
    """
    if not isinstance(document, dict):
        raise ValueError("a stored completion must be a JSON object")
    if document.get("v") != STORED_COMPLETION_VERSION:
        return None
    try:
        completion = Completion(
            body=dict(document["body"]),
            input_tokens=int(document["input_tokens"]),
            output_tokens=int(document["output_tokens"]),
            finish_reason=str(document["finish_reason"]),
            provider=str(document["provider"]),
            model=str(document["model"]),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed stored completion: {exc!r}") from exc
    require_complete_answer(completion)
    return completion


def dump_completion(completion: Completion) -> str:
    """JSON text for a complete answer; raises ValueError for a partial one."""
    return json.dumps(completion_to_document(completion), separators=(",", ":"), ensure_ascii=False)


def load_completion(raw: bytes | str) -> Completion | None:
    """Parse `dump_completion`'s output; None for another format version.

    Raises ValueError if the text is garbled (json.JSONDecodeError is a ValueError).
    """
    return completion_from_document(json.loads(raw))
