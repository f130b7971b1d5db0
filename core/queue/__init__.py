"""The Dramatiq broker and the names of the queue messages; the package holds everything
that touches Dramatiq's Redis internals: this module (enqueue through its dispatch script),
`wakeup` (consumers woken by the enqueue) and `own_ack` (acks that settle only their own
message, batched), all pinned by `tests/integration/test_queue.py` and `test_wakeup.py`.

This is the one place the broker is made (STYLE.md rule 14), so the API can enqueue
without importing `workers`. Messages carry only a job id (DESIGN.md principle 1).

Enqueueing goes through the broker's own `dispatch` script rather than `actor.send`, for two
reasons: a batch of 50,000 jobs is enqueued pipelined over one connection (about 4 times faster than
one round trip each; Dramatiq has no public bulk API), and each message's Redis id is the
job id, so the sweeper can ask Redis whether a queued job still has a message
(`pending_job_ids`) and re-dispatch only those that lost theirs. Pinned to dramatiq>=2,<3;
`tests/integration/test_queue.py` fails loudly if an upgrade changes the script.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name

from core.queue.wakeup import WakeableRedisBroker, push_wake_tokens
from core.redis.keys import Keys

INTERACTIVE = "interactive"
BATCH = "batch"
PRIORITIES = (INTERACTIVE, BATCH)


@dataclass(frozen=True)
class ActorSpec:
    actor_name: str
    queue_name: str
    # Dramatiq runs prefetched messages lowest priority first, so interactive jobs get
    # a worker's free threads before batch jobs.
    priority: int


RUN_INTERACTIVE = ActorSpec("run_interactive_job", "jobs-interactive", 0)
RUN_BATCH = ActorSpec("run_batch_job", "jobs-batch", 10)
DELIVER_WEBHOOK = ActorSpec("deliver_webhook", "webhooks", 20)
RUN_ACTORS = {INTERACTIVE: RUN_INTERACTIVE, BATCH: RUN_BATCH}

# Dead worker detection for the broker's own requeue of unacked messages; jobgate's SQL
# lease + sweeper is the real guarantee, this is the second line (DESIGN.md, measured facts).
# Workers use `heartbeat_timeout_ms(lease_s)`: a worker silent for a lease (at most this
# long) is dead, so the messages it had prefetched come back as soon as its running jobs do.
HEARTBEAT_TIMEOUT_MS = 30_000
ENQUEUE_CHUNK = 2_000


def heartbeat_timeout_ms(lease_s: float) -> int:
    return max(1_000, min(HEARTBEAT_TIMEOUT_MS, int(lease_s * 1000)))


def build_broker(
    redis_url: str,
    keys: Keys,
    *,
    max_connections: int,
    timeout_s: float,
    heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS,
) -> RedisBroker:
    """Create the broker (without Dramatiq's default Prometheus/retry behaviour) and install it."""
    pool = redis.BlockingConnectionPool.from_url(
        redis_url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
    )
    broker = WakeableRedisBroker(
        client=redis.Redis(connection_pool=pool),
        namespace=keys.broker_namespace,
        heartbeat_timeout=heartbeat_timeout_ms,
    )
    for spec in (RUN_INTERACTIVE, RUN_BATCH, DELIVER_WEBHOOK):
        broker.declare_queue(spec.queue_name)
    dramatiq.set_broker(broker)
    return broker


def _unique_id() -> str:
    """A random UUID for Dramatiq's own message id, drawn without a system call.

    Dramatiq's default (`uuid4`) reads os.urandom, which releases the GIL: enqueueing a
    50,000-job batch from a thread of the busy API then waited for the GIL once per message
    (a third of the batch's dispatch time under load). The id only has to be unique, not
    secret; the Redis id that matters is the job id.
    """
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


def _message(spec: ActorSpec, message_id: str, args: tuple[object, ...]) -> dramatiq.Message:
    return dramatiq.Message(
        queue_name=spec.queue_name,
        actor_name=spec.actor_name,
        args=args,
        kwargs={},
        options={"redis_message_id": message_id},
        message_id=_unique_id(),
    )


def _dispatch_args(broker: RedisBroker, queue_name: str, message_id: str, data: bytes) -> list[Any]:
    # Mirrors RedisBroker._dispatch's argument list for the "enqueue" command.
    return [
        "enqueue",
        int(time.time() * 1000),
        queue_name,
        broker.broker_id,
        broker.heartbeat_timeout,
        broker.dead_message_ttl,
        0,
        broker._max_unpack_size(),
        message_id,
        data,
    ]


def enqueue_messages(
    broker: RedisBroker, items: Iterable[tuple[ActorSpec, str, tuple[object, ...]]], *, delay_ms: int = 0
) -> int:
    """Enqueue (spec, message_id, args) messages pipelined, in chunks; returns how many."""
    eta_ms = due_ms(delay_ms)
    return enqueue_due(broker, ((spec, message_id, args, eta_ms) for spec, message_id, args in items))


def now_ms() -> int:
    """Unix time in milliseconds: the clock of a delayed message's `eta`."""
    return int(time.time() * 1000)


def due_ms(delay_ms: int) -> int:
    """The due time (Unix ms) `delay_ms` from now; 0 ("now") for a delay that is not positive."""
    return now_ms() + delay_ms if delay_ms > 0 else 0


def enqueue_due(broker: RedisBroker, items: Iterable[tuple[ActorSpec, str, tuple[object, ...], int]]) -> int:
    """Enqueue (spec, message_id, args, eta_ms) messages pipelined, in chunks; a message whose
    `eta_ms` (Unix ms) is in the future goes to its delay queue until then, others at once.
    Returns how many."""
    dispatch = broker.scripts["dispatch"]
    keys = [broker.namespace]
    count = 0
    woken: dict[str, int] = {}
    pipe = broker.client.pipeline(transaction=False)
    now = now_ms()
    for spec, message_id, args, eta_ms in items:
        message = _message(spec, message_id, args)
        queue_name = spec.queue_name
        delayed = eta_ms > now
        if delayed:
            queue_name = dq_name(queue_name)
            message = message.copy(queue_name=queue_name, options={"eta": eta_ms})
        dispatch(
            keys=keys, args=_dispatch_args(broker, queue_name, message_id, message.encode()), client=pipe
        )
        if not delayed:
            woken[queue_name] = woken.get(queue_name, 0) + 1
        count += 1
        if count % ENQUEUE_CHUNK == 0:
            pipe.execute()
    for queue_name, messages in woken.items():
        push_wake_tokens(pipe, broker.namespace, queue_name, messages)
    pipe.execute()
    return count


def dispatch_jobs(broker: RedisBroker, jobs: Iterable[tuple[str, str]], *, delay_ms: int = 0) -> int:
    """Enqueue `run_job` for (job_id, priority) pairs; the job id is the message's Redis id."""
    eta_ms = due_ms(delay_ms)
    return dispatch_jobs_due(broker, ((job_id, priority, eta_ms) for job_id, priority in jobs))


def dispatch_jobs_due(broker: RedisBroker, jobs: Iterable[tuple[str, str, int]]) -> int:
    """Enqueue `run_job` for (job_id, priority, due Unix ms; 0 = now): each comes back at its
    own due time however long the caller took to get here."""
    return enqueue_due(
        broker, ((RUN_ACTORS[priority], job_id, (job_id,), due_ms) for job_id, priority, due_ms in jobs)
    )


def dispatch_deliveries(
    broker: RedisBroker, delivery_ids: Iterable[str], *, delay_ms: int = 0, manual: bool = False
) -> int:
    """Enqueue `deliver_webhook` for these deliveries (message id = delivery id)."""
    items = ((DELIVER_WEBHOOK, delivery_id, (delivery_id, manual)) for delivery_id in delivery_ids)
    return enqueue_messages(broker, items, delay_ms=delay_ms)


def pending_job_ids(broker: RedisBroker, jobs: Sequence[tuple[str, str]]) -> set[str]:
    """Which of these (job_id, priority) still have a message in Redis (queued, delayed or unacked)."""
    pipe = broker.client.pipeline(transaction=False)
    for job_id, priority in jobs:
        queue_name = RUN_ACTORS[priority].queue_name
        pipe.hexists(f"{broker.namespace}:{queue_name}.msgs", job_id)
        pipe.hexists(f"{broker.namespace}:{dq_name(queue_name)}.msgs", job_id)
    flags = pipe.execute()
    return {job_id for i, (job_id, _) in enumerate(jobs) if flags[2 * i] or flags[2 * i + 1]}


def queue_depths(broker: RedisBroker) -> dict[str, int]:
    """Messages waiting per queue (not counting prefetched ones), for /metrics."""
    pipe = broker.client.pipeline(transaction=False)
    names = [spec.queue_name for spec in (RUN_INTERACTIVE, RUN_BATCH, DELIVER_WEBHOOK)]
    for name in names:
        pipe.llen(f"{broker.namespace}:{name}")
    return dict(zip(names, pipe.execute(), strict=True))


def beat_heartbeat(broker: RedisBroker) -> None:
    """Record that this process's consumers are alive, as Dramatiq's dispatch script does.

    Dramatiq beats only when a consumer fetches or acks: a worker whose every thread is busy
    on a long upstream call stays silent, and the forced maintenance below would take it for
    dead and hand its prefetched messages to others. Workers call this on a timer instead.
    """
    broker.client.zadd(f"{broker.namespace}:__heartbeats__", {broker.broker_id: int(time.time() * 1000)})


def run_broker_maintenance(broker: RedisBroker) -> None:
    """Force the broker's maintenance pass on every queue: unacked messages of workers whose
    heartbeat stopped go back to their queues now, not after a random 0.1% roll."""
    dispatch = broker.scripts["dispatch"]
    for spec in (RUN_INTERACTIVE, RUN_BATCH, DELIVER_WEBHOOK):
        for name in (spec.queue_name, dq_name(spec.queue_name)):
            args = [
                "qsize",
                int(time.time() * 1000),
                name,
                broker.broker_id,
                broker.heartbeat_timeout,
                broker.dead_message_ttl,
                1,
                broker._max_unpack_size(),
            ]
            dispatch(keys=[broker.namespace], args=args)
