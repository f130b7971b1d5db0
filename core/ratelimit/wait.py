"""How long a call may wait for its slot, by priority: the limiter's wait policy.

A granted reservation may lie ahead of now; the caller sleeps until it, then checks the
provider's pause again before the call goes out (`RateLimiter.longest_pause_left_s`). An
interactive job books up to 10 s ahead (a chatbot's user would rather wait a moment than get
an error) and, refused, comes back as soon as budget frees. A batch job books at most 0.5 s
ahead, so a worker's slots never sit on long waits, and, refused, takes a place in the
limiter's waiting line (`line=True`) and goes back to the queue until just before its slot
(`LINE_EARLY_S`).
"""

from __future__ import annotations

INTERACTIVE_MAX_WAIT_S = 10.0
BATCH_MAX_WAIT_S = 0.5
# A call refused with a place in the waiting line comes back up to this much before its place
# (spread by jitter): it then books its slot ahead and sleeps to it, within BATCH_MAX_WAIT_S.
# Coming back after it would leave the bucket idle meanwhile, and a pacing limiter never gets
# idle time back: the two-models test used 0.89-0.95 of each budget with jobs coming back up to
# half a second late.
LINE_EARLY_S = BATCH_MAX_WAIT_S / 2


def max_wait_s(interactive: bool) -> float:
    """The longest reserved wait a call of this priority accepts."""
    return INTERACTIVE_MAX_WAIT_S if interactive else BATCH_MAX_WAIT_S


def joins_line(interactive: bool) -> bool:
    """Whether a refused call takes a place in the limiter's waiting line (batch work does)."""
    return not interactive
