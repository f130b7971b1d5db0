"""`jobgate batch submit|status|results|cancel` and `jobgate jobs get`: the batch user's
commands, over HTTP with `jobgate.client` (not on the database, as the operator's are).

The API's URL and key come from `--api-url` / `--api-key`, else `JOBGATE_API_URL` /
`JOBGATE_API_KEY` (the URL defaults to `jobgate dev`'s). `--json` prints the API's objects
for scripts. Exit status: 0 done, 1 the API refused or failed (its error on stderr, or as
JSON on stdout with `--json`), 2 a usage problem (no key, a file that cannot be read),
130 interrupted (the batch goes on). Imports of the client happen when a command runs, so
`jobgate` itself starts as fast as before.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobgate.client import Batch, Client, Job

DEFAULT_API_URL = "http://127.0.0.1:8000"
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageProblem(Exception):
    """A command that cannot start as given; its message says what to fix."""


def _client(args: argparse.Namespace) -> Client:
    # The command line's one edge with the environment (like a curl alias), read here only.
    url = args.api_url or os.environ.get("JOBGATE_API_URL") or DEFAULT_API_URL
    key = args.api_key or os.environ.get("JOBGATE_API_KEY")
    if not key:
        raise UsageProblem("no API key: pass --api-key or set JOBGATE_API_KEY")
    from jobgate.client import Client

    return Client(url, key)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _api_command(run: Callable[[argparse.Namespace, Client], int]) -> Callable[[argparse.Namespace], int]:
    """Give `run` a client; turn what it raises into a message and an exit status."""

    def command(args: argparse.Namespace) -> int:
        from jobgate.client import APIStatusError, JobgateError

        try:
            with _client(args) as client:
                return run(args, client)
        except UsageProblem as exc:
            print(f"jobgate: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except JobgateError as exc:
            if args.json:
                error = exc.to_dict() if isinstance(exc, APIStatusError) else {"error": {"message": str(exc)}}
                _print_json(error)
            else:
                print(f"jobgate: {exc}", file=sys.stderr)
            return EXIT_REFUSED

    return command


# --- showing objects ----------------------------------------------------------------------------


def _usage_text(value: dict[str, Any]) -> str:
    usage = value.get("usage") or {}
    text = f"usage {usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out tokens"
    return text + (f" · cost ${value['cost_usd']}" if value.get("cost_usd") is not None else "")


def _show_batch(batch: Batch) -> None:
    counts: dict[str, Any] = dict(batch["counts"])
    done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
    share = done / counts["total"] if counts["total"] else 1.0
    print(f"{batch['id']}  {batch['status']}  {done}/{counts['total']} done ({share:.0%})")
    states = ("succeeded", "failed", "cancelled", "running", "queued")
    print("  " + " · ".join(f"{name} {counts[name]}" for name in states))
    print(f"  created {batch.get('created_at')} · completed {batch.get('completed_at') or '-'}")
    print(f"  {_usage_text(dict(batch))}")


def _answer_text(job: Job) -> str | None:
    result = job.get("result") or {}
    choices = result.get("choices") or [{}]
    content = (choices[0].get("message") or {}).get("content")
    return None if content is None else str(content)


def _show_job(job: Job) -> None:
    print(f"{job['id']}  {job['status']}  model {job.get('model')}  attempts {job.get('attempts')}")
    if job.get("batch_id"):
        print(f"  batch {job['batch_id']} (custom_id {job.get('custom_id')})")
    print(
        f"  created {job.get('created_at')} · started {job.get('started_at') or '-'}"
        f" · finished {job.get('finished_at') or '-'}"
    )
    error = job.get("error")
    if error:
        print(f"  error {error['type']}: {error['message']}")
    answer = _answer_text(job)
    if answer is not None:
        print(f"  answer: {answer}")
    if job.get("usage"):
        served = job.get("served_by") or {}
        via = f" · served by {served.get('provider')}/{served.get('model')}" if served else ""
        print(f"  {_usage_text(dict(job))}{via}{' (cached)' if job.get('cached') else ''}")


# --- batch submit -------------------------------------------------------------------------------


def _metadata(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageProblem(f"--metadata takes KEY=VALUE, not {pair!r}")
        metadata[key] = value
    return metadata


def _submit(args: argparse.Namespace, client: Client) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise UsageProblem(f"cannot read {args.file}: no such file")
    batch = client.submit_batch(
        path,
        model=args.model,
        priority=args.priority,
        webhook_url=args.webhook_url,
        metadata=_metadata(args.metadata),
    )
    if not args.wait:
        if args.json:
            _print_json(batch)
        else:
            print(f"submitted {batch['id']}: {batch['counts']['total']} requests")
            print(f"  watch it:  jobgate batch status {batch['id']}")
        return 0
    if not args.json:
        print(f"submitted {batch['id']}: {batch['counts']['total']} requests", flush=True)
    return _wait(args, client, batch["id"])


def _wait(args: argparse.Namespace, client: Client, batch_id: str) -> int:
    from jobgate.progress_bar import ProgressDisplay

    display = ProgressDisplay(sys.stderr)
    try:
        batch = client.wait_batch(batch_id, on_progress=display, poll_interval_s=args.interval)
    except KeyboardInterrupt:
        display.end()
        print(f"stopped watching; {batch_id} goes on: jobgate batch status {batch_id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException:
        display.end()
        raise
    if args.json:
        _print_json(batch)
        return 0
    counts = batch["counts"]
    print(
        f"{batch_id} {batch['status']}: {counts['succeeded']} succeeded, {counts['failed']} failed,"
        f" {counts['cancelled']} cancelled of {counts['total']}"
    )
    print(f"  results:  jobgate batch results {batch_id} -o results.jsonl")
    return 0


# --- batch status, cancel; jobs get -------------------------------------------------------------


def _answer(args: argparse.Namespace, value: Any, show: Callable[[Any], None]) -> int:
    """`--json` for scripts, else the text for people."""
    if args.json:
        _print_json(value)
    else:
        show(value)
    return 0


def _status(args: argparse.Namespace, client: Client) -> int:
    return _answer(args, client.get_batch(args.batch_id), _show_batch)


def _cancel(args: argparse.Namespace, client: Client) -> int:
    return _answer(args, client.cancel_batch(args.batch_id), _show_batch)


def _job_get(args: argparse.Namespace, client: Client) -> int:
    return _answer(args, client.get_job(args.job_id, wait_s=args.wait), _show_job)


# --- batch results ------------------------------------------------------------------------------


def _results(args: argparse.Namespace, client: Client) -> int:
    from jobgate.results_file import NotAResultsFile, ResultsFile

    if args.output is None:
        for line in client.iter_results(args.batch_id, follow=args.wait, poll_interval_s=args.interval):
            sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
        sys.stdout.flush()
        return 0
    try:
        results = ResultsFile.open_for_resume(Path(args.output))
    except (NotAResultsFile, OSError) as exc:
        raise UsageProblem(str(exc)) from exc
    lines = client.iter_results(
        args.batch_id, follow=args.wait, poll_interval_s=args.interval, skip_job_ids=set(results.job_ids)
    )
    with results:
        for line in lines:
            results.append(dict(line))
    batch = client.get_batch(args.batch_id)
    counts = batch["counts"]
    final = counts["total"] - counts["queued"] - counts["running"]
    if args.json:
        _print_json(
            {
                "batch_id": args.batch_id,
                "file": args.output,
                "lines": results.lines,
                "written": results.written,
                "final_jobs": final,
                "total_jobs": counts["total"],
            }
        )
        return 0
    print(
        f"{args.output}: {results.lines} lines ({results.lines - results.written} already there,"
        f" {results.written} written)",
        file=sys.stderr,
    )
    if final < counts["total"]:
        print(
            f"  {final} of {counts['total']} jobs are final so far; run this again later (it resumes)"
            " or add --wait",
            file=sys.stderr,
        )
    return 0


# --- registration -------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def _wait_seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 60:
        raise argparse.ArgumentTypeError(f"between 0 and 60 seconds: {text!r}")
    return value


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api-url", help=f"the API (JOBGATE_API_URL; default {DEFAULT_API_URL})")
    common.add_argument("--api-key", help="an API key (JOBGATE_API_KEY)")
    common.add_argument("--json", action="store_true", help="print JSON, for scripts")
    return common


def add_batch_commands(sub: Any) -> None:
    """Register `batch` and `jobs` on the top-level subparsers."""
    common = _connection_options()
    interval = {"type": _positive_float, "default": 1.0, "help": "seconds between reads (default 1)"}

    batch = sub.add_parser("batch", help="submit batches, watch them, download their results")
    batch_sub = batch.add_subparsers(dest="batch_command", required=True)
    submit = batch_sub.add_parser("submit", parents=[common], help="submit a JSONL file as a batch")
    submit.add_argument("file", metavar="FILE", help='JSONL: {"custom_id", "body"} or OpenAI batch lines')
    submit.add_argument("--model", help="the model of every request whose body names none")
    submit.add_argument("--priority", choices=("batch", "interactive"))
    submit.add_argument("--webhook-url", help="called when each job and the batch finish")
    submit.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="the batch's metadata")
    submit.add_argument("--wait", action="store_true", help="show progress until every job is final")
    submit.add_argument("--interval", **interval)
    submit.set_defaults(func=_api_command(_submit))

    status = batch_sub.add_parser("status", parents=[common], help="a batch's counts, usage and cost")
    status.add_argument("batch_id", metavar="ID")
    status.set_defaults(func=_api_command(_status))

    results = batch_sub.add_parser(
        "results", parents=[common], help="download result lines (NDJSON, submission order)"
    )
    results.add_argument("batch_id", metavar="ID")
    results.add_argument(
        "-o", "--output", metavar="FILE", help="append to FILE, resuming after the lines already in it"
    )
    results.add_argument("--wait", action="store_true", help="go on until every job is final")
    results.add_argument("--interval", **interval)
    results.set_defaults(func=_api_command(_results))

    cancel = batch_sub.add_parser("cancel", parents=[common], help="cancel a batch's queued jobs")
    cancel.add_argument("batch_id", metavar="ID")
    cancel.set_defaults(func=_api_command(_cancel))

    jobs = sub.add_parser("jobs", help="read jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    get = jobs_sub.add_parser("get", parents=[common], help="a job: status, answer or error, usage")
    get.add_argument("job_id", metavar="ID")
    get.add_argument(
        "--wait", type=_wait_seconds, default=0, help="wait up to this many seconds (≤60) for it to finish"
    )
    get.set_defaults(func=_api_command(_job_get))
