"""Log output of a process set up by `configure_logging`: tracebacks without secrets.

Each case runs in a child process, since the set-up replaces the root logger's handlers.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SECRET = "jg_secret-that-must-not-leak"

SCRIPT = f"""
import structlog
from core.logging import configure_logging

configure_logging({{fmt!r}})

def handle(authorization):
    prompt = "a private prompt"
    raise RuntimeError("upstream went away")

try:
    handle("Bearer {SECRET}")
except RuntimeError:
    structlog.get_logger("jobgate.test").exception("request_failed")
"""


def run_logging(fmt: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(fmt=fmt)], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stderr


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_a_logged_exception_shows_its_traceback_but_not_the_frames_locals(fmt: str) -> None:
    output = run_logging(fmt)

    assert "upstream went away" in output
    assert "in handle" in output  # the traceback is there...
    assert SECRET not in output  # ...without the arguments and locals of its frames
    assert "a private prompt" not in output


def test_json_lines_carry_the_traceback_as_text() -> None:
    record = json.loads(run_logging("json").strip().splitlines()[-1])

    assert record["event"] == "request_failed"
    assert record["exception"].startswith("Traceback")
