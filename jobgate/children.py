"""Starting and stopping child processes by pid, for `jobgate dev` and `jobgate worker`.

Every child is started by us and stopped by its pid (never by name): SIGTERM, then SIGKILL
after a grace period. `wait_for_line` reads a child's stdout until it says it is ready.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    output: list[str] = field(default_factory=list)

    def start(self, *, capture: bool = False) -> None:
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=subprocess.PIPE if capture else None,
            stderr=None,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_for_line(self, needle: str, timeout_s: float) -> str:
        """Read stdout lines until one contains `needle`; echo them to our stdout."""
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if not selector.select(timeout=0.2):
                    if not self.alive():
                        break
                    continue
                line = self.process.stdout.readline().decode(errors="replace")
                if not line:
                    break
                self.output.append(line)
                if needle in line:
                    return line
        finally:
            selector.close()
        raise RuntimeError(
            f"{self.name} did not become ready (waited for {needle!r}): {''.join(self.output)[-2000:]}"
        )


def stop_children(children: Sequence[Child], grace_s: float = 8.0) -> None:
    """SIGTERM every live child, wait up to `grace_s` for all, then SIGKILL the rest."""
    for child in children:
        if child.alive():
            _signal(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(child.pid, signal.SIGKILL)
            child.process.wait(timeout=5)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
