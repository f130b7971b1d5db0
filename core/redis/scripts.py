"""Lua scripts run by their SHA, one at a time or several in one pipelined round trip.

redis-py's `Script` objects cost an extra round trip inside a pipeline (it asks `SCRIPT
EXISTS` before every pipeline that holds one), and the hot path pipelines scripts: a job's
after-call updates ride in its group's pipeline (DESIGN.md: Redis work for one call is one
round trip). So calls are queued as `EVALSHA`; a call refused with NOSCRIPT (a Redis that
restarted empty) is run again with `EVAL`, which also loads the script for the next ones.
Only the refused calls run again: the others in the pipeline already took effect.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError


class FleetScript:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    def call(self, keys: Sequence[str], args: Sequence[str | int | float]) -> ScriptCall:
        return ScriptCall(self, tuple(keys), tuple(args))


@dataclass(frozen=True)
class ScriptCall:
    script: FleetScript
    keys: tuple[str, ...]
    args: tuple[str | int | float, ...]


@dataclass(frozen=True)
class Command:
    """A plain Redis command (`GET k`, `SET k v PX t`), to ride in the same pipeline."""

    args: tuple[str | int | float | bytes, ...]


FleetOp = ScriptCall | Command


async def run_calls(client: aioredis.Redis, calls: Sequence[FleetOp]) -> list[Any]:
    """Run `calls` in one round trip (in order, not as a transaction); their replies in order."""
    if not calls:
        return []
    pipe = client.pipeline(transaction=False)
    for c in calls:
        if isinstance(c, Command):
            pipe.execute_command(*c.args)
        else:
            pipe.evalsha(c.script.sha, len(c.keys), *c.keys, *c.args)
    replies: list[Any] = await pipe.execute(raise_on_error=False)
    for i, (c, reply) in enumerate(zip(calls, replies, strict=True)):
        if isinstance(reply, NoScriptError) and isinstance(c, ScriptCall):
            replies[i] = await _eval(client, c)
        elif isinstance(reply, Exception):
            raise reply
    return replies


async def run_call(client: aioredis.Redis, call: FleetOp) -> Any:
    """One call, sent alone: no pipeline object to build, fill and reset (the gate's call on
    every job's path)."""
    if isinstance(call, Command):
        return await client.execute_command(*call.args)
    try:
        return await client.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)  # type: ignore[misc]
    except NoScriptError:
        return await _eval(client, call)


async def _eval(client: aioredis.Redis, call: ScriptCall) -> Any:
    """A call refused NOSCRIPT (a Redis that restarted empty), run with its source: EVAL also
    loads the script for the next EVALSHA."""
    return await client.eval(call.script.source, len(call.keys), *call.keys, *call.args)  # type: ignore[misc]
