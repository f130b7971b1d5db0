"""Alembic environment: one set of migrations for Postgres and SQLite.

The URL comes from `config.attributes["database_url"]` (set by `jobgate migrate` and the
tests), else `-x url=…`, else jobgate's settings. SQLite needs batch mode to alter tables.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from core.settings import Settings
from core.store.db import hide_row_details, sync_url
from core.store.models import Base

config = context.config


def _database_url() -> str:
    url = config.attributes.get("database_url") or context.get_x_argument(as_dictionary=True).get("url")
    return str(url or Settings().database_url)


def run_migrations_online() -> None:
    url = sync_url(_database_url())
    # Like every engine of jobgate's (core/store/db.py): a failed statement's values stay out of
    # the error, so a migration's log cannot carry prompts or key hashes it was copying.
    connectable = create_engine(url, poolclass=pool.NullPool, hide_parameters=True)
    hide_row_details(connectable)
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=url.get_backend_name() == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    connectable.dispose()


if context.is_offline_mode():
    context.configure(url=str(sync_url(_database_url())), target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
