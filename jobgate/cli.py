"""The `jobgate` command line (CONTRACT.md, CLI): dev, api, worker, migrate, keys, tenants, sim, bench."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from core.errors import ConfigError
from core.metrics_dir import deployment_metrics_dir, open_metrics_dir
from jobgate.admin_cli import add_admin_commands
from jobgate.batch_cli import add_batch_commands
from jobgate.config_cli import add_config_commands


def _cmd_dev(args: argparse.Namespace) -> int:
    from jobgate.dev import run_dev

    return run_dev(port=args.port, worker_threads=args.threads)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    """Unwind (`with` blocks and `finally` run) and exit as a process killed by `signum` reports."""
    raise SystemExit(128 + signum)


def _cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from core.config import load_config
    from core.settings import Settings

    load_config(Settings().config_path())  # fail fast, with the key named, on a bad config
    # uvicorn raises the SIGTERM it shut down on again once it is done; the default handler
    # would then kill the process before `main` removes the metrics folder, so exit instead.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=30,
        backlog=2048,
    )
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from core.config import load_config
    from core.settings import Settings
    from jobgate.worker_pool import run_worker_pool

    # Checked once here: a bad config exits with the key named instead of a supervisor
    # restarting worker processes that die on it forever.
    load_config(Settings().config_path())
    return run_worker_pool(
        processes=args.processes,
        threads=args.threads,
        max_in_flight=args.max_in_flight,
        queues=args.queues,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )


def _cmd_migrate(_: argparse.Namespace) -> int:
    from core.settings import Settings
    from core.store.migrate import upgrade

    upgrade(Settings().database_url)
    print("migrated to head")
    return 0


def _cmd_sim(args: argparse.Namespace) -> int:
    from sim.cli import main as sim_main

    return sim_main(args.rest)


def _cmd_bench(args: argparse.Namespace) -> int:
    # bench/ and the tests' process helpers it reuses live in the checkout, not in the installed
    # packages: make the checkout importable (an installed console script does not add it).
    checkout = str(Path(__file__).resolve().parents[1])
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    if not (Path(checkout) / "bench" / "run.py").exists():
        print("jobgate bench runs from a checkout of the repository (make bench)", file=sys.stderr)
        return 2
    from bench.run import main as bench_main

    return bench_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobgate", description="Queue-based asynchronous gateway for LLM completions"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run everything on embedded defaults")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--threads", type=int, default=8, help="worker consumer threads per job queue")
    dev.set_defaults(func=_cmd_dev)

    api = sub.add_parser("api", help="run the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1, help="API processes")
    api.set_defaults(func=_cmd_api)

    worker = sub.add_parser("worker", help="run worker processes (supervised)")
    worker.add_argument("--processes", type=int, default=1)
    worker.add_argument(
        "--threads",
        type=int,
        default=None,
        help="consumer threads per job queue and process (JOBGATE_WORKER_THREADS)",
    )
    worker.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="jobs one process keeps in flight at most (JOBGATE_WORKER_MAX_IN_FLIGHT, default 1000)",
    )
    worker.add_argument("--queues", default="interactive,batch")
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve this machine's worker metrics (/metrics) and the pool's health (/healthz) on this port",
    )
    worker.add_argument("--metrics-host", default="0.0.0.0", help="address of --metrics-port")
    worker.set_defaults(func=_cmd_worker)

    migrate = sub.add_parser("migrate", help="upgrade the database schema to the latest version")
    migrate.set_defaults(func=_cmd_migrate)

    add_admin_commands(sub)
    add_batch_commands(sub)
    add_config_commands(sub)

    sim = sub.add_parser("sim", help="run the simulated upstream", add_help=False)
    sim.add_argument("rest", nargs=argparse.REMAINDER)
    sim.set_defaults(func=_cmd_sim)

    bench = sub.add_parser("bench", help="run the benchmarks", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_cmd_bench)
    return parser


# Commands that hand every argument after their name to their own parser. argparse's REMAINDER
# refuses a remainder that starts with an option (`jobgate bench --quick`), so these bypass it.
PASSTHROUGH = {"sim": _cmd_sim, "bench": _cmd_bench}


@contextmanager
def _metrics_dir(command: str) -> Iterator[None]:
    """Before anything imports prometheus-client: `jobgate dev` keeps the files under ./var/,
    `jobgate api` and `jobgate worker` in their deployment's folder (core/metrics_dir.py),
    shared by every process of that deployment on this machine, unless JOBGATE_METRICS_DIR
    names one."""
    from core.settings import Settings

    if command not in ("api", "worker", "dev"):
        yield
        return
    settings = Settings()
    if command == "dev":
        folder = open_metrics_dir(settings.metrics_dir, Path("var/metrics"), default_is_private=False)
    else:
        deployment = deployment_metrics_dir(settings.database_url, settings.redis_prefix)
        folder = open_metrics_dir(settings.metrics_dir, deployment, default_is_private=True)
    try:
        yield
    finally:
        folder.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        with _metrics_dir(argv[0] if argv else ""):
            if argv and argv[0] in PASSTHROUGH:
                args = argparse.Namespace(func=PASSTHROUGH[argv[0]], rest=argv[1:])
            else:
                args = build_parser().parse_args(argv)
            return int(args.func(args))
    except ConfigError as exc:
        print(f"jobgate: bad config: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
