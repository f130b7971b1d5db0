"""`jobgate dev`: the whole system on one machine, on embedded defaults.

SQLite under ./var/, a Redis server of our own (unless JOBGATE_REDIS_URL is set), the
simulated upstream (unless a config file is given), the API and one worker process. Prints
the dev API key, the URLs and a curl example; Ctrl-C stops every child within 10 s.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from core.auth import create_key, key_is_valid
from core.config import dev_config_dict
from core.settings import Settings
from core.store.db import make_sync_engine, make_sync_sessions
from core.store.migrate import upgrade
from jobgate.children import Child, free_port, port_is_free, python_module, stop_children
from jobgate.embedded_redis import RedisServerMissing, redis_server_binary, start_embedded_redis

VAR = Path("var")
DEV_TENANT = "dev"
SIM_PORT = 8001


def _dev_key(settings: Settings) -> str:
    """Reuse the key saved under var/ while it is valid, else create one (kept 0600)."""
    path = VAR / "dev-api-key"
    engine = make_sync_engine(settings)
    try:
        with make_sync_sessions(engine)() as session:
            if path.exists():
                saved = path.read_text().strip()
                if saved and key_is_valid(session, saved):
                    return saved
            key = create_key(session, DEV_TENANT).key
    finally:
        engine.dispose()
    # Created 0600, never readable by others even for a moment (write_text then chmod would be).
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(key + "\n")
    return key


def _wait_ready(url: str, timeout_s: float, children: list[Child]) -> None:
    """Poll `url` until it answers 200; a child exiting, or no 200 within `timeout_s`, is an error."""
    deadline = time.monotonic() + timeout_s
    last_answer = "no answer"
    while time.monotonic() < deadline:
        try:
            # B310 warns of file:// and custom schemes; `url` is the http:// address of our own API.
            with urllib.request.urlopen(url, timeout=1) as response:  # nosec B310
                if response.status == 200:
                    return
                last_answer = f"HTTP {response.status}"
        except OSError as exc:
            # Refused, reset or timed out (an HTTP error status is an OSError too): the API is
            # still starting. Keep polling; the last reason goes into the error if time runs out.
            last_answer = f"{type(exc).__name__}: {exc}"
        dead = [c.name for c in children if not c.alive()]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited during start-up (see the output above)")
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready within {timeout_s:.0f} s (last: {last_answer})")


def run_dev(port: int = 8000, host: str = "127.0.0.1", worker_threads: int = 8) -> int:
    env = dict(os.environ)
    env.setdefault("JOBGATE_LOG_FORMAT", "console")
    redis_binary: str | None = None
    if not env.get("JOBGATE_REDIS_URL"):
        # Found before anything starts, so a machine with no Redis to run hears what to
        # install in one line instead of a traceback from half-way through start-up.
        try:
            redis_binary = redis_server_binary()
        except RedisServerMissing as exc:
            print(f"jobgate dev: {exc}", file=sys.stderr, flush=True)
            return 2
    VAR.mkdir(exist_ok=True)
    children: list[Child] = []
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if redis_binary is not None:
            redis_child, redis_url = start_embedded_redis(VAR / "redis", env, binary=redis_binary)
            children.append(redis_child)
            env["JOBGATE_REDIS_URL"] = redis_url
        settings = Settings()
        if settings.config_path() is None:
            sim_port = SIM_PORT if port_is_free(SIM_PORT) else free_port()
            sim = Child("sim", python_module("sim", "--host", "127.0.0.1", "--port", str(sim_port)), env)
            sim.start(capture=True)
            children.append(sim)
            sim.wait_for_line("sim listening", timeout_s=20)
            config_path = VAR / "dev-config.yaml"
            config_path.write_text(
                yaml.safe_dump(dev_config_dict(f"http://127.0.0.1:{sim_port}"), sort_keys=False)
            )
            env["JOBGATE_CONFIG"] = str(config_path.resolve())
        upgrade(settings.database_url)
        key = _dev_key(settings)
        api = Child("api", python_module("jobgate", "api", "--host", host, "--port", str(port)), env)
        worker = Child("worker", python_module("workers", "--threads", str(worker_threads)), env)
        for child in (api, worker):
            child.start()
            children.append(child)
        base = f"http://{host}:{port}"
        _wait_ready(f"{base}/readyz", 60, children)
        _print_banner(base, key)
        while not stop.wait(0.5):
            dead = [c for c in children if not c.alive()]
            if dead:
                code = dead[0].process.returncode if dead[0].process else None
                print(f"jobgate dev: {dead[0].name} exited (code {code}); stopping.", flush=True)
                return 1
        return 0
    finally:
        print("jobgate dev: stopping…", flush=True)
        # API and worker first (the worker hands prefetched messages back to Redis), then the rest.
        first = [c for c in children if c.name in ("api", "worker")]
        stop_children(first, grace_s=7.0)
        stop_children([c for c in children if c not in first], grace_s=2.0)


def _print_banner(base: str, key: str) -> None:
    curl = (
        f"curl -s {base}/v1/jobs -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
        '-d \'{"model": "fast", "messages": [{"role": "user", "content": "Hello"}]}\' '
        f"| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"id\"])' "
        f"| xargs -I{{}} curl -s '{base}/v1/jobs/{{}}?wait=30' -H 'Authorization: Bearer {key}'"
    )
    print("", flush=True)
    print("jobgate is running on embedded defaults.", flush=True)
    print(f"API key: {key}", flush=True)
    print(f"API: {base}", flush=True)
    print(f"Docs: {base}/docs", flush=True)
    print("Try it (submits a job and waits for its result):", flush=True)
    print(curl, flush=True)
    print("Press Ctrl-C to stop.", flush=True)
