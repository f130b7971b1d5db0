"""Retrying the short transactions that end a job when the database connection is lost.

By the time a worker writes a job's result, the upstream call is paid for; a Postgres
restart, failover or network blip at that moment must not throw the answer away (the lease
would expire and the job run, and be paid for, again). These writes are conditional on the
claim, so retrying them is safe: if the claim was lost meanwhile, the retry writes nothing;
if the first try's COMMIT landed and only its answer was lost, the caller sees its own write
(`jobs.holds`) and writes nothing again.
Only connection-level errors are retried (SQLAlchemy's `OperationalError`, or any DBAPI
error that invalidated its connection), within a bound the caller gives (the lease: past
it the reaper may have handed the job on).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

log = structlog.get_logger("jobgate.store")


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    log.warning(
        "sql_write_retry",
        attempt=state.attempt_number,
        error=type(error).__name__,
        next_in_s=round(state.upcoming_sleep, 2),
    )


def retrying_on_disconnect(within_s: float, *, sleep: Callable[[float], None] = time.sleep) -> Retrying:
    """`retrying_on_disconnect(30)(write)` calls `write` again on connection errors, with
    backoff (0.2 s doubling to 2 s), for at most `within_s` seconds, and returns its result;
    `sleep` waits the backoff (a test records it instead)."""
    return Retrying(
        sleep=sleep,
        retry=retry_if_exception(is_connection_error),
        stop=stop_after_delay(within_s),
        wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
        before_sleep=_log_retry,
        reraise=True,
    )
