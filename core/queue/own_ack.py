"""Acks that settle only their own message, not a newer one under the same Redis id.

jobgate enqueues a job's messages under the job id (so the sweeper can tell, by id, whether a
job still has a message). Dramatiq's ack is `SREM acks id` then `HDEL msgs id`: it deletes
whatever data the id holds *now*. A delayed job message that falls due is moved to its queue
and only then acked on the delay queue; a job refused again in between (the limiter's waiting
line) is put back on the delay queue under the same id, and the late ack deleted that new
message's data. Dramatiq then logs "Found 'None' message in message cache" and drops it, and
the job waited for the sweeper (30-60 s; seen as a flaky fleet-limits test under CPU load).

Here ack and nack run one Lua script that removes the id from this worker's acks set and
touches the data only if it still is this message's (its Dramatiq `message_id` is in it).

Acks are also batched: a worker thread's ack is queued, and the consumer thread settles every
queued ack in one pipelined round trip before it next fetches (`flush_acks`), instead of one
round trip per message. A message whose ack is still queued when the process dies is
delivered again; its job's claim makes that harmless (it is final or leased already).
Dramatiq has no option for this; the script mirrors its `ack`/`nack` commands otherwise
(key names as in its `dispatch.lua`, Dramatiq 2, pinned `<3`).
"""

from __future__ import annotations

import threading
import time

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed

# KEYS: this worker's acks set for the queue, the queue's data hash, its dead-letter zset and hash.
# ARGV: Redis message id, Dramatiq message id, "ack" | "nack", now in ms.
_SETTLE = """
local id = ARGV[1]
if redis.call("srem", KEYS[1], id) == 0 then
    return 0
end
local data = redis.call("hget", KEYS[2], id)
if not data or not string.find(data, ARGV[2], 1, true) then
    return 0
end
redis.call("hdel", KEYS[2], id)
if ARGV[3] == "nack" then
    redis.call("zadd", KEYS[3], ARGV[4], id)
    redis.call("hset", KEYS[4], id, data)
end
return 1
"""


def _canonical(queue_name: str) -> str:
    """A delay queue's messages are dead-lettered with their queue's (Dramatiq: no `x.DQ.XQ`)."""
    return queue_name.removesuffix(".DQ")


class OwnAckConsumer(_RedisConsumer):
    """A Redis consumer whose ack and nack leave another message's data alone."""

    def __init__(self, broker: RedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self._settle = broker.client.register_script(_SETTLE)
        self._acks: list[MessageProxy] = []
        self._acks_lock = threading.Lock()

    def ack(self, message: MessageProxy) -> None:
        """Queue the ack; `flush_acks` settles it (called by the consumer thread)."""
        with self._acks_lock:
            self._acks.append(message)

    def flush_acks(self) -> None:
        """Settle every queued ack in one pipelined round trip (scripts run by their SHA; a
        Redis that lost its scripts gets them loaded and the refused ones run again)."""
        with self._acks_lock:
            messages, self._acks = self._acks, []
        if not messages:
            return
        pipe = self.broker.client.pipeline(transaction=False)
        for message in messages:
            keys, args = self._settle_arguments(message, "ack")
            pipe.evalsha(self._settle.sha, len(keys), *keys, *args)
        try:
            results = pipe.execute(raise_on_error=False)
            for message, result in zip(messages, results, strict=True):
                if isinstance(result, redis.exceptions.NoScriptError):
                    self._settle_message(message, "ack")
                elif isinstance(result, Exception):
                    raise result
        except redis.ConnectionError as exc:
            with self._acks_lock:
                self._acks = messages + self._acks
            raise ConnectionClosed(exc) from None
        for message in messages:
            self.queued_message_ids.discard(message.message_id)

    def close(self) -> None:
        try:
            self.flush_acks()
        finally:
            super().close()

    def nack(self, message: MessageProxy) -> None:
        self._settle_message(message, "nack")

    def _settle_message(self, message: MessageProxy, command: str) -> None:
        keys, args = self._settle_arguments(message, command)
        try:
            self._settle(keys=keys, args=args)
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None
        finally:
            self.queued_message_ids.discard(message.message_id)

    def _settle_arguments(self, message: MessageProxy, command: str) -> tuple[list[str], list[str | int]]:
        # The current queue, not message.queue_name: a delayed message is settled on the delay queue.
        namespace = self.broker.namespace
        queue_key = f"{namespace}:{self.queue_name}"
        dead_key = f"{namespace}:{_canonical(self.queue_name)}.XQ"
        keys = [
            f"{namespace}:__acks__.{self.broker.broker_id}.{self.queue_name}",
            f"{queue_key}.msgs",
            dead_key,
            f"{dead_key}.msgs",
        ]
        args: list[str | int] = [
            message.options["redis_message_id"],
            message.message_id,
            command,
            int(time.time() * 1000),
        ]
        return keys, args
