"""A webhook receiver as a real separate process, for tests: it verifies and records every delivery.

Run as `python -m tests.webhook_receiver --port 0 [--secret whsec_… ...] [--mode ok|fail|hang|gone]
[--fail-first-s N]`; once it listens it prints `receiver listening on http://127.0.0.1:PORT`.
Every POST (any path) is verified with `standardwebhooks.Webhook(secret).verify(...)` against
each configured secret, recorded, and answered:
- 400 when secrets are configured and none verifies (tampered body, old timestamp, wrong key);
- else by the mode: `ok` 200, `fail` 500, `gone` 410, `hang` never (the request is held until
  the sender gives up and closes the connection);
- `--fail-first-s N` answers 500 for the first N seconds after the first POST, then as the mode says.

`GET /received[?payloads=1]` returns `{"requests": [record, ...]}` in arrival order, a record being
`{"path", "webhook_id", "timestamp", "signatures", "verified", "verified_with", "error",
"status", "type", "data_id", "at"}` (`verified_with`: indexes of the secrets that verified it;
`status`: what was answered, null while held; `payload` when asked for). `POST /control` with
`{"mode", "secrets", "fail_first_s"}` (any subset) changes the behaviour of a running receiver;
`{"reset": true}` first forgets every record and goes back to the behaviour it started with
(one receiver can then serve a module's tests, each starting from a blank one).

`run_receiver(...)` starts one from a test and stops it by its pid. It imports only the standard
library, `standardwebhooks` and `tests.processes`, so it starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.processes import ServiceProcess, jobgate_env, python_module

READY_PREFIX = "receiver listening on "
MODES = ("ok", "fail", "hang", "gone")
_STATUS = {"ok": 200, "fail": 500, "gone": 410}
# Longest a held ("hang") request waits for the sender to give up, so no thread outlives a test by much.
HOLD_LIMIT_S = 120.0


class ReceiverState:
    def __init__(self, secrets: list[str], mode: str, fail_first_s: float) -> None:
        self.lock = threading.Lock()
        self.secrets = secrets
        self.mode = mode
        self.fail_first_s = fail_first_s
        self.first_post_at: float | None = None
        self.records: list[dict[str, Any]] = []
        self.initial = (list(secrets), mode, fail_first_s)

    def configure(self, patch: dict[str, Any]) -> None:
        with self.lock:
            if patch.get("reset"):
                secrets, self.mode, self.fail_first_s = self.initial
                self.secrets = list(secrets)
                self.first_post_at = None
                self.records = []
            if "mode" in patch:
                if patch["mode"] not in MODES:
                    raise ValueError(f"mode must be one of {MODES}")
                self.mode = patch["mode"]
            if "secrets" in patch:
                self.secrets = list(patch["secrets"])
            if "fail_first_s" in patch:
                self.fail_first_s = float(patch["fail_first_s"])
                self.first_post_at = None

    def record(self, path: str, headers: dict[str, str], body: bytes) -> tuple[dict[str, Any], str]:
        """Verify and record one POST; returns the record and what to do: a mode or "reject"."""
        now = time.time()
        with self.lock:
            secrets, mode = list(self.secrets), self.mode
            if self.first_post_at is None:
                self.first_post_at = now
            failing = now - self.first_post_at < self.fail_first_s
        verified_with: list[int] = []
        errors: list[str] = []
        payload: Any = None
        for index, secret in enumerate(secrets):
            try:
                payload = Webhook(secret).verify(body, headers)
            except (WebhookVerificationError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            else:
                verified_with.append(index)
        if payload is None:
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
        verified = bool(verified_with) if secrets else None
        data = payload.get("data") if isinstance(payload, dict) else None
        record: dict[str, Any] = {
            "path": path,
            "webhook_id": headers.get("webhook-id"),
            "timestamp": headers.get("webhook-timestamp"),
            "signatures": len(headers.get("webhook-signature", "").split()),
            "verified": verified,
            "verified_with": verified_with,
            "error": None if verified is not False else "; ".join(errors),
            "status": None,
            "type": payload.get("type") if isinstance(payload, dict) else None,
            "data_id": data.get("id") if isinstance(data, dict) else None,
            "at": now,
            "payload": payload,
        }
        with self.lock:
            self.records.append(record)
        if verified is False:
            return record, "reject"
        if mode == "hang":
            return record, "hang"
        return record, "fail" if failing else mode

    def snapshot(self, *, payloads: bool) -> list[dict[str, Any]]:
        with self.lock:
            records = [dict(r) for r in self.records]
        if not payloads:
            for record in records:
                del record["payload"]
        return records


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: ReceiverState

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read what arrived from GET /received."""

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/received":
            self._answer(404, {"error": "not found"})
            return
        payloads = parse_qs(url.query).get("payloads", ["0"])[0] not in ("0", "false")
        self._answer(200, {"requests": self.state.snapshot(payloads=payloads)})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/control":
            try:
                self.state.configure(json.loads(body))
            except (ValueError, TypeError) as exc:
                self._answer(400, {"error": str(exc)})
                return
            self._answer(200, {"mode": self.state.mode})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        record, action = self.state.record(self.path, headers, body)
        if action == "hang":
            self._hold()
            return
        status = 400 if action == "reject" else _STATUS[action]
        record["status"] = status
        self._answer(status, {"received": status < 300})

    def _hold(self) -> None:
        """Never answer: wait for the sender to close the connection (its timeout), then drop it."""
        self.close_connection = True
        self.connection.settimeout(HOLD_LIMIT_S)
        try:
            self.rfile.read(1)
        except OSError:
            return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Hundreds of deliveries connect at once; the default backlog of 5 would drop SYNs.
    request_queue_size = 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="webhook-receiver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret", action="append", default=[])
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--fail-first-s", type=float, default=0.0)
    args = parser.parse_args(argv)

    state = ReceiverState(args.secret, args.mode, args.fail_first_s)
    handler = type("Handler", (_Handler,), {"state": state})
    server = _Server((args.host, args.port), handler)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"{READY_PREFIX}http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


# --- The test side: start, read, steer, stop by pid ----------------------------------------------


@dataclass
class ReceiverHandle:
    url: str
    pid: int

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, method=method, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def requests(self, *, payloads: bool = False) -> list[dict[str, Any]]:
        """Every POST so far, in arrival order."""
        records: list[dict[str, Any]] = self._call("GET", f"/received?payloads={int(payloads)}")["requests"]
        return records

    def delivered(self, *, payloads: bool = False) -> list[dict[str, Any]]:
        """The POSTs that verified and were answered 2xx: the deliveries a real receiver would act on."""
        return [
            r
            for r in self.requests(payloads=payloads)
            if r["status"] is not None and 200 <= r["status"] < 300 and r["verified"] is not False
        ]

    def configure(self, **patch: Any) -> None:
        """Change mode, secrets or fail_first_s of the running receiver."""
        self._call("POST", "/control", patch)

    def reset(self) -> None:
        """Forget every record; back to the mode, secrets and fail_first_s it started with."""
        self._call("POST", "/control", {"reset": True})

    def wait_for(
        self,
        condition: Callable[[list[dict[str, Any]]], bool],
        *,
        timeout_s: float,
        what: str,
        payloads: bool = False,
        interval_s: float = 0.1,
    ) -> list[dict[str, Any]]:
        """Poll the records until `condition(records)` holds; fails naming `what` after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            records = self.requests(payloads=payloads)
            if condition(records):
                return records
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"timed out after {timeout_s} s waiting for {what}; {len(records)} requests so far"
                )
            time.sleep(interval_s)


@contextmanager
def run_receiver(
    *,
    secrets: list[str] | tuple[str, ...] = (),
    mode: str = "ok",
    fail_first_s: float = 0.0,
    startup_timeout_s: float = 15.0,
) -> Iterator[ReceiverHandle]:
    """Start `python -m tests.webhook_receiver` on a free port, yield its handle, stop it by pid."""
    argv = python_module("tests.webhook_receiver", "--mode", mode, "--fail-first-s", str(fail_first_s))
    for secret in secrets:
        argv += ["--secret", secret]
    process = ServiceProcess.start("webhook-receiver", argv, jobgate_env())
    try:
        line = process.wait_for_line(READY_PREFIX, timeout_s=startup_timeout_s)
        yield ReceiverHandle(url=line[len(READY_PREFIX) :].strip(), pid=process.pid)
    finally:
        process.stop(grace_s=5)


if __name__ == "__main__":
    sys.exit(main())
