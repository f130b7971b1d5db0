"""A Redis server of the test's own, which it may crash and restart (never the shared one).

`own_redis(tmp)` starts `redis-server --port <free> --save '' --appendonly no` (through
`jobgate.embedded_redis`, as `jobgate dev` does) and yields a `RedisServer`; `crash()` kills
that pid with SIGKILL (nothing is saved, so every key is gone), `start()` brings up an empty
server on the same port, and the block's end stops it by pid.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jobgate.children import Child, free_port, stop_children
from jobgate.embedded_redis import start_embedded_redis


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.child: Child | None = None

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.alive()

    def start(self) -> None:
        """An empty server on `self.port`, returned once it answers PING."""
        env = {name: value for name, value in os.environ.items() if not name.startswith("JOBGATE_")}
        self.child, _ = start_embedded_redis(self.workdir, env, port=self.port)

    def crash(self) -> None:
        """SIGKILL the server: connections reset, every key lost."""
        if self.child is not None and self.child.process is not None and self.child.alive():
            os.kill(self.child.pid, signal.SIGKILL)
            self.child.process.wait(timeout=10)
        self.child = None

    def restart(self) -> None:
        self.crash()
        self.start()

    def stop(self) -> None:
        if self.child is not None:
            stop_children([self.child], grace_s=5)
            self.child = None


@contextmanager
def own_redis(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
