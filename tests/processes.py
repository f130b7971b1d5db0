"""Real jobgate processes for integration and end-to-end tests, started and stopped by pid.

`ServiceProcess.start(name, argv, env)` starts a child in its own session, drains its stdout
(kept in memory, so a test can wait for a line) and sends its stderr to a log file (shown
when a test fails to start it). `stop()` sends SIGTERM to that pid, then SIGKILL after a
grace period. `jobgate_env(...)` builds the environment of a jobgate process from a clean
copy of ours: no stray `JOBGATE_*` variable of the developer's shell leaks into a test.

Stopping is quick: while `stop_all` (or `stop`) waits for processes that talk to Redis, it
keeps a wake-up token on each job and webhook queue of their key prefix, so an idle consumer
blocked on its wake-up list (`core/queue/wakeup.py`, up to 1 s per queue, one queue after
another) sees the stop at once; and `jobgate_env` sets the idle poll of a worker's Dramatiq
threads to 100 ms (`JOBGATE_WORKER_IDLE_POLL_MS`, which otherwise matters only there: the
delay queues poll at most every 200 ms whatever it says). A worker's graceful stop then takes
tenths of a second instead of about 3 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def jobgate_env(**settings: str | None) -> dict[str, str]:
    """Our environment without any JOBGATE_* variable, plus `JOBGATE_<NAME>` for each given setting."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("JOBGATE_")}
    env["JOBGATE_LOG_FORMAT"] = "json"
    # A worker's Dramatiq threads wait this long for work before they look at a stop (see above).
    env["JOBGATE_WORKER_IDLE_POLL_MS"] = "100"
    for name, value in settings.items():
        if value is not None:
            env[f"JOBGATE_{name.upper()}"] = value
    return env


def wait_until(
    condition: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.02, what: str
) -> None:
    """Poll `condition` until it holds; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[str]
    stderr_path: Path
    lines: list[str] = field(default_factory=list)
    stdout_closed: bool = False
    env: dict[str, str] = field(default_factory=dict, repr=False)
    _line_added: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def start(
        cls, name: str, argv: list[str], env: dict[str, str], *, cwd: Path | None = None
    ) -> ServiceProcess:
        stderr_path = Path(tempfile.mkstemp(prefix=f"jobgate-test-{name}-", suffix=".log")[1])
        with stderr_path.open("w") as stderr:
            process = subprocess.Popen(
                argv,
                cwd=cwd or PROJECT_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                bufsize=1,
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest only
            )
        service = cls(name=name, process=process, stderr_path=stderr_path, env=dict(env))
        threading.Thread(target=service._drain, name=f"{name}-stdout", daemon=True).start()
        return service

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._line_added:
                self.lines.append(line.rstrip("\n"))
                self._line_added.notify_all()
        with self._line_added:
            self.stdout_closed = True
            self._line_added.notify_all()

    def wait_for_line(self, needle: str, *, timeout_s: float) -> str:
        """The first stdout line containing `needle`, waiting for it up to `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._line_added:
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.stdout_closed:
                    break
                self._line_added.wait(timeout=remaining)
        raise RuntimeError(f"{self.name} never printed {needle!r}; {self.diagnostics()}")

    def log_records(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """This process's JSON log lines (stderr) for `event` whose `fields` match."""
        records = []
        for line in self.stderr_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                    records.append(record)
        return records

    def wait_for_log(self, event: str, *, timeout_s: float, **fields: Any) -> dict[str, Any]:
        """The first JSON log line for `event` (with `fields`), waiting for it up to `timeout_s`."""
        wait_until(
            lambda: bool(self.log_records(event, **fields)),
            timeout_s=timeout_s,
            interval_s=0.05,
            what=f"{self.name} to log {event!r}",
        )
        return self.log_records(event, **fields)[0]

    def wait_for_http(self, url: str, *, timeout_s: float) -> None:
        """Poll `url` until it answers 200; fail early if the process dies."""

        def answers() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited while starting; {self.diagnostics()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_until(answers, timeout_s=timeout_s, interval_s=0.05, what=f"{self.name} to answer {url}")

    def diagnostics(self) -> str:
        stderr = self.stderr_path.read_text(errors="replace")[-3000:] if self.stderr_path.exists() else ""
        return f"exit code {self.process.poll()}; stdout tail: {self.lines[-20:]}; stderr tail:\n{stderr}"

    def terminate(self) -> None:
        """SIGTERM this pid (if it still runs); `stop` then waits for it."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)

    def stop(self, *, grace_s: float = 10.0) -> int:
        """SIGTERM this pid, SIGKILL it after `grace_s`; returns the exit code."""
        with waking_consumers([self]):
            return self._stop(grace_s)

    def _stop(self, grace_s: float) -> int:
        self.terminate()
        try:
            code = self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=5)
        self.stderr_path.unlink(missing_ok=True)
        return code


def stop_all(processes: list[ServiceProcess], *, grace_s: float = 10.0) -> None:
    """Stop several processes at once: SIGTERM to each pid first, then wait for each."""
    with waking_consumers(processes):
        for process in processes:
            process.terminate()
        for process in processes:
            process._stop(grace_s)


WAKE_EVERY_S = 0.05


@contextmanager
def waking_consumers(processes: list[ServiceProcess]) -> Iterator[None]:
    """`waking_queues` for the Redis prefixes of these live processes (while they stop)."""
    from core.redis.keys import Keys  # here: the webhook receiver, which imports this module, starts light

    namespaces: dict[str, set[str]] = {}
    for process in processes:
        url = process.env.get("JOBGATE_REDIS_URL")
        if url and process.alive():
            prefix = process.env.get("JOBGATE_REDIS_PREFIX", "jobgate")
            namespaces.setdefault(url, set()).add(Keys(prefix).broker_namespace)
    with waking_queues(namespaces):
        yield


@contextmanager
def waking_queues(namespaces: dict[str, set[str]]) -> Iterator[None]:
    """While the block runs (consumers stopping), push a wake-up token onto each job and
    webhook queue of these broker namespaces (Redis URL -> namespaces), every WAKE_EVERY_S.

    A token only makes an idle consumer look at its queue once more, as any enqueue does;
    the queues' messages are untouched and the prefix's keys are deleted after the test.
    """
    if not namespaces:
        yield
        return
    import redis

    from core.queue import DELIVER_WEBHOOK, RUN_BATCH, RUN_INTERACTIVE
    from core.queue.wakeup import push_wake_tokens

    # The queues whose idle consumers block on a wake-up list (delay queues poll instead).
    woken_queues = (RUN_INTERACTIVE.queue_name, RUN_BATCH.queue_name, DELIVER_WEBHOOK.queue_name)
    done = threading.Event()

    def push() -> None:
        clients = [
            (redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1), names)
            for url, names in namespaces.items()
        ]
        try:
            while not done.is_set():
                for client, names in clients:
                    try:
                        pipe = client.pipeline(transaction=False)
                        for namespace in names:
                            for queue_name in woken_queues:
                                push_wake_tokens(pipe, namespace, queue_name, 1)
                        pipe.execute()
                    except redis.RedisError:
                        pass  # that Redis is down (a test crashed it): nobody waits on it then
                done.wait(WAKE_EVERY_S)
        finally:
            for client, _ in clients:
                client.close()

    pusher = threading.Thread(target=push, name="wake-stopping-consumers", daemon=True)
    pusher.start()
    try:
        yield
    finally:
        done.set()
        pusher.join(timeout=5)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def start_worker(env: dict[str, str], *, threads: int, timeout_s: float = 30.0) -> ServiceProcess:
    """`python -m workers --threads N`, returned once it prints "worker ready"."""
    worker = ServiceProcess.start(
        "worker", python_module("workers", "--threads", str(threads), "--grace-s", "5"), env
    )
    try:
        worker.wait_for_line("worker ready", timeout_s=timeout_s)
    except BaseException:
        worker.stop()
        raise
    return worker


def http_json(method: str, url: str, *, key: str | None = None, payload: object = None) -> object:
    """A JSON request with the standard library (for checks against real processes)."""
    data = None if payload is None else json.dumps(payload).encode()
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())
