"""A chatbot backend's webhook receiver for jobgate: verify the signature, drop duplicates, act.

    JOBGATE_WEBHOOK_SECRET=whsec_... python examples/chatbot_webhook/receiver.py --port 9000

Every POST is verified with the Standard Webhooks reference library (`pip install
standardwebhooks`): a bad or missing signature, or a timestamp more than 5 minutes off, is
answered 400 and ignored. jobgate retries until it gets a 2xx and keeps the `webhook-id` of
a message the same on every retry, so the receiver answers at once and acts on each id once.
A `job.succeeded` prints the assistant's answer, tagged with the `conversation_id` the job
carried in its metadata (where a real bot would post the answer back into that conversation).
Only the standard library besides `standardwebhooks`.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


def describe(event: dict[str, Any]) -> str:
    """What the chatbot does with one verified event (here: the line it prints)."""
    job = event.get("data") or {}
    conversation = (job.get("metadata") or {}).get("conversation_id") or job.get("id")
    if event.get("type") == "job.succeeded":
        if job.get("result") is None and job.get("result_url"):
            # Results over 256 KB are not inlined: fetch them with GET <jobgate>/v1/jobs/{id}.
            return f"[{conversation}] assistant: (long answer; fetch {job['result_url']})"
        answer = job["result"]["choices"][0]["message"]["content"]
        return f"[{conversation}] assistant: {answer}"
    if event.get("type") == "job.failed":
        error = job.get("error") or {}
        return f"[{conversation}] failed: {error.get('type')}: {error.get('message')}"
    return f"[{conversation}] {event.get('type')}"


class ChatbotReceiver:
    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)
        self.lock = threading.Lock()
        # A real bot keeps these in its database, for longer than jobgate retries (about 27 h).
        self.seen: set[str] = set()

    def handle(self, body: bytes, headers: dict[str, str]) -> int:
        """The HTTP status to answer; prints the event's line the first time its id is seen."""
        try:
            event = self.webhook.verify(body, headers)
        except (WebhookVerificationError, ValueError) as exc:
            print(f"rejected: {exc}", file=sys.stderr, flush=True)
            return 400
        webhook_id = {k.lower(): v for k, v in headers.items()}["webhook-id"]
        with self.lock:
            first = webhook_id not in self.seen
            self.seen.add(webhook_id)
        if first:
            print(describe(event), flush=True)
        return 204


def serve(receiver: ChatbotReceiver, host: str, port: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            status = receiver.handle(body, dict(self.headers.items()))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the printed answers are the output."""

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    print(f"chatbot receiver listening on http://{host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser(description="Print the answers jobgate delivers by webhook.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    secret = os.environ.get("JOBGATE_WEBHOOK_SECRET", "")
    if not secret.startswith("whsec_"):
        print(
            "Set JOBGATE_WEBHOOK_SECRET to your signing secret (whsec_...):\n"
            "  curl -s localhost:8000/v1/webhook-secret -H 'Authorization: Bearer $KEY'",
            file=sys.stderr,
        )
        return 2
    serve(ChatbotReceiver(secret), args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
