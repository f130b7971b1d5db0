"""The Alembic migrations, on a fresh Postgres database and a fresh SQLite file.

Upgrade to head, downgrade to base, upgrade to head again (STYLE rule 18): every table and
index the models declare exists after each upgrade and is gone after the downgrade, so a
downgrade that forgets a table, or an upgrade that cannot run twice, fails here first.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from core.store.db import sync_url
from core.store.migrate import alembic_config, downgrade, upgrade
from core.store.models import Base

# Alembic's bookkeeping table: created by the first upgrade, left (empty) by a downgrade to base.
VERSION_TABLE = "alembic_version"


def _schema(database_url: str) -> tuple[set[str], set[str], str | None]:
    """The database's tables (without Alembic's), its named indexes and its current revision."""
    engine = sa.create_engine(sync_url(database_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            inspector = sa.inspect(connection)
            tables = set(inspector.get_table_names()) - {VERSION_TABLE}
            indexes = {
                index["name"]
                for table in tables
                for index in inspector.get_indexes(table)
                if index["name"] is not None
            }
            revision = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    return tables, indexes, revision


def test_migrations_upgrade_downgrade_and_upgrade_again_to_the_models_schema(
    empty_database_url: str,
) -> None:
    head = ScriptDirectory.from_config(alembic_config(empty_database_url)).get_current_head()
    model_tables = set(Base.metadata.tables)
    model_indexes = {str(index.name) for table in Base.metadata.tables.values() for index in table.indexes}
    assert head is not None
    assert model_tables, "the models declare no tables: nothing to check the migrations against"

    upgrade(empty_database_url)
    tables, indexes, revision = _schema(empty_database_url)
    assert (tables, revision) == (model_tables, head)
    assert model_indexes <= indexes

    downgrade(empty_database_url)
    assert _schema(empty_database_url) == (set(), set(), None)

    upgrade(empty_database_url)
    tables, indexes, revision = _schema(empty_database_url)
    assert (tables, revision) == (model_tables, head)
    assert model_indexes <= indexes
