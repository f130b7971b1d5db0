"""The API's per-process key lookup cache (api/key_cache.py)."""

from __future__ import annotations

from api.key_cache import KeyCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_cached_principal_is_served_until_its_ttl_then_looked_up_again() -> None:
    clock = FakeClock()
    cache: KeyCache[str] = KeyCache(5.0, monotonic=clock)
    cache.put("hash-a", "tenant-a")

    clock.now += 4.9
    assert cache.get("hash-a") == "tenant-a"
    clock.now += 0.1
    assert cache.get("hash-a") is None


def test_the_cache_keeps_at_most_its_bound_dropping_the_oldest_first() -> None:
    cache: KeyCache[int] = KeyCache(60.0, max_entries=2, monotonic=FakeClock())
    for i in range(3):
        cache.put(f"hash-{i}", i)

    assert cache.get("hash-0") is None
    assert (cache.get("hash-1"), cache.get("hash-2")) == (1, 2)


def test_a_ttl_of_zero_turns_the_cache_off() -> None:
    cache: KeyCache[str] = KeyCache(0.0, monotonic=FakeClock())
    cache.put("hash-a", "tenant-a")

    assert cache.get("hash-a") is None
