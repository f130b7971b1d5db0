"""The SQL clock: the database's own `now()` on Postgres, the process's UTC clock on SQLite.

Leases and delays compare against this one clock (STYLE.md rule 7), so worker machines
with skewed clocks still agree on when a lease has expired.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func


def system_utcnow() -> datetime:
    return datetime.now(UTC)


class SqlClock:
    def __init__(self, dialect: str, utcnow: Callable[[], datetime] = system_utcnow) -> None:
        self.dialect = dialect
        self.utcnow = utcnow

    def now(self) -> Any:
        """A value usable in statements: a SQL expression on Postgres, a datetime on SQLite.
        On Postgres it is the transaction's start, the same for all its statements."""
        if self.dialect == "postgresql":
            return func.now()
        return self.utcnow()

    def current(self) -> Any:
        """Like `now`, but the moment the statement runs (`clock_timestamp()` on Postgres): for
        a due time counted from a moment this process measured, inside a transaction that may
        have begun well before it (a group write of hundreds of jobs)."""
        if self.dialect == "postgresql":
            return func.clock_timestamp()
        return self.utcnow()
