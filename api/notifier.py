"""Long-poll waiters: one Redis pub/sub connection per API process, any number of waiters.

Whoever makes jobs final (a worker's group write, a cancel, the reaper) publishes their ids on
`Keys.job_done_channel`, space-separated in one message (`core.services.lifecycle`). Each
waiter registers a future *before* it reads the job row, so a completion between the read
and the wait is not missed. Pub/sub may drop messages (reconnects), so waiters also re-read
SQL at a modest interval and on timeout: the notification is a shortcut, SQL the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import structlog
from redis.asyncio.client import PubSub

log = structlog.get_logger("jobgate.notifier")

RECONNECT_DELAY_S = 1.0
# Pub/sub is read in bounded slices, never with `listen()`: redis-py's indefinitely blocking
# read can swallow the task's cancellation (seen with redis 8.1 on Python 3.11), which hung
# the API's shutdown. A slice returns at once when a message arrives, so it costs no latency.
READ_SLICE_S = 1.0
STOP_TIMEOUT_S = 5.0
SUBSCRIBE_TIMEOUT_S = 5.0


class JobNotifier:
    def __init__(self, client: aioredis.Redis, channel: str) -> None:
        self.client = client
        self.channel = channel
        self._waiters: dict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self, *, timeout_s: float = SUBSCRIBE_TIMEOUT_S) -> None:
        """Subscribe, then listen in the background. Returns once Redis has confirmed the
        subscription, so a job finished by the API's first request is heard (not found by the
        SQL re-read seconds later); if Redis cannot confirm in `timeout_s`, the API starts
        anyway and the listener keeps trying."""
        pubsub: PubSub | None = None
        try:
            pubsub = await asyncio.wait_for(self._subscribe(), timeout_s)
        except Exception as exc:
            log.warning("notifier_not_subscribed_yet", error=type(exc).__name__)
        self._task = asyncio.create_task(self._listen(pubsub), name="job-notifier")

    async def stop(self) -> None:
        if self._task is not None:
            self._stopping = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, STOP_TIMEOUT_S)

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[asyncio.Future[None]]:
        """Register interest in `job_id` for the duration of the block."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[job_id].add(future)
        try:
            yield future
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[job_id]

    def _wake(self, job_id: str) -> None:
        for future in self._waiters.get(job_id, ()):
            if not future.done():
                future.set_result(None)

    async def _subscribe(self) -> PubSub:
        """A pub/sub connection whose subscription Redis has confirmed."""
        pubsub = self.client.pubsub()  # its own flag would hide the confirmation from us
        try:
            await pubsub.subscribe(self.channel)
            while True:  # bounded by the caller's timeout
                message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=READ_SLICE_S)
                if message is not None and message.get("type") == "subscribe":
                    return pubsub
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            raise

    async def _listen(self, pubsub: PubSub | None) -> None:
        while not self._stopping:
            try:
                if pubsub is None:
                    pubsub = await asyncio.wait_for(self._subscribe(), SUBSCRIBE_TIMEOUT_S)
                while not self._stopping:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=READ_SLICE_S)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        # One message names every job a worker's group write made final.
                        for job_id in (data.decode() if isinstance(data, bytes) else str(data)).split():
                            self._wake(job_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("notifier_disconnected", error=type(exc).__name__)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                pubsub = None
            # Waiters re-read SQL on their own; a reconnect only costs latency.
            if not self._stopping:
                await asyncio.sleep(RECONNECT_DELAY_S)
