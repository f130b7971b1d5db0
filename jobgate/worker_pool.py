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

from jobgate.children import Child, python_module, stop_children

GRACE_S = 30.0
MAX_BACKOFF_S = 30.0


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """This machine's worker metrics (every worker process's multiprocess files) on `port`,
    for Prometheus to scrape where workers run on machines without an API."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(port, addr=host, registry=registry)


def run_worker_pool(
    *,
    processes: int,
    threads: int | None,
    queues: str,
    max_in_flight: int | None = None,
    metrics_port: int | None = None,
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
        serve_metrics(metrics_port)
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
