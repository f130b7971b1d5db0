"""Fresh, migrated Postgres databases for tests, made ahead of time and dropped afterwards in
the background.

Each test that needs Postgres gets a database of its own (`jobgate_test_<hex>`), a copy of one
migrated template (`CREATE DATABASE … TEMPLATE`). With `fsync` on, as CI's Postgres has it,
making a copy takes 0.3-0.5 s and dropping one up to 1 s, mostly waiting on the disk: a
thread of this module does both while the tests run, keeping `AHEAD` copies ready and
dropping each used one (`WITH (FORCE)`: a process a test started may still hold a
connection). A test still never sees another's database: a copy is handed out once and
dropped after.

`database_supply(admin_url)` is the process's one supply for that server (the template is
migrated on first use); `close_supplies()` drops what is left, the template last (also at
exit). Used by `tests/conftest.py` (`postgres_url`) and `tests/fleet.py` (`run_fleet`).
"""

from __future__ import annotations

import atexit
import threading
import uuid
from collections import deque

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from core.store.migrate import upgrade

AHEAD = 2
PREFIX = "jobgate_test_"

# Alembic's `context` is one module-level proxy: two threads migrating at once (benchmarks run
# side by side) would run on each other's configuration.
MIGRATING = threading.Lock()


def database_url(admin_url: str, name: str) -> str:
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _create(admin_url: str, name: str, template: str | None = None) -> None:
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(create)


def _drop(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class DatabaseSupply:
    """Copies of a migrated template: `take()` one (a name), `give_back(name)` to drop it."""

    def __init__(self, admin_url: str, *, ahead: int = AHEAD) -> None:
        self.admin_url = admin_url
        self.ahead = ahead
        self.template = f"{PREFIX}template_{uuid.uuid4().hex[:12]}"
        _create(admin_url, self.template)
        try:
            with MIGRATING:
                upgrade(database_url(admin_url, self.template))
        except BaseException:
            _drop(admin_url, self.template)
            raise
        self._ready: deque[str] = deque()
        self._to_drop: deque[str] = deque()
        self._wanted = 0  # takers waiting for a copy
        self._closing = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="database-supply", daemon=True)
        self._thread.start()

    def take(self, timeout_s: float = 60.0) -> str:
        """The name of a fresh copy of the template, this caller's alone."""
        with self._changed:
            self._wanted += 1
            self._changed.notify_all()
            try:
                ready = self._changed.wait_for(
                    lambda: bool(self._ready) or self._error is not None or self._closing, timeout_s
                )
                if self._ready:
                    return self._ready.popleft()
            finally:
                self._wanted -= 1
                self._changed.notify_all()
            error = self._error
        if error is not None:
            raise RuntimeError(f"the database supply failed: {error!r}") from error
        raise TimeoutError(f"no database made within {timeout_s} s" if not ready else "supply closed")

    def give_back(self, name: str) -> None:
        """Drop this copy (in the background)."""
        with self._changed:
            self._to_drop.append(name)
            self._changed.notify_all()

    def _next_task(self) -> tuple[str, str] | None:
        with self._changed:
            while True:
                if self._to_drop and not self._wanted:
                    return "drop", self._to_drop.popleft()
                if not self._closing and len(self._ready) < max(self.ahead, self._wanted):
                    return "create", f"{PREFIX}{uuid.uuid4().hex[:12]}"
                if self._to_drop:
                    return "drop", self._to_drop.popleft()
                if self._closing:
                    return None
                self._changed.wait()

    def _run(self) -> None:
        while (task := self._next_task()) is not None:
            kind, name = task
            try:
                if kind == "create":
                    _create(self.admin_url, name, self.template)
                else:
                    _drop(self.admin_url, name)
            except Exception as exc:  # handed to the takers
                with self._changed:
                    self._error = exc
                    self._changed.notify_all()
                return
            if kind == "create":
                with self._changed:
                    # Made while `close` ran: nobody will take it.
                    (self._to_drop if self._closing else self._ready).append(name)
                    self._changed.notify_all()

    def close(self) -> None:
        """Drop every copy left and the template."""
        with self._changed:
            self._closing = True
            self._to_drop.extend(self._ready)
            self._ready.clear()
            self._changed.notify_all()
        self._thread.join(timeout=120)
        with self._changed:
            left = [*self._to_drop, *self._ready]
            self._to_drop.clear()
            self._ready.clear()
        for name in [*left, self.template]:
            _drop(self.admin_url, name)


_SUPPLIES: dict[str, DatabaseSupply] = {}
_SUPPLIES_LOCK = threading.Lock()


def database_supply(admin_url: str) -> DatabaseSupply:
    """This process's supply of databases on the server `admin_url` names (made on first use)."""
    with _SUPPLIES_LOCK:
        supply = _SUPPLIES.get(admin_url)
        if supply is None:
            supply = _SUPPLIES[admin_url] = DatabaseSupply(admin_url)
        return supply


@atexit.register
def close_supplies() -> None:
    with _SUPPLIES_LOCK:
        supplies = list(_SUPPLIES.values())
        _SUPPLIES.clear()
    for supply in supplies:
        supply.close()
