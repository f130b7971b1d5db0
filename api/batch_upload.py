"""Parsing a batch upload: a JSON `{"requests": [...]}` body or NDJSON lines, all or nothing.

Every line is validated before anything is stored; the first bad one rejects the batch with
a 400 naming its line number (1-based; for JSON, the index in `requests` plus one). One
request is held to the same size as a single job's body (`JOBGATE_MAX_BODY_BYTES`): a line
(or a `requests` item) over it is a 413 naming it. The NDJSON form is read as a stream, line
by line, so it is never held twice in memory; the JSON form is read as a stream too
(`api/json_batch.py`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from api.deps import Principal
from api.errors import describe_json_error, describe_validation_error
from api.job_specs import job_spec
from api.schemas import BatchLine
from core.config import GatewayConfig
from core.errors import InvalidRequest, PayloadTooLarge
from core.services.submit import JobSpec
from core.settings import Settings


def line_too_long(line_number: int, limit: int, param: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"Line {line_number} is longer than {limit} bytes (JOBGATE_MAX_BODY_BYTES, the limit of one"
        " request); shorten it or submit that request on its own.",
        param=param,
    )


class BatchParser:
    def __init__(
        self, *, config: GatewayConfig, settings: Settings, default_priority: str, principal: Principal
    ) -> None:
        self.config = config
        self.principal = principal
        self.settings = settings
        self.default_priority = default_priority
        self.specs: list[JobSpec] = []
        self._seen: set[str] = set()
        # The specs whose line set no priority of its own: they take the batch's.
        self._defaulted: list[int] = []

    def add(self, line_number: int, item: Any, param: str) -> None:
        if len(self.specs) >= self.settings.max_batch_requests:
            raise InvalidRequest(
                f"A batch holds at most {self.settings.max_batch_requests} requests; split it into several.",
                param="requests",
            )
        try:
            line = BatchLine.model_validate(item)
        except ValidationError as exc:
            message, field = describe_validation_error([dict(e) for e in exc.errors()], prefix=param)
            raise InvalidRequest(f"Line {line_number}: {message}", param=field) from None
        if line.custom_id in self._seen:
            raise InvalidRequest(
                f"Line {line_number}: duplicate custom_id {line.custom_id!r};"
                " custom_id must be unique in a batch.",
                param=f"{param}.custom_id",
            )
        self._seen.add(line.custom_id)
        try:
            spec = job_spec(
                line.body,
                config=self.config,
                settings=self.settings,
                default_priority=self.default_priority,
                custom_id=line.custom_id,
                param_prefix=f"{param}.body.",
                principal=self.principal,
            )
        except InvalidRequest as exc:
            raise InvalidRequest(f"Line {line_number}: {exc.message}", param=exc.param) from None
        if line.body.priority is None:
            self._defaulted.append(len(self.specs))
        self.specs.append(spec)

    def finish(self, default_priority: str | None = None) -> list[JobSpec]:
        """The specs; `default_priority`: the batch's priority, when it became known only after
        its lines were parsed (a JSON batch's options may follow its requests)."""
        if not self.specs:
            raise InvalidRequest("The batch has no requests.", param="requests")
        if default_priority is not None and default_priority != self.default_priority:
            for index in self._defaulted:
                self.specs[index] = dataclasses.replace(self.specs[index], priority=default_priority)
        return self.specs


async def parse_ndjson_batch(chunks: AsyncIterator[bytes], parser: BatchParser) -> None:
    """Parse NDJSON lines as they arrive. Each chunk's lines are parsed in a worker thread, so a
    large upload shares the event loop with the process's other requests instead of holding it
    for seconds; how the body is cut into chunks never changes the answer."""
    lines = NdjsonLines(parser)
    async for chunk in chunks:
        await asyncio.to_thread(lines.feed, chunk)
    lines.finish()


class NdjsonLines:
    """Splits the stream into lines (in C, by `bytes.split`) and hands each to the parser.

    Every line counts: a line over the request limit is a 413 as soon as it is seen, and
    blank lines (skipped) are capped at the request cap, so an upload of newlines is refused
    early instead of costing a Python call per byte.
    """

    def __init__(self, parser: BatchParser) -> None:
        self.parser = parser
        self.limit = parser.settings.max_body_bytes
        self.max_blank = parser.settings.max_batch_requests
        self.tail = b""
        self.line_number = 0
        self.blank = 0

    def feed(self, chunk: bytes) -> None:
        lines = (self.tail + chunk).split(b"\n")
        self.tail = lines.pop()
        for raw in lines:
            self._take(raw)
        if len(self.tail) > self.limit:
            raise line_too_long(self.line_number + 1, self.limit, f"line {self.line_number + 1}")

    def finish(self) -> None:
        if self.tail.strip():
            self._take(self.tail)

    def _take(self, raw: bytes) -> None:
        self.line_number += 1
        number = self.line_number
        if len(raw) > self.limit:
            raise line_too_long(number, self.limit, f"line {number}")
        if not raw.strip():
            self.blank += 1
            if self.blank > self.max_blank:
                raise InvalidRequest(
                    f"Line {number}: more than {self.max_blank} blank lines; send one request per line.",
                    param=f"line {number}",
                )
            return
        try:
            item = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise InvalidRequest(
                f"Line {number}: not valid JSON: {describe_json_error(exc)}.", param=f"line {number}"
            ) from None
        self.parser.add(number, item, f"line {number}")
