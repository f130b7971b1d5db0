"""`Relay`: chunks handed on as they come, and none before the job's row is recorded."""

from __future__ import annotations

import asyncio

from core.domain.relay import Relay


async def read_all(relay: Relay) -> list[dict[str, int]]:
    return [chunk async for chunk in relay.chunks()]


async def test_chunks_come_out_in_order_until_finish() -> None:
    relay = Relay()
    for i in range(3):
        await relay.send({"i": i})
    relay.finish()

    assert await read_all(relay) == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert relay.started


async def test_nothing_comes_out_before_the_row_is_recorded() -> None:
    relay = Relay()
    recorded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    relay.hold_until(recorded)
    await relay.send({"i": 0})
    relay.finish()
    reader = asyncio.ensure_future(read_all(relay))

    for _ in range(5):  # let the reader run as far as it can
        await asyncio.sleep(0)
    assert not reader.done()
    recorded.set_result(None)

    assert await asyncio.wait_for(reader, timeout=5) == [{"i": 0}]


async def test_a_failed_record_ends_the_chunks_without_handing_any_out() -> None:
    relay = Relay()
    recorded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    recorded.set_exception(OSError("database gone"))
    relay.hold_until(recorded)
    await relay.send({"i": 0})
    relay.finish()

    assert await asyncio.wait_for(read_all(relay), timeout=5) == []
