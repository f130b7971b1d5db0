"""Engines and sessions for Postgres and SQLite, sync (workers) and async (API).

One URL setting serves both: jobgate derives the driver each side needs from its scheme
(asyncpg / aiosqlite for the API, psycopg / sqlite3 for the worker threads and Alembic).
Pools are sized explicitly (DESIGN.md: SQL connections are scarce); SQLite gets WAL mode and
a busy timeout so many threads can share one file.

A database error is logged with its SQL, and a statement's values are prompts, answers, key
hashes and webhook secrets: every engine hides its parameters (`hide_parameters=True`) and
drops what Postgres quotes of the row (`hide_row_details`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

from core.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000

_SYNC_DRIVERS = {"postgresql": "postgresql+psycopg", "sqlite": "sqlite"}
_ASYNC_DRIVERS = {"postgresql": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}


def _backend(url: URL) -> str:
    backend = url.get_backend_name()
    if backend not in _SYNC_DRIVERS:
        raise ValueError(f"JOBGATE_DATABASE_URL: unsupported database {backend!r} (use postgresql or sqlite)")
    return backend


def sync_url(database_url: str) -> URL:
    url = make_url(database_url)
    return url.set(drivername=_SYNC_DRIVERS[_backend(url)])


def async_url(database_url: str) -> URL:
    url = make_url(database_url)
    return url.set(drivername=_ASYNC_DRIVERS[_backend(url)])


def utcnow() -> datetime:
    """The process's UTC clock, the SQL clock on SQLite (one machine); Postgres uses its own."""
    return datetime.now(UTC)


def _ensure_sqlite_dir(url: URL) -> None:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def hide_row_details(engine: Engine) -> None:
    """Keep only the primary message of a Postgres error raised through `engine`.

    Postgres's DETAIL and CONTEXT quote the row a statement failed on ("Failing row contains
    (…)", "Key (key_hash)=(…) already exists"), where `hide_parameters` cannot reach: psycopg
    puts them in its error's text, asyncpg's error appends its `.detail` to its text (a
    traceback prints it as the cause of SQLAlchemy's). The SQLSTATE and the constraint's name
    stay on the driver's error; sqlite3 quotes no values.
    """
    event.listen(engine, "handle_error", _keep_primary_message)


def _keep_primary_message(context: ExceptionContext) -> None:
    driver_error: BaseException | None = context.original_exception
    while driver_error is not None:
        primary = getattr(getattr(driver_error, "diag", None), "message_primary", None)
        if primary:  # psycopg
            driver_error.args = (primary,)
            name = f"{type(driver_error).__module__}.{type(driver_error).__name__}"
            if context.sqlalchemy_exception is not None:
                context.sqlalchemy_exception.args = (f"({name}) {primary}",)
        if getattr(driver_error, "detail", None):  # asyncpg
            driver_error.detail = None  # type: ignore[attr-defined]
        driver_error = driver_error.__cause__


# Without a pre-ping, a connection the server closed is found out by the statement that uses
# it; callers on the hot path retry on a lost connection, and recycling keeps the odds low.
POOL_RECYCLE_S = 300


def _pool_args(
    settings: Settings, backend: str, *, pool_size: int | None = None, pre_ping: bool = True
) -> dict[str, Any]:
    if backend == "sqlite":
        return {}
    if pool_size is not None:
        # A fixed pool: the owner knows how many connections it uses at once.
        return {
            "pool_size": pool_size,
            "max_overflow": 0,
            "pool_timeout": settings.db_pool_timeout_s,
            "pool_pre_ping": pre_ping,
            "pool_recycle": POOL_RECYCLE_S,
        }
    return {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_pool_timeout_s,
        "pool_pre_ping": pre_ping,
    }


def make_sync_engine(settings: Settings, *, pool_size: int | None = None, pre_ping: bool = True) -> Engine:
    """`pool_size` fixes the pool at that many connections (no overflow); by default the
    pool follows `JOBGATE_DB_POOL_SIZE` / `JOBGATE_DB_MAX_OVERFLOW`."""
    url = sync_url(settings.database_url)
    backend = _backend(url)
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        _ensure_sqlite_dir(url)
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    else:
        # Bounded connect and statement time: an unreachable database fails fast, never hangs.
        # The statement timeout is the server's; for a network that drops mid-query the client
        # needs its own bound, or a worker thread waits on TCP for the kernel's ~15 minutes:
        # unacknowledged data gives up after 35 s, a silent peer after 30 + 3 x 10 s of probes.
        connect_args = {
            "connect_timeout": 5,
            "options": "-c statement_timeout=30000",
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            "tcp_user_timeout": 35_000,
        }
    pool = _pool_args(settings, backend, pool_size=pool_size, pre_ping=pre_ping)
    engine = create_engine(url, connect_args=connect_args, hide_parameters=True, **pool)
    hide_row_details(engine)
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def make_async_engine(settings: Settings) -> AsyncEngine:
    url = async_url(settings.database_url)
    backend = _backend(url)
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        _ensure_sqlite_dir(url)
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    else:
        connect_args = {"timeout": 5, "command_timeout": 30}
    engine = create_async_engine(
        url, connect_args=connect_args, hide_parameters=True, **_pool_args(settings, backend)
    )
    hide_row_details(engine.sync_engine)
    if backend == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def make_sync_sessions(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def make_async_sessions(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)
