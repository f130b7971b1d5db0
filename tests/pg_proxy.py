"""A TCP proxy a test can stop, start or freeze, to take a dependency away without touching it.

The shared Postgres (and Redis) must never be stopped by a test. A process under test is
pointed at `TcpProxy(5432).port` instead:
- `stop()` closes the listening socket and aborts every open connection, as a crashed
  server looks (new connections are refused, pooled ones are reset); `start()` listens
  again on the same port.
- `freeze()` keeps every connection open and accepts new ones, but passes no byte either
  way, as a network partition looks (nothing is refused, nothing answers); `thaw()` ends it.
The proxy runs its own asyncio loop in a daemon thread of the test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from jobgate.children import free_port

CHUNK_BYTES = 65_536
CONTROL_TIMEOUT_S = 10.0


class TcpProxy:
    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1", port: int | None = None) -> None:
        self.target_host, self.target_port = target_host, target_port
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()  # not yet bound to a loop: safe from this thread
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()

    def _control(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CONTROL_TIMEOUT_S)

    def start(self) -> None:
        """Listen on `self.port` (the same port every time) and forward to the target."""
        self._control(self._start())

    def stop(self) -> None:
        """Refuse new connections and reset the open ones."""
        self._control(self._stop())

    def freeze(self) -> None:
        """Keep every connection open but pass nothing, either way."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def thaw(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)

    def close(self) -> None:
        self.thaw()
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=CONTROL_TIMEOUT_S)
        self._loop.close()

    async def _start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.add(client_writer)
        try:
            await self._flowing.wait()
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            client_writer.transport.abort()
            self._writers.discard(client_writer)
            return
        self._writers.add(upstream_writer)
        try:
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer)
            )
        finally:
            for writer in (client_writer, upstream_writer):
                writer.transport.abort()
                self._writers.discard(writer)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(CHUNK_BYTES):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        # One side ended: end the other, so neither end waits on a half-open connection.
        writer.transport.abort()


@contextmanager
def tcp_proxy(target_port: int, *, target_host: str = "127.0.0.1") -> Iterator[TcpProxy]:
    """A started proxy to `target_host:target_port`, closed afterwards."""
    proxy = TcpProxy(target_port, target_host=target_host)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
