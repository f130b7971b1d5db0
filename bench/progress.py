"""Progress on stderr while a benchmark runs: one line per benchmark, rewritten in place.

`bench/run.py` names the running benchmark with `begin(name)`; the benchmark reports its
phase with `step("...")` and long waits with `bar(done, total)`. On a terminal the line is
redrawn with `\\r`; otherwise (CI logs, pipes) each phase is one plain line, bars are skipped.
"""

from __future__ import annotations

import sys
import threading
import time

BAR_WIDTH = 24


class _Current(threading.local):
    """The running benchmark, per thread: a background benchmark reports under its own name."""

    name = ""
    started = 0.0
    last_bar = 0.0


_current = _Current()


def _write(text: str, *, final: bool = False) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + text + ("\n" if final else ""))
    else:
        sys.stderr.write(text + "\n")
    sys.stderr.flush()


def begin(name: str) -> None:
    _current.name, _current.started = name, time.monotonic()
    _write(f"[{name}] starting")


def step(message: str) -> None:
    _write(f"[{_current.name} {time.monotonic() - _current.started:5.1f}s] {message}")


def bar(done: int, total: int, what: str = "jobs") -> None:
    """Redraw a bar (terminal only, at most 10 times a second)."""
    now = time.monotonic()
    if not sys.stderr.isatty() or (now - _current.last_bar < 0.1 and done < total):
        return
    _current.last_bar = now
    filled = int(BAR_WIDTH * done / max(total, 1))
    drawn = "#" * filled + "." * (BAR_WIDTH - filled)
    _write(f"[{_current.name} {now - _current.started:5.1f}s] [{drawn}] {done:,}/{total:,} {what}")


def end(summary: str) -> None:
    _write(f"[{_current.name} {time.monotonic() - _current.started:5.1f}s] done: {summary}", final=True)
