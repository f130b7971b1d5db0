"""A JSON batch upload (`{"requests": [...], <options>}`) read as it arrives, a request at a time.

The body may be 200 MB. Read whole and parsed whole, it sat in memory as bytes and again as
Python objects while its job specs were made. Here only the value being read is held: the
splitter finds where each element of `requests`, and each other top-level value, ends (by
strings and brackets, a regular expression doing the byte-by-byte work) and hands its bytes
to `json.loads`, so every value is read by the same parser as before: NaN reaches the schema
(which names where it is), a lone surrogate reaches the check that refuses it, and Python's
own depth and number-length limits answer in the same words. The top level's grammar (an
object of string keys) is checked here.

Not ijson: its C backend replaces lone surrogates with '?' (text the database cannot store
would be changed instead of refused), words number limits its own way, and builds a path
string for every event, which grows with the nesting depth (a deeply nested body costs
quadratic memory).

A request is held to `SCAN_FACTOR` times the one-request limit while it is read; whether it
is over the limit itself is measured as before, re-serialised compactly (escapes and spaces
do not count).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from api.batch_upload import BatchParser, line_too_long
from api.errors import describe_json_error
from core.errors import ApiError, InvalidRequest, PayloadTooLarge

# A request's raw bytes may be this many times the one-request limit (a `\uXXXX` escape is 6
# bytes for one character) before it is refused unread.
SCAN_FACTOR = 8
# Deeper than this, `json.loads` would refuse the value anyway (its recursion limit).
MAX_DEPTH = 1000

_WS = re.compile(rb"[ \t\n\r]*")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
# Inside an array or object: everything up to the next bracket, complete strings included.
_PLAIN = re.compile(rb'[^"\[\]{}]*(?:"[^"\\]*(?:\\.[^"\\]*)*"[^"\[\]{}]*)*', re.S)
_SCALAR = re.compile(rb"[^ \t\n\r,\]}]*")
_OPENERS = b"[{"
_QUOTE = ord('"')
_BOM = b"\xef\xbb\xbf"
# The first byte of a UTF-16 or UTF-32 body (a byte order mark, or an ASCII character's zero).
_NOT_UTF8_STARTS = (0x00, 0xFE, 0xFF)

NOT_A_BATCH = "Expected a JSON object with a 'requests' array."


def not_json(reason: str) -> InvalidRequest:
    return InvalidRequest(f"The body is not valid JSON: {reason}.")


def loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8, a number too long
        raise not_json(describe_json_error(exc)) from None


# Where the splitter is in the top-level object.
_BEGIN, _FIRST_KEY, _KEY, _COLON, _VALUE, _AFTER_VALUE = range(6)
_FIRST_ITEM, _ITEM, _AFTER_ITEM, _END = range(6, 10)


class RequestsSplitter:
    """Fed the body's bytes, returns each complete top-level value as `(key, raw bytes)`, and
    each element of `requests` as `(None, raw bytes)`, in the order they come."""

    def __init__(self, *, request_limit: int) -> None:
        self.request_limit = request_limit
        self.max_value_bytes = SCAN_FACTOR * request_limit
        self.buf = bytearray()
        self.pos = 0
        self.offset = 0  # bytes dropped from the front of `buf`
        self.state = _BEGIN
        self.key: str | None = None
        self.requests_seen = False
        self.items = 0
        # The value being read: where it starts in `buf` (-1: none) and its bracket depth.
        self.start = -1
        self.depth = 0

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        self.buf += chunk
        found: list[tuple[str | None, bytes]] = []
        while self._step(found, final=False):
            pass
        keep_from = self.start if self.start >= 0 else self.pos
        del self.buf[:keep_from]
        self.offset += keep_from
        self.pos -= keep_from
        if self.start >= 0:
            self.start = 0
        return found

    def finish(self) -> list[tuple[str | None, bytes]]:
        """The last values (a number may end with the body); a refusal if the body ends early."""
        found: list[tuple[str | None, bytes]] = []
        while self._step(found, final=True):
            pass
        if self.state != _END:
            raise not_json(f"the body ends before the object does (byte {self.offset + len(self.buf)})")
        if not self.requests_seen:
            raise InvalidRequest(NOT_A_BATCH, param="requests")
        return found

    def _at(self) -> str:
        return f"byte {self.offset + self.pos}"

    def _skip_ws(self) -> bool:
        """Past whitespace; False when the buffer ends first."""
        self.pos = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
        return self.pos < len(self.buf)

    def _step(self, found: list[tuple[str | None, bytes]], *, final: bool) -> bool:
        """One move of the top-level grammar; False when more bytes are needed (or the end)."""
        if self.start >= 0:
            return self._continue_value(found, final=final)
        if self.state == _BEGIN and self.offset == 0:
            if len(self.buf) < len(_BOM) and _BOM.startswith(self.buf) and not final:
                return False
            if self.buf.startswith(_BOM):
                self.pos = max(self.pos, len(_BOM))
        if not self._skip_ws():
            return False
        char = self.buf[self.pos]
        if self.state == _BEGIN:
            if char != ord("{"):
                if char in _NOT_UTF8_STARTS:
                    raise not_json("send it as UTF-8")
                raise InvalidRequest(NOT_A_BATCH, param="requests")
            self.pos += 1
            self.state = _FIRST_KEY
        elif self.state in (_FIRST_KEY, _KEY):
            if char == ord("}") and self.state == _FIRST_KEY:
                self.pos += 1
                self.state = _END
                return True
            if char != _QUOTE:
                raise not_json(f"Expecting property name enclosed in double quotes ({self._at()})")
            match = _STRING.match(self.buf, self.pos)
            if match is None:
                if final:
                    raise not_json(f"Unterminated string starting at {self._at()}")
                return False
            self.key = loads(match.group())
            self.pos = match.end()
            self.state = _COLON
        elif self.state == _COLON:
            if char != ord(":"):
                raise not_json(f"Expecting ':' delimiter ({self._at()})")
            self.pos += 1
            self.state = _VALUE
        elif self.state == _VALUE:
            if self.key == "requests":
                if char != ord("[") or self.requests_seen:
                    raise InvalidRequest(NOT_A_BATCH, param="requests")
                self.requests_seen = True
                self.pos += 1
                self.state = _FIRST_ITEM
            else:
                self._begin_value()
        elif self.state in (_AFTER_VALUE, _AFTER_ITEM):
            closer = ord("}") if self.state == _AFTER_VALUE else ord("]")
            if char == ord(","):
                self.state = _KEY if self.state == _AFTER_VALUE else _ITEM
            elif char == closer:
                self.state = _END if self.state == _AFTER_VALUE else _AFTER_VALUE
            else:
                raise not_json(f"Expecting ',' delimiter ({self._at()})")
            self.pos += 1
        elif self.state in (_FIRST_ITEM, _ITEM):
            if char == ord("]") and self.state == _FIRST_ITEM:
                self.pos += 1
                self.state = _AFTER_VALUE
            else:
                self._begin_value()
        else:  # _END
            raise not_json(f"Extra data ({self._at()})")
        return True

    def _begin_value(self) -> None:
        self.start = self.pos
        self.depth = 0

    def _continue_value(self, found: list[tuple[str | None, bytes]], *, final: bool) -> bool:
        """Scan the value begun at `start`; on its end, hand it over and go on after it."""
        buf = self.buf
        first = buf[self.start]
        if first in _OPENERS:
            if self.pos == self.start:
                self.pos += 1
                self.depth = 1
            # Locals in the loop: it runs once per bracket of a 200 MB upload.
            pos, depth, end, plain = self.pos, self.depth, len(buf), _PLAIN.match
            while depth:
                pos = plain(buf, pos).end()  # type: ignore[union-attr]
                if pos >= end or buf[pos] == _QUOTE:
                    self.pos, self.depth = pos, depth
                    return self._need_more(final)
                depth += 1 if buf[pos] in _OPENERS else -1
                if depth > MAX_DEPTH:
                    raise not_json("it is nested too deeply")
                pos += 1
            self.pos, self.depth = pos, depth
        elif first == _QUOTE:
            match = _STRING.match(buf, self.start)
            if match is None:
                self.pos = len(buf)
                return self._need_more(final)
            self.pos = match.end()
        else:
            self.pos = _SCALAR.match(buf, self.start).end()  # type: ignore[union-attr]
            if self.pos >= len(buf) and not final:
                return self._need_more(final)
        if self.pos - self.start > self.max_value_bytes:
            raise self._too_long()
        raw = bytes(buf[self.start : self.pos])
        self.start = -1
        if self.state in (_FIRST_ITEM, _ITEM):
            found.append((None, raw))
            self.items += 1
            self.state = _AFTER_ITEM
        else:
            found.append((self.key, raw))
            self.state = _AFTER_VALUE
        return True

    def _need_more(self, final: bool) -> bool:
        if final:
            raise not_json(f"the body ends inside a value (byte {self.offset + len(self.buf)})")
        if len(self.buf) - self.start > self.max_value_bytes:
            raise self._too_long()
        return False

    def _too_long(self) -> PayloadTooLarge:
        """The value being read is too long to hold: a request far over the limit of one, or
        an option as long."""
        if self.state in (_FIRST_ITEM, _ITEM):
            return line_too_long(self.items + 1, self.request_limit, f"requests.{self.items}")
        return PayloadTooLarge(
            f"The batch option {self.key!r} is longer than {self.max_value_bytes} bytes.", param=self.key
        )


class JsonBatchLines:
    """The requests of a JSON batch, each validated by the `BatchParser` as it is read.

    The batch's options may come before or after its requests, and were always checked before
    them: the first bad request is kept (`refusal`) while the rest of the body is read, for
    the route to raise after checking the options; a body that is not JSON is refused at once.
    """

    def __init__(self, parser: BatchParser) -> None:
        self.parser = parser
        self.limit = parser.settings.max_body_bytes
        self.splitter = RequestsSplitter(request_limit=self.limit)
        self.options: dict[str, Any] = {}
        self.refusal: ApiError | None = None
        self.received = 0
        self.index = 0

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        self._take(self._split(chunk))

    def finish(self) -> None:
        self._take(self._split(None))

    def _split(self, chunk: bytes | None) -> list[tuple[str | None, bytes]]:
        try:
            return self.splitter.finish() if chunk is None else self.splitter.feed(chunk)
        except PayloadTooLarge:
            # A request too long to read: an earlier bad request is still the one to name.
            if self.refusal is not None:
                raise self.refusal from None
            raise

    def _take(self, values: list[tuple[str | None, bytes]]) -> None:
        for key, raw in values:
            value = loads(raw)  # after a refusal too: a body that is not JSON is named first
            if key is not None:
                self.options[key] = value
                continue
            if self.refusal is None:
                try:
                    self._add(value)
                except ApiError as exc:
                    self.refusal = exc
            self.index += 1

    def _add(self, item: Any) -> None:
        index, limit = self.index, self.limit
        # Only an upload past one request's limit so far can hold a request over it.
        if (
            self.received > limit
            and len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()) > limit
        ):
            raise line_too_long(index + 1, limit, f"requests.{index}")
        self.parser.add(index + 1, item, f"requests.{index}")


async def read_json_batch(chunks: AsyncIterator[bytes], lines: JsonBatchLines) -> None:
    """Feed the upload to `lines` as it arrives, each chunk parsed in a worker thread (as NDJSON
    chunks are), so a large upload shares the event loop with the process's other requests."""
    async for chunk in chunks:
        await asyncio.to_thread(lines.feed, chunk)
    lines.finish()
