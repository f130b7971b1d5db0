"""The response cache on a real Redis: complete answers only, per scope, for the configured TTL."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest
import redis.asyncio as aioredis

from core.domain.chat import ChatRequest, Completion, RateLimitHeaders
from core.fingerprint import SHARED_SCOPE, request_fingerprint
from core.redis.cache import ResponseCache
from core.redis.keys import Keys

REQUEST = ChatRequest(messages=[{"role": "user", "content": "Say hi"}], params={"temperature": 0})


def completion(finish_reason: str | None = "stop", text: str = "Hi!") -> Completion:
    return Completion(
        body={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        },
        input_tokens=9,
        output_tokens=3,
        finish_reason=finish_reason,  # type: ignore[arg-type]  # None is what a cut-off stream gives
        provider="openai",
        model="gpt-4o-mini",
    )


@pytest.fixture
def cache(async_redis_client: aioredis.Redis, keys: Keys) -> ResponseCache:
    return ResponseCache(async_redis_client, keys)


async def test_stored_completion_comes_back_equal(cache: ResponseCache) -> None:
    await cache.put("fp-1", completion(), ttl_s=60)
    assert await cache.get("fp-1") == completion()


async def test_unknown_fingerprint_is_a_miss(cache: ResponseCache) -> None:
    assert await cache.get("never-stored") is None


@pytest.mark.parametrize("finish_reason", [None, "", "unknown"])
async def test_truncated_completion_is_never_cached(
    cache: ResponseCache, async_redis_client: aioredis.Redis, keys: Keys, finish_reason: str | None
) -> None:
    with pytest.raises(ValueError, match="finish_reason"):
        await cache.put("fp-cut", completion(finish_reason=finish_reason), ttl_s=60)
    assert await async_redis_client.exists(keys.cache("fp-cut")) == 0


async def test_answer_cut_at_max_tokens_is_complete_and_cached(cache: ResponseCache) -> None:
    # "length" is the whole answer to a request whose max_tokens is part of its fingerprint.
    await cache.put("fp-length", completion(finish_reason="length"), ttl_s=60)
    assert await cache.get("fp-length") == completion(finish_reason="length")


async def test_per_call_rate_limit_headers_are_not_cached(cache: ResponseCache) -> None:
    with_headers = dataclasses.replace(completion(), rate_limits=RateLimitHeaders(remaining_requests=3))
    await cache.put("fp-rl", with_headers, ttl_s=60)
    hit = await cache.get("fp-rl")
    assert hit is not None
    assert hit.rate_limits is None
    assert hit.body == with_headers.body


async def test_cache_entries_expire_after_ttl(
    cache: ResponseCache, async_redis_client: aioredis.Redis, keys: Keys
) -> None:
    await cache.put("fp-ttl", completion(), ttl_s=1)
    assert 0 < await async_redis_client.pttl(keys.cache("fp-ttl")) <= 1000
    deadline = time.monotonic() + 3
    while await cache.get("fp-ttl") is not None:
        assert time.monotonic() < deadline, "cache entry outlived its TTL"
        await asyncio.sleep(0.05)


async def test_ttl_below_one_second_is_refused(cache: ResponseCache) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        await cache.put("fp-0", completion(), ttl_s=0)


async def test_tenant_scopes_do_not_share_entries(cache: ResponseCache) -> None:
    acme = request_fingerprint("fast", REQUEST, scope="acme")
    globex = request_fingerprint("fast", REQUEST, scope="globex")
    await cache.put(acme, completion(text="for acme"), ttl_s=60)
    assert await cache.get(globex) is None
    assert await cache.get(acme) == completion(text="for acme")


async def test_tenants_in_the_shared_scope_share_entries(cache: ResponseCache) -> None:
    shared = request_fingerprint("fast", REQUEST, scope=SHARED_SCOPE)
    await cache.put(shared, completion(text="for everyone"), ttl_s=60)
    assert await cache.get(request_fingerprint("fast", REQUEST, scope=SHARED_SCOPE)) == completion(
        text="for everyone"
    )


async def test_entry_in_another_format_version_is_a_miss(
    cache: ResponseCache, async_redis_client: aioredis.Redis, keys: Keys
) -> None:
    await async_redis_client.set(keys.cache("fp-v2"), json.dumps({"v": 2, "answer": "new shape"}))
    assert await cache.get("fp-v2") is None


async def test_unreadable_entry_is_a_miss_and_is_removed(
    cache: ResponseCache, async_redis_client: aioredis.Redis, keys: Keys
) -> None:
    await async_redis_client.set(keys.cache("fp-garbled"), b"\x00not json")
    assert await cache.get("fp-garbled") is None
    assert await async_redis_client.exists(keys.cache("fp-garbled")) == 0
