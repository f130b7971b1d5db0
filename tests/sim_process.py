"""Runs the simulated upstream (`python -m sim`) as a real child process for tests.

`run_sim(**flags)` starts it on a free port, waits for its ready line, yields a `SimHandle`, and
stops it by its pid (SIGTERM, then SIGKILL after a grace period). Flags are the CLI's, spelled
as keyword arguments: `run_sim(rpm=600, latency_ms=5, fail_status="timeout")`. The handle
reads and steers the running sim over HTTP with the standard library only, so any test suite
can use it whatever client libraries it has.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
READY_PREFIX = "sim listening on "


@dataclass
class SimHandle:
    process: subprocess.Popen[str]
    url: str
    port: int

    @property
    def openai_base_url(self) -> str:
        """The `base_url` for `openai.OpenAI` (ends in /v1)."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The `base_url` for `anthropic.Anthropic` (no /v1)."""
        return self.url

    @property
    def azure_endpoint(self) -> str:
        """The `azure_endpoint` for `openai.AzureOpenAI` (the SDK adds /openai/deployments/...)."""
        return self.url

    @property
    def gemini_base_url(self) -> str:
        """The `base_url` of Gemini's OpenAI-compatible endpoint."""
        return f"{self.url}/v1beta/openai/"

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, method=method, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        """`GET /sim/stats`."""
        return self._call("GET", "/sim/stats")

    def config(self) -> dict[str, Any]:
        """`GET /sim/config`."""
        return self._call("GET", "/sim/config")

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Merge knobs into the running sim (`models={"m": {...}}` for per-model ones); returns the config."""
        return self._call("POST", "/sim/config", knobs)

    def reset(self, *, config: bool = False) -> None:
        """Zero stats and rate-limit buckets; with `config=True` also restore the start-up knobs."""
        self._call("POST", f"/sim/reset?config={'true' if config else 'false'}", {})

    def calls(self, model: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """Recent calls (`{"t", "status"}`, plus `"model"` when no model is given), by arrival time."""
        query = urllib.parse.urlencode(
            {name: value for name, value in (("model", model), ("since", since)) if value is not None}
        )
        return self._call("GET", f"/sim/calls?{query}")

    def identity(self) -> dict[str, Any]:
        """What the sim's Entra ID managed identity endpoint issued (`GET /sim/identity`)."""
        return self._call("GET", "/sim/identity")

    def requests(self, model: str | None = None) -> list[dict[str, Any]]:
        """The last model requests as sent (`GET /sim/requests`): path, query string, which
        credential headers came, the key, the model and the status, oldest first."""
        query = urllib.parse.urlencode({"model": model} if model is not None else {})
        return self._call("GET", f"/sim/requests?{query}")

    def wait_for_stats(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 5.0
    ) -> dict[str, Any]:
        """Poll `/sim/stats` until `predicate(stats)` holds; raises TimeoutError with the last stats."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"sim stats never satisfied the condition; last: {stats}")
            time.sleep(0.01)


def _flag_arguments(flags: dict[str, Any]) -> list[str]:
    arguments: list[str] = []
    for name, value in flags.items():
        if value is not None:
            arguments += [f"--{name.replace('_', '-')}", str(value)]
    return arguments


@contextmanager
def run_sim(
    *, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 15.0, **flags: Any
) -> Iterator[SimHandle]:
    """Start `python -m sim` with these flags, yield its handle once it listens, then stop it."""
    command = [sys.executable, "-m", "sim", "--host", host, "--port", str(port), *_flag_arguments(flags)]
    with tempfile.TemporaryFile(mode="w+") as stderr:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1
        )
        ready = threading.Event()
        url: list[str] = []

        def read_stdout() -> None:
            # Keep draining stdout for the process's whole life so it can never block on a full pipe.
            assert process.stdout is not None
            for line in process.stdout:
                if not ready.is_set() and line.startswith(READY_PREFIX):
                    url.append(line[len(READY_PREFIX) :].strip())
                    ready.set()

        reader = threading.Thread(target=read_stdout, name="sim-stdout", daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + startup_timeout_s
            while not ready.wait(0.05):
                if process.poll() is not None or time.monotonic() > deadline:
                    stderr.seek(0)
                    exit_code = process.poll()
                    raise RuntimeError(f"sim did not start (exit {exit_code}): {command}\n{stderr.read()}")
            yield SimHandle(process=process, url=url[0], port=int(url[0].rsplit(":", 1)[1]))
        finally:
            _stop(process)
            reader.join(timeout=5)


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
