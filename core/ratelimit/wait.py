"""How long a call may wait for its slot, by priority: the limiter's wait policy.

A granted reservation may lie ahead of now; the caller sleeps until it, then checks the
provider's pause again before the call goes out (`RateLimiter.longest_pause_left_s`), and
books again rather than go out when it woke up too late (`MISSED_SLOT_S`). An
interactive job books up to 10 s ahead (a chatbot's user would rather wait a moment than get
an error) and, refused, comes back as soon as budget frees. A batch job books at most 0.5 s
ahead, so a worker's slots never sit on long waits, and, refused, takes a place in the
limiter's waiting line (`line=True`) and goes back to the queue until its slot.
"""

from __future__ import annotations

INTERACTIVE_MAX_WAIT_S = 10.0
BATCH_MAX_WAIT_S = 0.5
# A call that wakes up this much after its reserved slot does not go out on it: its slot has
# passed, and sent now it would land with the calls booked after it (a provider enforcing its
# quota per second with a 20% tolerance refuses such a bunch). It books again at once.
MISSED_SLOT_S = 0.2


def max_wait_s(interactive: bool) -> float:
    """The longest reserved wait a call of this priority accepts."""
    return INTERACTIVE_MAX_WAIT_S if interactive else BATCH_MAX_WAIT_S


def joins_line(interactive: bool) -> bool:
    """Whether a refused call takes a place in the limiter's waiting line (batch work does)."""
    return not interactive
