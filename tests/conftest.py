"""Shared fixtures: real Redis and Postgres (as CI has them), SQLite, per-test isolation.

Each test gets its own Redis key prefix and, where it needs SQL, its own database (a fresh
SQLite file, or a fresh Postgres database created and dropped around the test session).
Under `CI=true` an unreachable service fails the run instead of skipping tests.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
import pytest
import redis
import redis.asyncio as aioredis
import yaml
from psycopg import sql
from sqlalchemy import select
from sqlalchemy.engine import make_url

from api.app import create_app
from core.auth import KeyOptions, Scope, create_key
from core.config import load_config
from core.providers import build_providers, close_providers
from core.redis.keys import Keys
from core.services.execute import Outcome
from core.services.job_engine import build_runner
from core.services.lifecycle import Effects, job_done_message
from core.services.runtime import JobRuntime, LoopThread
from core.settings import Settings
from core.store import jobs as store
from core.store.clock import SqlClock
from core.store.db import make_sync_engine, make_sync_sessions
from core.store.migrate import upgrade
from core.store.models import Job
from tests.databases import DatabaseSupply, close_supplies, database_supply
from tests.fleet import delete_prefix
from tests.processes import ServiceProcess, jobgate_env, start_worker, stop_all
from tests.sim_process import SimHandle, run_sim

REDIS_URL = os.environ.get("JOBGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_ADMIN_URL = os.environ.get("JOBGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable: {exc}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        _unavailable("Redis", exc)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A unique key prefix for this test; its keys are deleted afterwards."""
    prefix = f"jgtest-{uuid.uuid4().hex[:10]}"
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture
def keys(redis_prefix: str) -> Keys:
    return Keys(redis_prefix)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
async def async_redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """`redis_client`'s asyncio twin, on the test's own event loop."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    await client.aclose()


# --- SQL: a fresh database per test, SQLite file or Postgres database ---------------------------


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    try:
        psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        _unavailable("Postgres", exc)
    return POSTGRES_ADMIN_URL


@pytest.fixture
def empty_sqlite_url(tmp_path: Path) -> str:
    """A SQLite file that does not exist yet (no schema)."""
    return f"sqlite:///{tmp_path / 'jobgate.db'}"


def _postgres_url(admin_url: str, database: str) -> str:
    return make_url(admin_url).set(database=database).render_as_string(hide_password=False)


@contextmanager
def _postgres_database(admin_url: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """A new database `<prefix><hex>` (a copy of `template` if given), dropped afterwards."""
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        create += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(create)
    try:
        yield name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            # FORCE: a process the test started may still hold a connection when it is torn down.
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def empty_postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A new, empty Postgres database `jobgate_test_<hex>`, dropped after the test."""
    with _postgres_database(postgres_admin_url, "jobgate_test_") as name:
        yield _postgres_url(postgres_admin_url, name)


@pytest.fixture(scope="session")
def _postgres_supply(postgres_admin_url: str) -> Iterator[DatabaseSupply]:
    """Copies of a database migrated once per session, made ahead and dropped in the background
    (tests/databases.py)."""
    yield database_supply(postgres_admin_url)
    close_supplies()


@pytest.fixture(scope="session")
def _migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "jobgate.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(_migrated_sqlite_template: Path, tmp_path: Path) -> str:
    """A migrated SQLite file of this test's own (a copy of the session's migrated template)."""
    path = tmp_path / "jobgate.db"
    with sqlite3.connect(_migrated_sqlite_template) as source, sqlite3.connect(path) as copy:
        source.backup(copy)
    return f"sqlite:///{path}"


@pytest.fixture
def postgres_url(postgres_admin_url: str, _postgres_supply: DatabaseSupply) -> Iterator[str]:
    """A migrated Postgres database `jobgate_test_<hex>` of this test's own, dropped afterwards."""
    name = _postgres_supply.take()
    try:
        yield _postgres_url(postgres_admin_url, name)
    finally:
        _postgres_supply.give_back(name)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated database of each kind; a module overrides this fixture to pin one."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


# A test whose behaviour does not depend on the SQL backend runs on SQLite only.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"empty_{request.param}_url")
    return url


# --- The simulated upstream and a config routed to it --------------------------------------------


@pytest.fixture(scope="session")
def sim() -> Iterator[SimHandle]:
    """One `python -m sim` for the session; tests keep apart by each using its own upstream model."""
    with run_sim() as handle:
        yield handle


@pytest.fixture
def upstream_model() -> str:
    """The provider model behind the `fast` alias, unique to this test so its sim stats are its own."""
    return f"echo-{uuid.uuid4().hex[:10]}"


def sim_calls(sim: SimHandle, model: str) -> int:
    """Upstream calls the sim answered (200) for `model`."""
    counters = sim.stats()["models"].get(model)
    return int(counters["calls"]) if counters else 0


@pytest.fixture
def config_path(tmp_path: Path, sim: SimHandle, upstream_model: str) -> Path:
    """A providers/models YAML: alias `fast` → the sim (OpenAI wire format), cache off by default."""
    config = {
        "providers": {
            "sim": {"kind": "openai", "base_url": sim.openai_base_url, "timeout_s": 10, "free": True}
        },
        "models": {"fast": {"targets": [{"provider": "sim", "model": upstream_model}]}},
        "pricing": {upstream_model: {"input_per_mtok": "1.00", "output_per_mtok": "2.00"}},
        # Off, so "the upstream saw one call" always means "the job ran once".
        "cache": {"default": False, "ttl_s": 60},
    }
    path = tmp_path / "jobgate.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def settings(database_url: str, redis_url: str, redis_prefix: str, config_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        config=config_path,
        log_format="json",
        log_level="WARNING",
    )


# --- Keys, the API in-process, and workers -------------------------------------------------------


@pytest.fixture
def make_key(settings: Settings) -> Iterator[Callable[..., str]]:
    """`make_key(tenant, **KeyOptions)` → a new API key for that tenant (created if needed);
    `make_key(None, scope="operator")` → an operator key."""
    engine = make_sync_engine(settings)
    sessions = make_sync_sessions(engine)

    def make(tenant: str | None, *, scope: Scope = "tenant", **options: Any) -> str:
        with sessions() as session:
            return create_key(session, tenant, scope=scope, options=KeyOptions(**options)).key

    yield make
    engine.dispose()


@pytest.fixture
def api_key(make_key: Callable[..., str]) -> str:
    return make_key("tenant-a")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


IN_PROCESS_URL = "http://jobgate.test"  # the base URL of `in_process_api`'s client


@asynccontextmanager
async def in_process_api(
    settings: Settings, key: str | None = None, *, http: Any = httpx
) -> AsyncIterator[httpx.AsyncClient]:
    """`create_app(settings)` served in this process (lifespan included) to an httpx client
    (`http=httpx2` for the client the openai SDK takes)."""
    app = create_app(settings)
    headers = bearer(key) if key is not None else None
    async with (
        app.router.lifespan_context(app),
        http.AsyncClient(
            transport=http.ASGITransport(app=app),
            base_url=IN_PROCESS_URL,
            headers=headers,
            timeout=30,
        ) as client,
    ):
        yield client


@pytest.fixture
async def api_client(settings: Settings, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """The API in this process, authenticated as `api_key` (tenant-a)."""
    async with in_process_api(settings, api_key) as client:
        yield client


class InlineWorker:
    """The real job runtime (`JobRuntime` + `JobRunner`), without a broker: `run(job_id)`
    hands one job over, as a worker's actor does, and waits for its outcome.

    Wired as `workers/composition.py` wires a worker (config, async providers, limiter,
    breaker, cache, single-flight, SQL clock), on an event loop of its own, so a test decides
    when each job runs. Webhook deliveries are collected in `deliveries` instead of being
    dispatched; finished jobs are announced on the job-done channel as a worker does.
    """

    def __init__(self, settings: Settings) -> None:
        config = load_config(settings.config_path())
        keys = Keys(settings.redis_prefix)
        self.engine = make_sync_engine(settings)
        self.sessions = make_sync_sessions(self.engine)
        clock = SqlClock(self.engine.dialect.name)
        self.providers = build_providers(config, max_connections=8)
        assert settings.redis_url is not None
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        self.state = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5)
        self.runner = build_runner(config, self.state, keys, self.providers, clock)
        self.runtime = JobRuntime(
            runner=self.runner,
            fleet_state=self.state,
            sessions=self.sessions,
            clock=clock,
            lease_s=settings.lease_s,
            apply_effects=self._after_commit,
        )
        self.done_channel = keys.job_done_channel
        # The webhook deliveries finished jobs produced, in order: a test delivers them itself.
        self.deliveries: list[str] = []
        self.loop = LoopThread("inline-worker")
        self.loop.run(self.runtime.start())

    def _after_commit(self, effects: Effects) -> None:
        self.deliveries += effects.deliveries
        if effects.finished:
            self.redis.publish(self.done_channel, job_done_message(effects.finished))

    def run(self, job_id: str) -> Outcome:
        return cast(Outcome, self.loop.run(self.runtime.submit(job_id, "interactive"), timeout_s=120))

    def run_queued(self, *, at_once: int = 1) -> dict[str, Outcome]:
        """Run every queued job, oldest first, `at_once` at a time (as a busy worker would);
        returns each one's outcome."""
        with self.sessions() as session:
            stmt = select(Job.id).where(Job.status == store.QUEUED).order_by(Job.id)
            job_ids = list(session.execute(stmt).scalars())
        if at_once == 1:
            return {job_id: self.run(job_id) for job_id in job_ids}
        outcomes: dict[str, Outcome] = {}
        for start in range(0, len(job_ids), at_once):
            group = job_ids[start : start + at_once]
            outcomes.update(zip(group, self.run_together(group), strict=True))
        return outcomes

    def run_together(self, job_ids: list[str]) -> list[Outcome]:
        """Run these jobs at once, as a busy worker would (each outcome in order)."""

        async def together() -> list[Outcome]:
            return list(await asyncio.gather(*(self.runtime.submit(i, "batch") for i in job_ids)))

        return cast(list[Outcome], self.loop.run(together(), timeout_s=120))

    def close(self) -> None:
        self.loop.run(self._aclose(), timeout_s=30)
        self.loop.stop()
        self.redis.close()
        self.engine.dispose()

    async def _aclose(self) -> None:
        await self.runtime.stop(grace_s=0)
        await close_providers(self.providers)
        await self.state.aclose()


@pytest.fixture
def inline_worker(settings: Settings) -> Iterator[InlineWorker]:
    worker = InlineWorker(settings)
    yield worker
    worker.close()


def process_env(settings: Settings) -> dict[str, str]:
    """The environment of a jobgate process sharing this test's database, Redis prefix and config."""
    return jobgate_env(
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        redis_prefix=settings.redis_prefix,
        config=str(settings.config),
    )


@pytest.fixture
def worker_process(settings: Settings) -> Iterator[Callable[..., ServiceProcess]]:
    """`worker_process(threads=4)` starts `python -m workers`; every one started is stopped by pid."""
    started: list[ServiceProcess] = []

    def start(*, threads: int = 4) -> ServiceProcess:
        worker = start_worker(process_env(settings), threads=threads)
        started.append(worker)
        return worker

    yield start
    stop_all(started)
