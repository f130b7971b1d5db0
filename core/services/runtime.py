"""A worker process's job runtime: many jobs in flight on one event loop, few round trips each.

Dramatiq's consumer threads receive messages; the actor hands the job id over here and
returns (DESIGN.md, "the worker's hot path"). Ownership is the SQL claim and its lease, not
the unacked message, so acking at hand-off loses nothing: a process that dies mid-call
leaves leased rows the reaper hands back, and an id acked but never claimed is still
`queued` in SQL, where the sweeper finds it.

On the loop:
- a claimer gathers handed-over ids for a moment and claims them in one statement
  (`store.claim_jobs`); ids it did not win were duplicates, cancelled, or not due yet, and the
  last go back to the queue with their delay;
- each claim runs `JobRunner.run` as a task (the upstream call awaits on the SDK's async
  client: a call in flight holds no thread);
- a writer gathers the verdicts for a couple of milliseconds (an interactive one flushes at
  once) and writes them in one transaction, each row fenced by its claim, then applies the
  group's after-commit effects (`lifecycle.apply_effects`): one publish of the finished ids,
  the webhook deliveries, the requeued jobs' messages; the verdicts' fleet-state updates
  (breaker reports, limiter reconciliations, shared answers) go out in one Redis pipeline
  while that write runs;
- a lease keeper renews the leases of every job in flight in one statement.
SQL runs on a small pool of threads with the sync driver (each call carries a whole group),
so the loop never blocks on the database and a process needs only a handful of connections.
A write that loses its connection is retried within the lease (the call is paid for); one bad
row does not fail its group: the group is split and each row written alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis
import redis.asyncio as aioredis
import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core import metrics, queue, tracing
from core.domain.relay import Relay
from core.redis.scripts import run_calls
from core.services.execute import JobRunner, Outcome, OutcomeStatus, Verdict
from core.services.lifecycle import Effects
from core.services.upstream import CALL_GOING_OUT
from core.store import jobs as store
from core.store.clock import SqlClock
from core.store.retry import is_connection_error, retrying_on_disconnect
from core.tenancy import TenantPolicies
from core.webhooks.outbox import JobRoute, commit_final

log = structlog.get_logger("jobgate.runtime")

T = TypeVar("T")

# A delay longer than this is not parked in Dramatiq's delay queue (it would sit unacked in
# one worker's memory): the job keeps its `not_before` in SQL and the sweeper dispatches it.
MAX_BROKER_DELAY_S = 60.0
# An early message comes back after at least this long (see `_claim_group`).
MIN_REDELAY_S = 0.1
GATHER_S = 0.002
MAX_GROUP = 500
SQL_THREADS = 3


@dataclass
class _Handed:
    job_id: str
    priority: str
    future: asyncio.Future[Outcome]
    # When its message was due (ms since the epoch), for the queue-wait span; traces only.
    due_ms: int | None = None


@dataclass
class _Finished:
    claim: store.Claim
    verdict: Verdict
    future: asyncio.Future[Outcome]


class _Gathered(Generic[T]):
    """Items handed over one by one and taken in groups: a group is taken a moment
    (`gather_s`) after its first item arrives, or at once when `urgent` says an item is
    interactive; at most `MAX_GROUP` at a time."""

    def __init__(self, urgent: Callable[[T], bool], gather_s: float) -> None:
        self._items: list[T] = []
        self._urgent = urgent
        self._gather_s = gather_s
        self._wanted = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> None:
        self._items.append(item)
        self._wanted.set()

    async def next_group(self) -> list[T]:
        await self._wanted.wait()
        if not any(self._urgent(item) for item in self._items):
            await asyncio.sleep(self._gather_s)
        self._wanted.clear()
        group, self._items = self._items[:MAX_GROUP], self._items[MAX_GROUP:]
        if self._items:
            self._wanted.set()
        return group


@dataclass(frozen=True)
class _Written:
    outcomes: dict[str, Outcome]
    effects: Effects


class PendingRecord:
    """A claimed row's insert that begins when asked (`begin`, at most once) and is `done`.

    The API's sync path records its job while the call goes out: begun beside the gate and
    the request's own work, the insert's SQL thread held the GIL those needed (a stream's
    first token came 1.5-2 ms later), so it begins once the call's request is on its way
    (`CALL_GOING_OUT`), or when the run ends without a call."""

    def __init__(self, insert: Callable[[], Awaitable[None]]) -> None:
        self._insert = insert
        self._task: asyncio.Task[None] | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def begin(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._record())

    async def _record(self) -> None:
        try:
            await self._insert()
        except asyncio.CancelledError:
            self.done.cancel()
            raise
        except Exception as exc:  # handed to whoever awaits `done`
            self.done.set_exception(exc)
        else:
            self.done.set_result(None)


class JobRuntime:
    def __init__(
        self,
        *,
        runner: JobRunner,
        fleet_state: aioredis.Redis,
        sessions: sessionmaker[Session],
        clock: SqlClock,
        lease_s: float,
        apply_effects: Callable[[Effects], None],
        sleep: Callable[[float], None] = time.sleep,
        sql_threads: int = SQL_THREADS,
        gather_s: float = GATHER_S,
        policies: TenantPolicies | None = None,
    ) -> None:
        self.runner = runner
        self.fleet_state = fleet_state
        self.sessions = sessions
        self.clock = clock
        self.lease_s = lease_s
        self.apply_effects = apply_effects
        self.sleep = sleep  # the backoff of a claim or write retried after a lost connection
        self.gather_s = gather_s
        self._sql = concurrent.futures.ThreadPoolExecutor(sql_threads, thread_name_prefix="jobgate-sql")
        # Writes in flight at once: one SQL thread is always left to claims and leases.
        self._write_slots = max(1, sql_threads - 1)
        # Tenant policies and key budgets, read again by claims once `POLICY_TTL_S` old.
        self.policies = policies or TenantPolicies(runner.config)
        self._active: dict[str, store.Claim] = {}
        self._to_claim: _Gathered[_Handed] | None = None
        self._to_write: _Gathered[_Finished] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Made on the loop they serve (an asyncio.Event belongs to one loop).
        self._to_claim = _Gathered(lambda h: h.priority == "interactive", self.gather_s)
        self._to_write = _Gathered(lambda f: f.claim.priority == "interactive", self.gather_s)
        for name, body in (
            ("claimer", self._claimer),
            ("writer", self._writer),
            ("leases", self._lease_keeper),
        ):
            self._spawn(body(), name=f"jobgate-{name}")

    async def stop(self, *, grace_s: float) -> None:
        """Let the jobs in flight finish and their writes land (up to `grace_s`), then stop."""
        deadline = time.monotonic() + grace_s
        while (self._active or self._to_claim or self._to_write) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._sql.shutdown(wait=True)

    # --- hand-off --------------------------------------------------------------------------

    async def submit(self, job_id: str, priority: str, due_ms: int | None = None) -> Outcome:
        """Run the job (claim, pipeline, group write); its outcome once the write landed.
        `due_ms`: when its message was due, if traces are on (core/tracing.py)."""
        assert self._to_claim is not None, "start() the runtime first"
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._to_claim.add(_Handed(job_id, priority, future, due_ms))
        return await future

    def submit_threadsafe(
        self, job_id: str, priority: str, due_ms: int | None = None
    ) -> concurrent.futures.Future[Outcome]:
        """`submit` from another thread (a Dramatiq actor)."""
        assert self._loop is not None, "start() the runtime first"
        return asyncio.run_coroutine_threadsafe(self.submit(job_id, priority, due_ms), self._loop)

    async def insert_claimed(self, row: dict[str, Any]) -> None:
        """Record a new job claimed by this runtime (`store.insert_claimed`), for `run_claimed`;
        retried on a lost connection like a claim."""
        await self._in_sql(self._insert_claimed_retrying, row)

    def _insert_claimed_retrying(self, row: dict[str, Any]) -> None:
        def once() -> None:
            with self.sessions() as session:
                # One statement, atomic alone: autocommit spares its BEGIN and COMMIT round trips.
                session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
                store.insert_claimed(session, self.clock, row, lease_s=self.lease_s)

        retrying_on_disconnect(self.lease_s, sleep=self.sleep)(once)

    async def run_claimed(
        self,
        claim: store.Claim,
        *,
        relay: Relay | None = None,
        inserted: PendingRecord | None = None,
    ) -> tuple[Outcome, Verdict | None]:
        """Run a job whose claim was made elsewhere (the API's sync path inserts its job
        claimed) as a claimed one: the same pipeline, group write and lease renewal. Returns
        the outcome once written, with the verdict (None if the run crashed). The run is a task
        of its own: a caller that stops waiting leaves it to finish and be written.

        `inserted`: the claimed row's insert, begun once the call's request is on its way (the
        upstream's round trip hides the insert's), or once the run ends if no call went out;
        the final write waits for it, and a failed insert fails the run (there is no row to
        write to)."""
        assert self._to_write is not None, "start() the runtime first"
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        stale = self.policies.stale([claim.tenant_id], [claim.api_key_id])
        if any(stale):
            await self._in_sql(self._refresh_policies, *stale)
        self._active[claim.id] = claim
        run = self._spawn(self._run(claim, future, relay, inserted), name=f"job-{claim.id}")
        outcome = await asyncio.shield(future)
        return outcome, run.result()

    # --- claims ----------------------------------------------------------------------------

    async def _claimer(self) -> None:
        assert self._to_claim is not None
        while True:
            group = await self._to_claim.next_group()
            traced = tracing.enabled()
            started_ns = time.time_ns() if traced else 0
            try:
                claims, outcomes = await self._in_sql(self._claim_retrying, group)
            except Exception:
                # The ids stay `queued` in SQL: the sweeper dispatches them again.
                log.exception("claim_failed", jobs=len(group))
                for handed in group:
                    if not handed.future.done():
                        handed.future.set_result(Outcome(OutcomeStatus.SKIPPED))
                continue
            if traced:
                _trace_claims(group, claims, started_ns)
            self._start_jobs(group, claims, outcomes)

    def _start_jobs(
        self, group: list[_Handed], claims: list[store.Claim], outcomes: dict[str, Outcome]
    ) -> None:
        futures: dict[str, asyncio.Future[Outcome]] = {}
        won = {c.id for c in claims}
        for handed in group:
            if handed.job_id in futures:  # a duplicate in this very group
                handed.future.set_result(Outcome(OutcomeStatus.SKIPPED))
            elif handed.job_id not in won:
                handed.future.set_result(outcomes.get(handed.job_id, Outcome(OutcomeStatus.SKIPPED)))
            else:
                futures[handed.job_id] = handed.future
        for claim in claims:
            self._active[claim.id] = claim
            self._spawn(self._run(claim, futures[claim.id]), name=f"job-{claim.id}")

    def _claim_retrying(self, group: list[_Handed]) -> tuple[list[store.Claim], dict[str, Outcome]]:
        """`_claim_group`, tried again on a lost connection: the pool does not ping a connection
        before handing it out (a round trip per checkout), so a claim is the first to find one
        the server closed. A retry after a COMMIT that landed with its answer lost claims
        nothing; those jobs wait out their lease for the reaper."""
        return retrying_on_disconnect(self.lease_s, sleep=self.sleep)(lambda: self._claim_group(group))

    def _refresh_policies(self, tenant_ids: set[str], key_ids: set[str]) -> None:
        with self.sessions() as session:
            self.policies.refresh(session, tenant_ids, key_ids)

    def _claim_group(self, group: list[_Handed]) -> tuple[list[store.Claim], dict[str, Outcome]]:
        """In a SQL thread: claim the group; read the stale tenant policies; decide the unclaimed.

        An early message is put back until its job is due, never dropped: the claim found the
        job not due by the SQL clock, so even when this process's clock already says it is (a
        clock behind the database's, or a message at the due moment itself) it comes back after
        `MIN_REDELAY_S`. Dropping it would leave the job to the sweeper."""
        ids = list(dict.fromkeys(h.job_id for h in group))
        with self.sessions() as session:
            claims = store.claim_jobs(session, self.clock, ids, lease_s=self.lease_s)
            won = {c.id for c in claims}
            early = store.not_due(session, [i for i in ids if i not in won]) if len(won) < len(ids) else {}
            stale_tenants, stale_keys = self.policies.stale(
                {c.tenant_id for c in claims}, {c.api_key_id for c in claims}
            )
            if stale_tenants or stale_keys:
                self.policies.refresh(session, stale_tenants, stale_keys)
        outcomes: dict[str, Outcome] = {}
        effects = Effects()
        priorities = {h.job_id: h.priority for h in group}
        now = self.clock.utcnow()
        for job_id, due in early.items():
            delay_s = max((due - now).total_seconds(), MIN_REDELAY_S)
            outcomes[job_id] = Outcome(OutcomeStatus.REQUEUED, delay_s=delay_s)
            if delay_s <= MAX_BROKER_DELAY_S:
                effects.dispatch.append((job_id, priorities[job_id], queue.due_ms(int(delay_s * 1000))))
        if effects:
            self.apply_effects(effects)
        return claims, outcomes

    # --- running ---------------------------------------------------------------------------

    async def _run(
        self,
        claim: store.Claim,
        future: asyncio.Future[Outcome],
        relay: Relay | None = None,
        inserted: PendingRecord | None = None,
    ) -> Verdict | None:
        if inserted is not None:
            CALL_GOING_OUT.set(inserted.begin)  # this task's own context: nothing to reset
        tenant = self.policies.tenant(claim.tenant_id)
        key = self.policies.key(claim.api_key_id)
        # Bound for this task's own context (each job runs as a task of its own), so nothing
        # needs unbinding; `bound_contextvars` copied the whole context twice a job.
        structlog.contextvars.bind_contextvars(job_id=claim.id, request_id=claim.request_id)
        if tracing.enabled():
            tracing.enter_trace(claim.traceparent)
        try:
            verdict = await self.runner.run(claim, tenant, key, relay=relay)
        except Exception as exc:
            # Its lease lapses and the reaper re-queues the job: nothing is lost.
            log.exception("run_job_crashed", job_id=claim.id)
            self._active.pop(claim.id, None)
            future.set_exception(exc)
            if inserted is not None:
                inserted.begin()  # recorded all the same, for the reaper to hand on
            return None
        if inserted is not None:
            inserted.begin()
            try:
                await inserted.done
            except Exception as exc:
                # No row to write to: the caller answers the insert's error (503 for SQL down).
                log.warning("claimed_insert_failed", job_id=claim.id, error=type(exc).__name__)
                self._active.pop(claim.id, None)
                future.set_exception(exc)
                return None
        assert self._to_write is not None
        self._to_write.add(_Finished(claim, verdict, future))
        return verdict

    # --- writes ----------------------------------------------------------------------------

    async def _writer(self) -> None:
        """Takes a group once a write slot is free: under load the writes in flight fill their
        slots and what finishes meanwhile gathers into the next group (one transaction for
        many jobs); alone, an interactive job is written at once."""
        assert self._to_write is not None
        slots = asyncio.Semaphore(self._write_slots)
        while True:
            await slots.acquire()
            try:
                group = await self._to_write.next_group()
            except BaseException:
                slots.release()
                raise
            self._spawn(self._write(group, slots), name="jobgate-write")

    async def _write(self, group: list[_Finished], slots: asyncio.Semaphore) -> None:
        traced = tracing.enabled()
        started_ns = time.time_ns() if traced else 0
        # The group's breaker reports, reconciliations and shared answers need nothing from its
        # SQL write (they went out after it whatever it did): they go out while it runs.
        fleet_state = asyncio.ensure_future(self._update_fleet_state(group))
        try:
            written = await self._in_sql(self._write_and_apply, group)
        except Exception:
            log.exception("final_write_failed", jobs=len(group))
            written = _Written({}, Effects())
        finally:
            slots.release()
        if traced:
            _trace_write(group, written, started_ns)
        await fleet_state
        for item in group:
            self._active.pop(item.claim.id, None)
            outcome = written.outcomes.get(item.claim.id, Outcome(OutcomeStatus.SKIPPED))
            if outcome.status is OutcomeStatus.SKIPPED:
                log.warning("final_write_lost", job_id=item.claim.id, attempt=item.claim.attempt)
            elif item.verdict.is_final:
                self._observe_final(item)
            elif item.verdict.refund:
                metrics.LIMITER_DELAYS.labels(reason="busy").inc()
            if not item.future.done():
                item.future.set_result(outcome)

    async def _update_fleet_state(self, group: list[_Finished]) -> None:
        """The group's deferred breaker reports and reconciliations, in one round trip. Lost
        on a Redis error: a breaker then misses a few successes, a bucket keeps an estimate."""
        updates = [update for item in group for update in item.verdict.fleet_updates]
        if not updates:
            return
        try:
            await run_calls(self.fleet_state, updates)
        except (redis.RedisError, OSError) as exc:
            log.warning("fleet_state_updates_failed", updates=len(updates), error=type(exc).__name__)

    def _write_and_apply(self, group: list[_Finished]) -> _Written:
        written = self._write_group(group)
        if written.effects:
            self.apply_effects(written.effects)
        return written

    def _write_group(self, group: list[_Finished]) -> _Written:
        """One transaction for the group; on a bad row (not a lost connection), each alone."""
        try:
            return self._write_retrying(group)
        except SQLAlchemyError as exc:
            if len(group) == 1 or is_connection_error(exc):
                raise
            log.warning("group_write_split", jobs=len(group), error=type(exc).__name__)
        written = _Written({}, Effects())
        for item in group:
            try:
                one = self._write_retrying([item])
            except SQLAlchemyError:
                log.exception("final_write_failed", job_id=item.claim.id)
                continue
            written.outcomes.update(one.outcomes)
            written.effects.add(one.effects)
        return written

    def _write_retrying(self, group: list[_Finished]) -> _Written:
        """The group's fenced writes, retried on a lost connection within the lease. A retry
        first asks which rows the last try's COMMIT already wrote (only its answer was lost):
        writing those again would find their claims gone and log their attempts twice."""
        tries = 0

        def once() -> _Written:
            nonlocal tries
            tries += 1
            with self.sessions() as session:
                landed = self._landed(session, group) if tries > 1 else {}
                return self._write_once(session, [i for i in group if i.claim.id not in landed], landed)

        return retrying_on_disconnect(self.lease_s, sleep=self.sleep)(once)

    @staticmethod
    def _landed(session: Session, group: list[_Finished]) -> dict[str, Outcome]:
        landed: dict[str, Outcome] = {}
        for item in group:
            status, attempts = _expected_state(item)
            if store.holds(session, item.claim, status=status, attempts=attempts):
                log.info("sql_write_had_landed", job_id=item.claim.id, status=status)
                landed[item.claim.id] = _outcome(item.verdict)
        return landed

    def _write_once(self, session: Session, group: list[_Finished], landed: dict[str, Outcome]) -> _Written:
        outcomes = dict(landed)
        effects = Effects()
        final_ids: list[str] = []
        attempt_rows: list[dict[str, Any]] = []
        # In id order, as every writer locks rows: two groups can then never deadlock.
        group = sorted(group, key=lambda i: i.claim.id)
        won = store.finish_jobs(
            session, self.clock, [(i.claim, i.verdict.values) for i in group if i.verdict.is_final]
        )
        for item in group:
            claim, verdict = item.claim, item.verdict
            attempt_rows += _attempt_rows(claim, verdict)
            if verdict.is_final:
                if claim.id not in won:
                    continue
                final_ids.append(claim.id)
            elif not self._requeue(session, claim, verdict, effects):
                continue
            outcomes[claim.id] = _outcome(verdict)
        store.record_attempts(session, attempt_rows)
        effects.deliveries = commit_final(session, final_ids, self.clock.utcnow(), routes=_routes(group))
        effects.finished = final_ids
        return _Written(outcomes, effects)

    def _requeue(self, session: Session, claim: store.Claim, verdict: Verdict, effects: Effects) -> bool:
        """Back to the queue for what is left of the verdict's delay; False if the claim is lost."""
        delay_s = verdict.delay_left_s()
        if not store.requeue_job(session, self.clock, claim, delay_s=delay_s, refund_attempt=verdict.refund):
            return False
        if delay_s <= MAX_BROKER_DELAY_S:
            effects.dispatch.append((claim.id, claim.priority, verdict.due_ms()))
        return True

    def _observe_final(self, item: _Finished) -> None:
        claim, status = item.claim, item.verdict.status
        metrics.record_jobs_finished(status)
        if claim.created_at is not None:
            elapsed_s = (self.clock.utcnow() - claim.created_at).total_seconds()
            metrics.JOB_DURATION.labels(priority=claim.priority).observe(max(elapsed_s, 0.0))
        log.info(
            "job_finished",
            job_id=claim.id,
            request_id=claim.request_id,
            status=str(status),
            attempt=claim.attempt,
            calls=len(item.verdict.records),
        )

    # --- leases ----------------------------------------------------------------------------

    async def _lease_keeper(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            claims = list(self._active.values())
            if not claims:
                continue
            try:
                await self._in_sql(self._renew, claims)
            except Exception:
                log.exception("lease_renewal_failed", jobs=len(claims))

    def _renew(self, claims: Sequence[store.Claim]) -> int:
        with self.sessions() as session:
            return store.renew_leases(session, self.clock, list(claims), lease_s=self.lease_s)

    # --- plumbing --------------------------------------------------------------------------

    async def _in_sql(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._sql, fn, *args)

    def _spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _outcome(verdict: Verdict) -> Outcome:
    if verdict.is_final:
        return Outcome(verdict.status)
    return Outcome(OutcomeStatus.REQUEUED, delay_s=verdict.delay_s)


def _routes(group: list[_Finished]) -> dict[str, JobRoute]:
    """Where each final job's event goes, from its claim (no read of the rows just written)."""
    return {
        item.claim.id: JobRoute(
            tenant_id=item.claim.tenant_id,
            status=str(item.verdict.values["status"]),
            webhook_url=item.claim.webhook_url,
            batch_id=item.claim.batch_id,
        )
        for item in group
        if item.verdict.is_final
    }


def _trace_claims(group: list[_Handed], claims: list[store.Claim], started_ns: int) -> None:
    """Each claimed job's queue wait and claim spans: the claim names the jobs' traces."""
    ended_ns = time.time_ns()
    due_ms = {handed.job_id: handed.due_ms for handed in group}
    for claim in claims:
        tracing.record_claim(
            claim.traceparent,
            job_id=claim.id,
            attempt=claim.attempt,
            due_ms=due_ms.get(claim.id),
            started_ns=started_ns,
            ended_ns=ended_ns,
            group_size=len(claims),
        )


def _trace_write(group: list[_Finished], written: _Written, started_ns: int) -> None:
    """Each job's final-write span, with its group's times (one transaction for them all)."""
    ended_ns = time.time_ns()
    for item in group:
        outcome = written.outcomes.get(item.claim.id, Outcome(OutcomeStatus.SKIPPED))
        attributes: dict[str, str | int] = {
            "jobgate.job_id": item.claim.id,
            "jobgate.attempt": item.claim.attempt,
            "jobgate.outcome": str(outcome.status),
            "jobgate.group_size": len(group),
        }
        tracing.record_span(tracing.FINAL_WRITE, item.claim.traceparent, started_ns, ended_ns, attributes)


def _expected_state(item: _Finished) -> tuple[str, int]:
    """The job's (status, attempts) once this item's own write has landed."""
    verdict, attempt = item.verdict, item.claim.attempt
    if verdict.is_final:
        return str(verdict.values["status"]), attempt
    return store.QUEUED, attempt - 1 if verdict.refund else attempt


def _attempt_rows(claim: store.Claim, verdict: Verdict) -> list[dict[str, Any]]:
    return [
        {
            "job_id": claim.id,
            "attempt": claim.attempt,
            "provider": r.target.provider,
            "model": r.target.model,
            "outcome": r.outcome,
            "error_message": r.message[:1000] if r.message else None,
            "latency_ms": r.latency_ms,
            "started_at": r.started_at,
            "route": r.route,
        }
        for r in verdict.records
    ]


class LoopThread:
    """An asyncio event loop on a thread of its own, for code that lives on threads
    (Dramatiq's consumers, the tests' inline worker) to hand coroutines to."""

    def __init__(self, name: str = "jobgate-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout_s: float | None = None) -> Any:
        """Run `coro` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()
