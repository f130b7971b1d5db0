"""How `jobgate batch submit --wait` shows a batch's progress while it runs.

On a terminal, one line redrawn in place: a bar, done/total, percent, rate, time left and
failures. Anywhere else (a log, a pipe, CI), a plain line each time the count moved, at most
every `plain_interval_s`, so a long batch does not flood a log; the last state is always
printed. Written to stderr, so `--json` output on stdout stays clean.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import TextIO

from jobgate.client.progress import BatchProgress

BAR_WIDTH = 24


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def rate_text(rate_per_s: float | None) -> str:
    if rate_per_s is None:
        return "--/s"
    return f"{rate_per_s:.1f}/s" if rate_per_s < 100 else f"{rate_per_s:.0f}/s"


def status_words(progress: BatchProgress) -> str:
    """done/total, percent, rate, ETA and failures: what both forms say."""
    words = (
        f"{progress.done}/{progress.total} ({progress.fraction:.0%})"
        f"  {rate_text(progress.rate_per_s)}  ETA {duration_text(progress.eta_s)}"
    )
    if progress.failed:
        words += f"  {progress.failed} failed"
    if progress.cancelled:
        words += f"  {progress.cancelled} cancelled"
    return words


def bar_line(progress: BatchProgress, *, unicode: bool = True) -> str:
    filled = int(BAR_WIDTH * progress.fraction)
    full, empty = ("█", "░") if unicode else ("#", "-")
    return f"[{full * filled}{empty * (BAR_WIDTH - filled)}] {status_words(progress)}"


class ProgressDisplay:
    """The `on_progress` callback of a wait: draws each `BatchProgress` on `stream`."""

    def __init__(
        self,
        stream: TextIO,
        *,
        plain_interval_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.terminal = stream.isatty()
        self.unicode = (getattr(stream, "encoding", None) or "").lower().replace("-", "") == "utf8"
        self.plain_interval_s = plain_interval_s
        self.monotonic = monotonic
        self._printed_done: int | None = None
        self._printed_at = float("-inf")
        self._drawn = False

    def __call__(self, progress: BatchProgress) -> None:
        if self.terminal:
            self._redraw(progress)
        else:
            self._plain(progress)

    def _redraw(self, progress: BatchProgress) -> None:
        width = shutil.get_terminal_size((100, 24)).columns - 1
        line = bar_line(progress, unicode=self.unicode)[:width]
        # Carriage return and erase-to-end-of-line: the bar is drawn over itself.
        self.stream.write(f"\r\x1b[K{line}")
        if progress.final:
            self.stream.write("\n")
        self.stream.flush()
        self._drawn = not progress.final

    def _plain(self, progress: BatchProgress) -> None:
        now = self.monotonic()
        moved = progress.done != self._printed_done
        due = now - self._printed_at >= self.plain_interval_s
        if progress.final or (moved and due) or self._printed_done is None:
            self.stream.write(f"{progress.batch_id}: {status_words(progress)}\n")
            self.stream.flush()
            self._printed_done, self._printed_at = progress.done, now

    def end(self) -> None:
        """Leave the line of an unfinished bar (a wait interrupted or failed)."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
