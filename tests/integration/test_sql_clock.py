"""The SQL clock's two readings on Postgres (core/store/clock.py): a transaction's start, the
same for all its statements, and the moment a statement runs, for due times counted from a
moment the process measured inside a long transaction (a group write of hundreds of jobs)."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from core.settings import Settings
from core.store.clock import SqlClock
from core.store.db import make_sync_engine


def test_current_is_the_statements_moment_and_now_the_transactions_start(postgres_url: str) -> None:
    engine = make_sync_engine(Settings(database_url=postgres_url))
    clock = SqlClock("postgresql")
    try:
        with engine.begin() as conn:
            began = conn.execute(sa.select(clock.now())).scalar_one()
            conn.execute(sa.text("SELECT pg_sleep(0.3)"))
            now, current = conn.execute(sa.select(clock.now(), clock.current())).one()
    finally:
        engine.dispose()
    assert now == began
    assert current - began >= timedelta(seconds=0.3)
