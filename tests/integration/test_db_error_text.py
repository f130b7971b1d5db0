"""A database error says what failed and never what the statement carried.

Errors are logged with their SQL (and tracebacks print the driver's error beneath SQLAlchemy's),
while a statement's values are prompts, answers, key hashes and webhook secrets: every engine
jobgate makes hides its parameters, and drops the row Postgres quotes back (DETAIL: "Failing
row contains (…)", "Key (…)=(…) already exists"). On SQLite and Postgres, sync (psycopg, the
workers) and async (asyncpg, the API) engines alike.
"""

from __future__ import annotations

import traceback
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError

from core.settings import Settings
from core.store.db import make_async_engine, make_sync_engine

PROBE_TABLE = "db_error_probe"
CREATE = f"CREATE TABLE {PROBE_TABLE} (id integer PRIMARY KEY, secret text UNIQUE, other text NOT NULL)"
# (statement, what the error must still say): a key that exists, a row missing a column.
FAILING = [
    (f"INSERT INTO {PROBE_TABLE} (id, secret, other) VALUES (2, :secret, 'x')", "unique"),
    (f"INSERT INTO {PROBE_TABLE} (id, secret, other) VALUES (3, :other_secret, NULL)", "null"),
]


def everything_said(error: BaseException) -> str:
    """All a log line with this error could show: its text and its whole chained traceback."""
    return str(error) + "".join(traceback.format_exception(error))


@pytest.mark.parametrize(("statement", "says"), FAILING, ids=["duplicate-key", "not-null"])
def test_a_failed_statement_on_a_sync_engine_names_no_value_it_carried(
    database_url: str, statement: str, says: str
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    engine = make_sync_engine(Settings(database_url=database_url))
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(CREATE))
            connection.execute(
                sa.text(f"INSERT INTO {PROBE_TABLE} VALUES (1, :secret, 'x')"), {"secret": canary}
            )
        with pytest.raises(IntegrityError) as raised, engine.begin() as connection:
            connection.execute(sa.text(statement), {"secret": canary, "other_secret": canary})
    finally:
        engine.dispose()

    said = everything_said(raised.value)
    assert canary not in said
    assert says in str(raised.value).lower()  # still says what failed
    assert "[SQL parameters hidden due to hide_parameters=True]" in str(raised.value)


@pytest.mark.parametrize(("statement", "says"), FAILING, ids=["duplicate-key", "not-null"])
async def test_a_failed_statement_on_an_async_engine_names_no_value_it_carried(
    database_url: str, statement: str, says: str
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    engine = make_async_engine(Settings(database_url=database_url))
    try:
        async with engine.begin() as connection:
            await connection.execute(sa.text(CREATE))
            await connection.execute(
                sa.text(f"INSERT INTO {PROBE_TABLE} VALUES (1, :secret, 'x')"), {"secret": canary}
            )
        with pytest.raises(DBAPIError) as raised:
            async with engine.begin() as connection:
                await connection.execute(sa.text(statement), {"secret": canary, "other_secret": canary})
    finally:
        await engine.dispose()

    said = everything_said(raised.value)
    assert canary not in said
    assert says in str(raised.value).lower()
    assert "[SQL parameters hidden due to hide_parameters=True]" in str(raised.value)
