"""Progress of a batch as a waiter sees it: done of total, rate, time left, failures.

`ProgressMeter` turns successive reads of a batch into `BatchProgress`. The rate is measured
over the last `window_s` seconds of reads, so it follows a batch that speeds up or slows down
(a limiter opening, a provider pausing); until two reads are apart in time, or when nothing
finished within the window, rate and ETA are unknown (None) rather than guessed. Time is
passed in (monotonic seconds), so the arithmetic is tested without waiting.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from jobgate.client.types import Batch, batch_is_final


@dataclass(frozen=True)
class BatchProgress:
    batch: Batch
    total: int
    done: int
    succeeded: int
    failed: int
    cancelled: int
    elapsed_s: float
    rate_per_s: float | None
    eta_s: float | None

    @property
    def batch_id(self) -> str:
        return self.batch["id"]

    @property
    def final(self) -> bool:
        return batch_is_final(self.batch)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


class ProgressMeter:
    def __init__(self, *, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self._started_s: float | None = None
        self._reads: deque[tuple[float, int]] = deque()

    def update(self, batch: Batch, now_s: float) -> BatchProgress:
        counts = batch["counts"]
        done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
        if self._started_s is None:
            self._started_s = now_s
        self._reads.append((now_s, done))
        while len(self._reads) > 2 and now_s - self._reads[1][0] >= self.window_s:
            self._reads.popleft()
        first_s, first_done = self._reads[0]
        span_s = now_s - first_s
        rate = (done - first_done) / span_s if span_s > 0 else None
        remaining = counts["total"] - done
        if remaining == 0:
            eta: float | None = 0.0
        else:
            eta = remaining / rate if rate else None
        return BatchProgress(
            batch=batch,
            total=counts["total"],
            done=done,
            succeeded=counts["succeeded"],
            failed=counts["failed"],
            cancelled=counts["cancelled"],
            elapsed_s=now_s - self._started_s,
            rate_per_s=rate,
            eta_s=eta,
        )
