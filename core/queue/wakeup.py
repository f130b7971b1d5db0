"""A Redis broker whose idle consumers are woken by the enqueue instead of polling.

Dramatiq's Redis consumer polls an empty queue with a back-off up to `worker_timeout`:
measured here, 45 ms p50 / 300 ms p99 pick-up after a pause with the default, or 15% of a
core per process to poll every 20 ms (DESIGN.md, measured facts). Instead, an idle consumer
blocks on a per-queue wake list (`BLPOP`, one pooled connection per consumer) and every
enqueue pushes a token onto that list in the same pipeline: pick-up in a few milliseconds,
nothing spent while idle. Delay queues keep Dramatiq's polling (their messages become due by
time, not by enqueue), at most `DELAY_POLL_MS` apart. Written against Dramatiq 2's
`_RedisConsumer` (pinned `<3`); `tests/integration/test_queue.py` checks the pick-up latency,
so a change there fails loudly. Acks are `core.queue.own_ack`'s (they leave a newer message under
the same id alone).
"""

from __future__ import annotations

import time
from typing import Any

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

from core.queue.own_ack import OwnAckConsumer

# Longest an idle consumer blocks before looking again (must stay under the socket timeout).
WAKE_WAIT_S = 1
# Tokens kept per queue: enough to wake every consumer of a large fleet, bounded memory.
WAKE_TOKENS_MAX = 256
BUSY_NAP_S = 0.005
# Longest a delayed message that fell due waits before it is put on its queue.
DELAY_POLL_MS = 200


def wake_key(namespace: str, queue_name: str) -> str:
    return f"{namespace}:__wake__.{queue_name}"


def push_wake_tokens(client: Any, namespace: str, queue_name: str, count: int) -> None:
    """Queue `count` wake-ups (capped) for `queue_name`; `client` may be a pipeline."""
    key = wake_key(namespace, queue_name)
    client.rpush(key, *(["1"] * min(max(count, 1), WAKE_TOKENS_MAX)))
    client.ltrim(key, -WAKE_TOKENS_MAX, -1)
    client.expire(key, 300)


class _WakeableConsumer(OwnAckConsumer):
    def __init__(self, broker: RedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        if queue_name.endswith(".DQ"):
            # The worker moves held delayed messages that fell due only between two polls of
            # their delay queue: poll at least this often, so a job comes back on time.
            timeout = min(timeout, DELAY_POLL_MS)
        super().__init__(broker, queue_name, prefetch, timeout)

    def __next__(self) -> Any:
        self.flush_acks()
        if self.queue_name.endswith(".DQ"):
            return super().__next__()
        message = self._next_cached_or_fetched()
        if message is not None:
            return message
        if self.outstanding_message_count < self.prefetch:
            try:
                self.broker.client.blpop(
                    [wake_key(self.broker.namespace, self.queue_name)], timeout=WAKE_WAIT_S
                )
            except redis.ConnectionError as exc:
                raise ConnectionClosed(exc) from None
        else:
            # Every thread is busy: nothing to fetch until one frees up; a short nap, no token taken.
            time.sleep(BUSY_NAP_S)
        return None

    def _next_cached_or_fetched(self) -> Any:
        try:
            while True:
                if not self.message_cache:
                    if self.outstanding_message_count >= self.prefetch:
                        return None
                    self.message_cache = self.broker.do_fetch(
                        self.queue_name, self.prefetch - self.outstanding_message_count
                    )
                    if not self.message_cache:
                        return None
                data = self.message_cache.pop(0)
                if data is None:
                    # The message's data was acked away by a duplicate; SQL still has the job.
                    continue
                message = Message.decode(data)
                self.queued_message_ids.add(message.message_id)
                return MessageProxy(message)
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None


class WakeableRedisBroker(RedisBroker):
    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _WakeableConsumer

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        """Dramatiq's own enqueues (a delayed message falling due) wake a consumer too.

        A delayed message falling due keeps its Redis id (the job id) on its queue, where
        Dramatiq gives it a random one: the sweeper looks for a job's message by that id, and
        sent again every job whose message waited in a long queue after its delay. A message
        still in flight under the same id is safe: acks settle only their own message."""
        redis_id = message.options.get("redis_message_id")
        if delay is None and redis_id is not None:
            self.emit_before("enqueue", message, delay)
            self.do_enqueue(message.queue_name, redis_id, message.encode())
            self.emit_after("enqueue", message, delay)
            enqueued = message
        else:
            enqueued = super().enqueue(message, delay=delay)
        if delay is None:
            push_wake_tokens(self.client, self.namespace, message.queue_name, 1)
        return enqueued
