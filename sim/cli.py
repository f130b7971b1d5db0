"""The simulator's command line: `python -m sim` and `jobgate sim` both call `main(argv)`.

It parses the start-up knobs, binds the listening socket itself (so `--port 0` gets a free port
whose real number can be printed), and serves the app with uvicorn tuned for load: no access
log, a 2048-connection backlog, no concurrency cap, 75 s keep-alive. Once uvicorn accepts
connections it prints exactly one line, `sim listening on http://HOST:PORT`, and flushes it;
tests and `jobgate dev` wait for that line.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

import uvicorn

from sim.app import build_app
from sim.knobs import DEFAULT_ORGANIZATION, KnobError, Knobs, parse_fail_status, parse_knob

READY_PREFIX = "sim listening on "


def _knob(name: str, convert: Callable[[str], object]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return parse_knob(name, convert(text))
        except (KnobError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return parse


def _fail_status(text: str) -> int | str:
    try:
        return parse_fail_status(text)
    except KnobError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sim",
        description="Simulated OpenAI, Anthropic, Azure OpenAI and Gemini upstream: limits, faults, stats.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port (printed when ready)")
    parser.add_argument("--latency-ms", type=_knob("latency_ms", float), default=0)
    parser.add_argument("--latency-jitter-ms", type=_knob("latency_jitter_ms", float), default=0)
    parser.add_argument("--fail-rate", type=_knob("fail_rate", float), default=0, help="0..1")
    parser.add_argument("--fail-status", type=_fail_status, default=500, help='400..599 or "timeout"')
    parser.add_argument("--retry-after-s", type=_knob("retry_after_s", float), default=1)
    parser.add_argument("--hang-s", type=_knob("hang_s", float), default=30)
    parser.add_argument(
        "--rpm", type=_knob("rpm", float), default=None, help="requests per minute per key+model"
    )
    parser.add_argument(
        "--tpm", type=_knob("tpm", float), default=None, help="tokens per minute per key+model"
    )
    parser.add_argument(
        "--organization",
        type=_knob("organization", str),
        default=DEFAULT_ORGANIZATION,
        help="the organisation id a 429's message names, as OpenAI's and Anthropic's do",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for failure and jitter draws")
    parser.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug", "trace"]
    )
    return parser


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class _AnnouncingServer(uvicorn.Server):
    """A uvicorn server that prints the ready line once its listener accepts connections."""

    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self.url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(f"{READY_PREFIX}{self.url}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.log_level == "trace" else args.log_level.upper()
    logging.basicConfig(level=level, format="%(levelname)s: %(name)s: %(message)s")
    knobs = Knobs(
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        fail_rate=args.fail_rate,
        fail_status=args.fail_status,
        retry_after_s=args.retry_after_s,
        hang_s=args.hang_s,
        rpm=args.rpm,
        tpm=args.tpm,
        organization=args.organization,
    )
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(f"sim: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    bound_host, bound_port = sock.getsockname()[:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    config = uvicorn.Config(
        build_app(knobs, args.seed),
        host=args.host,
        port=bound_port,
        log_level=args.log_level,
        access_log=False,
        lifespan="off",
        backlog=2048,
        limit_concurrency=None,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=1,  # a hanging "timeout" request must not hold up a stop
    )
    server = _AnnouncingServer(config, f"http://{url_host}:{bound_port}")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
