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
    # Who may scrape the API's `/metrics`: anyone who reaches it ("none", CONTRACT.md's default:
    # bind it where only Prometheus reaches it) or callers with an operator key ("operator").
    metrics_auth: Literal["none", "operator"] = "none"
    # Traces (core/tracing.py): OpenTelemetry spans of every job, exported over OTLP/HTTP where
    # the standard `OTEL_EXPORTER_OTLP_*` variables say. Off, the hot path makes no span.
    otel_enabled: bool = False

    webhook_allow_private: bool = False
    webhook_retry_schedule_s: Annotated[list[float], NoDecode] = [0, 5, 300, 1800, 7200, 18000, 36000, 36000]
    webhook_disable_after_s: float = 432000
    webhook_timeout_s: float = 10
    # Abuse limits (core/webhooks/fairness.py): per worker process, the delivery attempts one
    # tenant has in flight on the webhook threads (`--webhook-threads`, 16) and the DNS
    # lookups its webhooks keep alive (of 32); a tenant at its cap waits its turn, pending.
    webhook_max_in_flight_per_tenant: int = Field(default=4, ge=1)
    webhook_dns_lookups_per_tenant: int = Field(default=8, ge=1)
    # Hand-made delivery retries per tenant, fleet-wide; more answer 429 with Retry-After.
    webhook_manual_retries_per_minute: int = Field(default=10, ge=1)

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

    # Abuse limits (README, "Abuse limits"). A request body must keep coming: no chunk for
    # `body_read_timeout_s`, or less than `body_min_rate_bytes_s` on average past that first
    # allowance, ends the request with 408 (api/body_timeout.py).
    body_read_timeout_s: float = Field(default=30, gt=0)
    body_min_rate_bytes_s: int = Field(default=500, gt=0)
    # Batch and file uploads one tenant has in progress at once in an API process; more: 429.
    max_uploads_per_tenant: int = Field(default=4, ge=1)
    # Long polls (`?wait=`) and sync calls waiting at once in an API process, per tenant and in
    # all: past either cap a long poll answers at once (as wait=0 would), a sync call 429.
    max_waits_per_tenant: int = Field(default=500, ge=1)
    max_waits_per_process: int = Field(default=1000, ge=1)
    # Unknown keys tried from one client address (an IPv6 /64) in a window, fleet-wide; past
    # that, 429 until the window ends, without the key even being looked up.
    auth_failures_per_address: int = Field(default=20, ge=1)
    auth_failure_window_s: int = Field(default=60, ge=1)

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

    # Retention (core/services/retention.py): finished jobs with their attempts and webhook
    # deliveries, finished batches and uploaded files are deleted this many days after they
    # finished (or were uploaded); a tenant's `retention_days` may shorten it, not lengthen it.
    retention_days: int = Field(default=30, ge=1)
    # How often the fleet's one purge starts (it runs in turns on a worker's sweeper thread).
    retention_interval_s: float = Field(default=3600, gt=0)
    # An Idempotency-Key names its job or batch this long (CONTRACT.md: at least 24 h); an
    # older key makes a new one, and the purge frees it.
    idempotency_ttl_s: float = Field(default=86400, gt=0)

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
