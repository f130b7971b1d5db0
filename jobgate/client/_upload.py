"""A batch's requests as the NDJSON body of `POST /v1/batches`, made while it is sent.

A file is read a line at a time, so a 200 MB upload is never held in memory; a retry reads
it again from the start and sends the same bytes (the API fingerprints the body for its
Idempotency-Key). Lines are jobgate's own `{"custom_id", "body"}` or an OpenAI batch file's
(which also carry `method` and `url`; the API accepts both). With a default model, a line
whose `body` names none gets it; every other line is sent exactly as it is, blank and
malformed ones included, so the line numbers in the API's 400 are the file's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

CONTENT_TYPE = "application/x-ndjson"
CHUNK_BYTES = 256 * 1024


def with_default_model(raw: bytes, model: str | None) -> bytes:
    """The line with `body.model` set to `model` when it names none; else as it was."""
    if model is None or b'"body"' not in raw:
        return raw
    try:
        line = json.loads(raw)
    except ValueError:
        return raw  # the API names the line and what is wrong with it
    body = line.get("body") if isinstance(line, dict) else None
    if not isinstance(body, dict) or "model" in body:
        return raw
    body["model"] = model
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode()


class NdjsonUpload:
    """The body of one batch submission: `source` is a JSONL file or the request objects."""

    def __init__(self, source: Path | Iterable[Mapping[str, Any]], *, model: str | None = None) -> None:
        self.model = model
        self.path = source if isinstance(source, Path) else None
        # A list is kept (not a one-shot iterator): a retry sends it again.
        self.items = None if isinstance(source, Path) else [dict(item) for item in source]

    def _lines(self) -> Iterator[bytes]:
        if self.items is not None:
            for item in self.items:
                yield with_default_model(json.dumps(item, separators=(",", ":")).encode(), self.model)
            return
        assert self.path is not None
        with self.path.open("rb") as file:
            for raw in file:
                yield with_default_model(raw.rstrip(b"\r\n"), self.model)

    def chunks(self) -> Iterator[bytes]:
        """The body in pieces of about CHUNK_BYTES, each ending with a whole line."""
        pending: list[bytes] = []
        size = 0
        for line in self._lines():
            pending.append(line + b"\n")
            size += len(line) + 1
            if size >= CHUNK_BYTES:
                yield b"".join(pending)
                pending, size = [], 0
        if pending:
            yield b"".join(pending)

    async def achunks(self) -> AsyncIterator[bytes]:
        """`chunks()` for an async transport: the file is read (and lines re-encoded) in a
        worker thread, so a large upload does not hold the event loop."""
        pieces = self.chunks()
        while (chunk := await asyncio.to_thread(next, pieces, None)) is not None:
            yield chunk
