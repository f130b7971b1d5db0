"""The API's composition root: `create_app(settings)` builds everything once, in the lifespan.

SQL engine (async driver), Redis clients (one for commands with bounded timeouts, one for
the long-lived pub/sub of the notifier), the broker, the config, and the job runtime the sync
path makes its calls on (api/inline_calls.py). Nothing is module-global.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI

from api import metrics
from api.body_limit import BodyLimitMiddleware
from api.body_timeout import BodyTimeoutMiddleware
from api.concurrency import ConcurrencyCap
from api.deps import AppState
from api.documentation import ERROR_RESPONSES
from api.errors import install_error_handlers
from api.inline_calls import InlineCalls
from api.key_cache import KeyCache
from api.key_gate import KeyGateMiddleware
from api.notifier import JobNotifier
from api.request_id import RequestIdMiddleware
from api.request_span import RequestSpanMiddleware
from api.routes import (
    admin,
    anthropic,
    anthropic_batches,
    batches,
    chat,
    health,
    jobs,
    models,
    openai_batches,
    openai_files,
    providers,
    ui,
    usage,
    webhooks,
)
from core import queue, tracing
from core.config import load_config
from core.logging import configure_logging
from core.redis.auth_failures import AuthFailureLimit
from core.redis.keys import Keys
from core.settings import Settings
from core.store.clock import SqlClock
from core.store.db import make_async_engine, make_async_sessions

# An upload takes a while: a client refused one may try again in a few seconds.
UPLOAD_RETRY_AFTER_S = 5


def _redis_clients(settings: Settings) -> tuple[aioredis.Redis, aioredis.Redis]:
    if not settings.redis_url:
        raise RuntimeError("JOBGATE_REDIS_URL is not set (jobgate dev sets it for you)")
    timeout = settings.redis_timeout_s
    commands = aioredis.Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout, max_connections=200
    )
    # Pub/sub idles for long stretches: no read timeout, but a health check keeps it honest.
    pubsub = aioredis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=timeout, health_check_interval=15
    )
    return commands, pubsub


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    tracing.configure(settings, "jobgate-api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_format, settings.log_level)
        config = load_config(settings.config_path())
        engine = make_async_engine(settings)
        keys = Keys(settings.redis_prefix)
        commands, pubsub = _redis_clients(settings)
        assert settings.redis_url is not None
        broker = queue.build_broker(
            settings.redis_url, keys, max_connections=64, timeout_s=settings.redis_timeout_s
        )
        notifier = JobNotifier(pubsub, keys.job_done_channel)
        await notifier.start()
        inline = InlineCalls.build(settings, config, keys, broker)
        if inline is not None:
            await inline.start()
        app.state.jobgate = AppState(
            settings=settings,
            config=config,
            sessions=make_async_sessions(engine),
            clock=SqlClock(engine.dialect.name),
            keys=keys,
            redis=commands,
            broker=broker,
            notifier=notifier,
            principals=KeyCache(settings.key_cache_ttl_s),
            uploads=ConcurrencyCap(
                "uploads",
                per_tenant=settings.max_uploads_per_tenant,
                tenant_setting="JOBGATE_MAX_UPLOADS_PER_TENANT",
                retry_after_s=UPLOAD_RETRY_AFTER_S,
            ),
            waits=ConcurrencyCap(
                "long polls and sync calls",
                per_tenant=settings.max_waits_per_tenant,
                tenant_setting="JOBGATE_MAX_WAITS_PER_TENANT",
                per_process=settings.max_waits_per_process,
                process_setting="JOBGATE_MAX_WAITS_PER_PROCESS",
            ),
            auth_failures=AuthFailureLimit(
                commands,
                keys,
                per_window=settings.auth_failures_per_address,
                window_s=settings.auth_failure_window_s,
            ),
            inline=inline,
        )
        try:
            yield
        finally:
            if inline is not None:
                await inline.stop()
            await notifier.stop()
            await commands.aclose()
            await pubsub.aclose()
            broker.close()
            await engine.dispose()

    app = FastAPI(
        title="jobgate",
        version="0.1.0",
        description="Queue-based asynchronous gateway for LLM completions.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.add_middleware(
        BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, max_batch_bytes=settings.max_batch_bytes
    )
    app.add_middleware(
        BodyTimeoutMiddleware,
        read_timeout_s=settings.body_read_timeout_s,
        min_rate_bytes_s=settings.body_min_rate_bytes_s,
    )
    app.add_middleware(KeyGateMiddleware)  # a missing key is a 401 before any body check
    # Outermost, so 413s and errors carry the id too.
    app.add_middleware(RequestIdMiddleware)
    if tracing.enabled():  # off, requests pass through no tracing code at all
        app.add_middleware(RequestSpanMiddleware)
    install_error_handlers(app)
    routers = (health, metrics, jobs, batches, chat, models, providers, usage, webhooks, admin, ui)
    for module in (*routers, anthropic, anthropic_batches, openai_files, openai_batches):
        app.include_router(module.router)
    # OpenAI's surface under its own prefix too (CONTRACT.md): an SDK with base_url .../openai/v1.
    app.include_router(chat.router, prefix="/openai")
    app.include_router(models.router, prefix="/openai")
    return app
