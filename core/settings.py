"""The one typed settings object, read from `JOBGATE_*` environment variables.

Every process builds it once in its composition root and passes it down; no other module
reads `os.environ` for jobgate settings. Names and defaults follow CONTRACT.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_log_format() -> Literal["json", "console"]:
    return "console" if sys.stderr.isatty() else "json"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JOBGATE_", extra="ignore")

    database_url: str = "sqlite:///./var/jobgate.db"
    redis_url: str | None = None
    # Prefix of every Redis key jobgate and its broker write: lets several deployments
    # (or tests) share one Redis without seeing each other.
    redis_prefix: str = "jobgate"
    config: Path | None = None
    log_format: Literal["json", "console"] = Field(default_factory=_default_log_format)
    log_level: str = "INFO"
    # Prometheus multiprocess files of this machine's processes (see core/metrics_dir.py).
    metrics_dir: Path | None = None

    webhook_allow_private: bool = False
    webhook_retry_schedule_s: Annotated[list[float], NoDecode] = [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    webhook_disable_after_s: float = 432000
    webhook_timeout_s: float = 10

    lease_s: float = 60
    sweep_interval_s: float = 30
    # A queued job whose dispatch is older than this is dispatched again by the sweeper.
    redispatch_after_s: float = 30
    max_attempts: int = 3
    sync_timeout_s: float = 300
    # Calls an API process makes itself for `POST /v1/chat/completions` (api/inline_calls.py);
    # more at once take the queue to the workers. 0: only workers call providers.
    sync_max_in_flight: int = 256
    # How long an API process trusts a key it has checked: a revoked key is refused
    # everywhere within this time; 0 checks SQL on every request.
    key_cache_ttl_s: float = 5

    max_body_bytes: int = 1_000_000
    max_batch_bytes: int = 200_000_000
    max_batch_requests: int = 50_000

    # Pools: sized explicitly, never the libraries' defaults (DESIGN.md, measured facts).
    db_pool_size: int = 10
    db_max_overflow: int = 20
    db_pool_timeout_s: float = 10
    redis_max_connections: int = 300
    redis_timeout_s: float = 5

    # Test-only fault injection: the API process exits right after committing a submission,
    # before enqueueing it (proves the sweeper dispatches what the broker never saw).
    fault_exit_after_commit: bool = False

    # Dramatiq consumer threads per job queue: they only hand job ids to the process's event
    # loop, which keeps up to `worker_max_in_flight` jobs in flight (core/services/runtime.py).
    worker_threads: int = 8
    worker_max_in_flight: int = 1000
    # Longest back-off of an idle delay-queue consumer; job and webhook queues do not poll:
    # the enqueue wakes them (core/queue/wakeup.py).
    worker_idle_poll_ms: int = 1000

    @field_validator("webhook_retry_schedule_s", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            return [float(part) for part in value.split(",") if part.strip()]
        return value

    def config_path(self) -> Path | None:
        """The providers/routes YAML: the setting, else ./jobgate.yaml if present, else None (built-in)."""
        if self.config is not None:
            return self.config
        local = Path("jobgate.yaml")
        return local if local.exists() else None
