"""`jobgate worker`: N worker processes, supervised.

Dramatiq's own master stops every process when one dies and never respawns (DESIGN.md,
measured facts); here a dead worker process is replaced (with a back-off if it keeps dying),
and SIGTERM is passed on so each process finishes its running jobs within its grace period.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from jobgate.children import Child, python_module, stop_children

GRACE_S = 30.0
MAX_BACKOFF_S = 30.0


class _MetricsAndHealth(BaseHTTPRequestHandler):
    """`/metrics`: this machine's worker metrics; `/healthz`: 200 while every worker process
    runs, 503 naming those that do not (dead, or waiting to be restarted)."""

    children: list[Child] = []

    def do_GET(self) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            down = [child.name for child in self.children if not child.alive()]
            status = HTTPStatus.SERVICE_UNAVAILABLE if down else HTTPStatus.OK
            body, content_type = (f"down: {', '.join(down)}\n" if down else "ok\n").encode(), "text/plain"
        elif path == "/metrics":
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            status, body, content_type = HTTPStatus.OK, generate_latest(registry), CONTENT_TYPE_LATEST
        else:
            status, body, content_type = HTTPStatus.NOT_FOUND, b"not found\n", "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes and health checks every few seconds are not worth a log line each."""


def serve_metrics(port: int, children: list[Child], host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """This machine's worker metrics (every worker process's multiprocess files) and the
    pool's health on `port`, for Prometheus and container health checks."""
    handler = type("Handler", (_MetricsAndHealth,), {"children": children})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def run_worker_pool(
    *,
    processes: int,
    threads: int | None,
    queues: str,
    max_in_flight: int | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
) -> int:
    argv = python_module("workers", "--queues", queues, "--grace-s", str(GRACE_S))
    if threads:
        argv += ["--threads", str(threads)]
    if max_in_flight:
        argv += ["--max-in-flight", str(max_in_flight)]
    env = dict(os.environ)
    children = [Child(f"worker-{i}", list(argv), env) for i in range(processes)]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if metrics_port:
        serve_metrics(metrics_port, children, metrics_host)
    for child in children:
        child.start()
    next_start = {child.name: 0.0 for child in children}
    try:
        while not stop.wait(0.5):
            for child in children:
                if child.alive():
                    continue
                now = time.monotonic()
                if next_start[child.name] == 0.0:
                    backoff = min(MAX_BACKOFF_S, 2.0**child.restarts)
                    next_start[child.name] = now + backoff
                    print(f"jobgate worker: {child.name} exited; restarting in {backoff:.0f} s", flush=True)
                elif now >= next_start[child.name]:
                    child.restarts += 1
                    next_start[child.name] = 0.0
                    child.start()
        return 0
    finally:
        stop_children(children, grace_s=GRACE_S + 5)
