"""The client library and the batch CLI against a running system (API + workers + sim).

One fleet serves the module; its provider is paced (RPM) so a batch takes seconds and its
progress can be watched. The sync and async clients submit, wait, iterate results and
cancel; `jobgate batch submit FILE --model fast --wait` runs as a subprocess on a 2,000-line
JSONL file; its results are downloaded with `-o`, the download killed part-way (through a
proxy that stops forwarding) and run again, and the file must then hold every line once, in
order; the progress bar is read from a pseudo-terminal as it redraws.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobgate.client import AsyncClient, BatchProgress, Client, NotFoundError
from tests.fleet import Fleet, answer_text, chat_body, run_fleet, sim_provider
from tests.processes import jobgate_env, python_module, wait_until
from tests.sim_process import run_sim

pytestmark = pytest.mark.e2e

# 200 calls a second: a 2,000-job batch takes about 10 s, long enough to watch it progress.
RPM = 12_000
CLI_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def fleet(redis_url: str, postgres_admin_url: str) -> Iterator[Fleet]:
    with run_sim() as sim:
        config = {
            "providers": {"sim": sim_provider(sim, rpm=RPM)},
            "models": {"fast": {"targets": [{"provider": "sim", "model": "client-echo"}]}},
            "cache": {"default": False, "ttl_s": 60},
        }
        with run_fleet(sim=sim, config=config, workers=1, threads=8) as running:
            yield running


def _cli_env(fleet: Fleet) -> dict[str, str]:
    return jobgate_env(api_url=fleet.api_url, api_key=fleet.api_key)


def jobgate_cli(
    fleet: Fleet, *args: str, timeout_s: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """`python -m jobgate ARGS` with the fleet's URL and key in JOBGATE_API_URL / _KEY."""
    return subprocess.run(
        python_module("jobgate", *args),
        env=_cli_env(fleet),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _prompts(prefix: str, n: int) -> dict[str, str]:
    return {f"{prefix}-{i:04d}": f"{prefix} prompt number {i}" for i in range(n)}


def write_batch_file(path: Path, prompts: dict[str, str]) -> None:
    """jobgate lines without a model (the CLI's --model fills it), every tenth line in the
    OpenAI batch format, every seventh naming its model itself."""
    with path.open("w") as file:
        for i, (custom_id, prompt) in enumerate(prompts.items()):
            body = chat_body("fast", prompt)
            if i % 7:
                del body["model"]
            line: dict[str, Any] = {"custom_id": custom_id, "body": body}
            if i % 10 == 0:
                line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
            file.write(json.dumps(line) + "\n")


def _assert_answers(lines: list[dict[str, Any]], prompts: dict[str, str]) -> None:
    assert [line["custom_id"] for line in lines] == list(prompts)  # each once, in submission order
    wrong = {
        line["custom_id"]: answer_text(line)
        for line in lines
        if answer_text(line) != f"echo: {prompts[line['custom_id']]}"
    }
    assert wrong == {}


# --- the library --------------------------------------------------------------------------------


def test_the_sync_client_submits_waits_reads_results_and_cancels(fleet: Fleet) -> None:
    with Client(fleet.api_url, fleet.api_key) as client:
        job = client.submit_job(chat_body("fast", "hello client"))
        done = client.wait_job(job["id"], timeout_s=60)
        assert done["status"] == "succeeded" and answer_text(dict(done)) == "echo: hello client"
        again = client.submit_job(chat_body("fast", "once"), idempotency_key="client-e2e-1")
        assert (
            client.submit_job(chat_body("fast", "once"), idempotency_key="client-e2e-1")["id"] == again["id"]
        )

        prompts = _prompts("sync", 200)
        batch = client.submit_batch(
            [
                {"custom_id": cid, "body": {"messages": [{"role": "user", "content": p}]}}
                for cid, p in prompts.items()
            ],
            model="fast",
            metadata={"suite": "client"},
        )
        seen: list[BatchProgress] = []
        final = client.wait_batch(batch["id"], on_progress=seen.append, poll_interval_s=0.1, timeout_s=60)
        assert final["counts"]["succeeded"] == 200 and final["metadata"] == {"suite": "client"}
        assert seen[-1].done == 200 and seen[-1].eta_s == 0.0
        assert [p.done for p in seen] == sorted(p.done for p in seen)
        _assert_answers([dict(line) for line in client.iter_results(batch["id"])], prompts)

        big = client.submit_batch(
            [{"custom_id": cid, "body": chat_body("fast", p)} for cid, p in _prompts("cancel", 500).items()]
        )
        client.cancel_batch(big["id"])
        cancelled = client.wait_batch(big["id"], timeout_s=60)
        assert cancelled["status"] == "cancelled" and cancelled["counts"]["cancelled"] > 0

        with pytest.raises(NotFoundError):
            client.get_batch("batch_does_not_exist")


def test_the_async_client_streams_a_file_and_iterates_results_as_they_finish(
    fleet: Fleet, tmp_path: Path
) -> None:
    prompts = _prompts("async", 300)
    path = tmp_path / "async.jsonl"
    write_batch_file(path, prompts)

    async def run() -> tuple[list[dict[str, Any]], int]:
        async with AsyncClient(f"{fleet.api_url}/v1", fleet.api_key) as client:
            batch = await client.submit_batch(path, model="fast")
            lines: list[dict[str, Any]] = []
            reads_unfinished = 0
            async for line in client.iter_results(batch["id"], poll_interval_s=0.2):
                if not lines:  # the first lines come while the batch still runs
                    current = await client.get_batch(batch["id"])
                    reads_unfinished = current["counts"]["queued"] + current["counts"]["running"]
                lines.append(dict(line))
            return lines, reads_unfinished

    lines, unfinished_at_first_line = asyncio.run(run())
    assert unfinished_at_first_line > 0
    assert sorted(line["custom_id"] for line in lines) == sorted(prompts)
    assert len({line["job_id"] for line in lines}) == 300
    wrong = [
        line["custom_id"] for line in lines if answer_text(line) != f"echo: {prompts[line['custom_id']]}"
    ]
    assert wrong == []


# --- the CLI ------------------------------------------------------------------------------------


class StallingProxy:
    """Forwards to the API, but a results stream only up to `stall_after_bytes`: then it
    holds the connection open, sending nothing, until the test ends (a download stuck mid-way)."""

    def __init__(self, upstream: str, stall_after_bytes: int) -> None:
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")
                }
                with httpx.stream(
                    self.command, upstream + self.path, headers=headers, content=body, timeout=30
                ) as answer:
                    self.send_response(answer.status_code)
                    self.send_header("Content-Type", answer.headers.get("content-type", "application/json"))
                    self.end_headers()  # HTTP/1.0: the body ends when the connection closes
                    limit = stall_after_bytes if self.path.endswith("/results") else None
                    sent = 0
                    for chunk in answer.iter_bytes():
                        if limit is not None and sent + len(chunk) >= limit:
                            self.wfile.write(chunk[: limit - sent])
                            self.wfile.flush()
                            proxy.release.wait(timeout=CLI_TIMEOUT_S)
                            return
                        self.wfile.write(chunk)
                        sent += len(chunk)

            do_GET = do_POST = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> StallingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_the_cli_submits_a_2000_line_file_waits_and_resumes_an_interrupted_download(
    fleet: Fleet, tmp_path: Path
) -> None:
    prompts = _prompts("cli", 2000)
    source = tmp_path / "requests.jsonl"
    write_batch_file(source, prompts)

    submitted = jobgate_cli(
        fleet, "batch", "submit", str(source), "--model", "fast", "--wait", "--json", "--interval", "0.5"
    )

    assert submitted.returncode == 0, submitted.stderr
    batch = json.loads(submitted.stdout)
    assert batch["status"] == "completed" and batch["counts"]["succeeded"] == 2000
    progress = submitted.stderr.splitlines()
    assert "\r" not in submitted.stderr  # not a terminal: plain lines
    assert progress[-1].startswith(f"{batch['id']}: 2000/2000 (100%)")
    assert len(progress) >= 2 and all(
        re.match(rf"{batch['id']}: \d+/2000 \(\d+%\)  ", line) for line in progress
    )

    with Client(fleet.api_url, fleet.api_key) as client:
        reference = [dict(line) for line in client.iter_results(batch["id"], follow=False)]
    _assert_answers(reference, prompts)

    out = tmp_path / "results.jsonl"
    with StallingProxy(fleet.api_url, stall_after_bytes=len(json.dumps(reference[0])) * 300) as proxy:
        stuck = subprocess.Popen(
            python_module("jobgate", "batch", "results", batch["id"], "-o", str(out), "--api-url", proxy.url),
            env=_cli_env(fleet),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_until(lambda: _complete_lines(out) >= 100, timeout_s=60, what="the first result lines")
        finally:
            stuck.kill()  # by its pid: a download killed mid-way
            stuck.wait(timeout=30)
    kept = _complete_lines(out)
    assert 100 <= kept < 2000
    with out.open("ab") as file:  # and a line written only in part when it died
        file.write(json.dumps(reference[kept]).encode()[:40])

    resumed = jobgate_cli(fleet, "batch", "results", batch["id"], "-o", str(out), "--json")

    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert (summary["lines"], summary["written"]) == (2000, 2000 - kept)
    assert [json.loads(line) for line in out.read_text().splitlines()] == reference

    again = jobgate_cli(fleet, "batch", "results", batch["id"], "-o", str(out))
    assert again.returncode == 0 and "2000 lines (2000 already there, 0 written)" in again.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == reference
    to_stdout = jobgate_cli(fleet, "batch", "results", batch["id"])
    assert [json.loads(line) for line in to_stdout.stdout.splitlines()] == reference


def _run_in_terminal(argv: list[str], env: dict[str, str], *, timeout_s: float) -> tuple[int, str]:
    """Run `argv` with a pseudo-terminal as stdin, stdout and stderr; its exit status and output."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    process = subprocess.Popen(
        argv, env=env, stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True
    )
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other side closed (the command ended)
                break
            if not chunk:
                break
            output += chunk
        status = process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        os.close(controller)
    return status, output.decode("utf-8", "replace")


def test_the_progress_bar_redraws_in_a_terminal_until_the_batch_is_done(fleet: Fleet, tmp_path: Path) -> None:
    prompts = _prompts("tty", 400)
    source = tmp_path / "tty.jsonl"
    write_batch_file(source, prompts)
    env = {**_cli_env(fleet), "COLUMNS": "120"}

    status, output = _run_in_terminal(
        python_module(
            "jobgate", "batch", "submit", str(source), "--model", "fast", "--wait", "--interval", "0.2"
        ),
        env,
        timeout_s=CLI_TIMEOUT_S,
    )

    assert status == 0, output
    frames = output.split("\r\x1b[K")[1:]
    drawn = [re.search(r"\] (\d+)/400 \((\d+)%\)  (\S+)/s  ETA (\S+)", frame) for frame in frames]
    assert all(drawn), frames
    done = [int(match.group(1)) for match in drawn if match]
    assert done == sorted(done) and done[-1] == 400 and len(set(done)) >= 3, done
    assert frames[-1].startswith("[") and "400/400 (100%)" in frames[-1]
    assert any(re.match(r"[\d.]+$", match.group(3)) for match in drawn if match)  # a measured rate
    assert re.search(r"batch_\w+ completed: 400 succeeded, 0 failed, 0 cancelled of 400", output)


def test_status_cancel_and_jobs_get_print_json_for_scripts_and_text_for_people(fleet: Fleet) -> None:
    batch_id = fleet.submit_batch({f"s{i}": chat_body("fast", f"status {i}") for i in range(3)})
    fleet.wait_for_batch(batch_id, timeout_s=60)
    job_id = fleet.batch_jobs(batch_id)[0]["id"]

    status = jobgate_cli(
        fleet, "batch", "status", batch_id, "--json", "--api-key", fleet.api_key, "--api-url", fleet.api_url
    )
    assert status.returncode == 0 and json.loads(status.stdout)["counts"]["succeeded"] == 3
    people = jobgate_cli(fleet, "batch", "status", batch_id)
    assert people.stdout.startswith(f"{batch_id}  completed  3/3 done (100%)")
    text = jobgate_cli(fleet, "jobs", "get", job_id)
    assert f"{job_id}  succeeded" in text.stdout and "answer: echo: status" in text.stdout
    cancelled = jobgate_cli(fleet, "batch", "cancel", batch_id, "--json")
    assert json.loads(cancelled.stdout)["status"] == "completed"  # a finished batch stays as it was

    missing = jobgate_cli(fleet, "jobs", "get", "job_missing", "--json")
    assert missing.returncode == 1 and json.loads(missing.stdout)["status"] == 404
    refused = jobgate_cli(fleet, "batch", "status", batch_id, "--api-key", "jg_wrong")
    assert refused.returncode == 1 and "401" in refused.stderr
    no_key = subprocess.run(
        python_module("jobgate", "batch", "status", batch_id),
        env=jobgate_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert no_key.returncode == 2 and "JOBGATE_API_KEY" in no_key.stderr
