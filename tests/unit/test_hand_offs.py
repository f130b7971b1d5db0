"""How a worker process's hand-offs bound the jobs it holds: batch jobs up to the bound,
interactive ones a reserve beyond it (workers/actors.py), without a runtime: the stand-in
holds each handed-over job until the test finishes it."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, cast

from core import queue
from core.services.runtime import JobRuntime
from workers.actors import hand_offs, interactive_reserve


class HeldJobs:
    """A runtime stand-in: every submitted job stays in flight until `finish_all`."""

    def __init__(self) -> None:
        self.futures: list[concurrent.futures.Future[Any]] = []

    def submit_threadsafe(
        self, job_id: str, priority: str, due_ms: int | None = None
    ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.futures.append(future)
        return future

    def finish_all(self) -> None:
        for future in self.futures:
            future.set_result(None)
        self.futures.clear()


def handed_within(hand_off: Any, priority: str, timeout_s: float = 0.2) -> bool:
    """Whether one more job is handed over without blocking for `timeout_s`."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (hand_off("job", priority), done.set()), daemon=True)
    thread.start()
    return done.wait(timeout_s)


def test_the_reserve_is_a_tenth_and_at_least_one() -> None:
    assert [interactive_reserve(n) for n in (1, 9, 10, 1000)] == [1, 1, 1, 100]


def test_batch_work_alone_uses_the_whole_bound_and_no_more() -> None:
    runtime = HeldJobs()
    offs = hand_offs(cast(JobRuntime, runtime), 10)
    assert all(handed_within(offs[queue.BATCH], queue.BATCH) for _ in range(10))
    assert not handed_within(offs[queue.BATCH], queue.BATCH)
    runtime.finish_all()


def test_a_process_full_of_batch_work_still_takes_interactive_jobs_up_to_the_reserve() -> None:
    runtime = HeldJobs()
    offs = hand_offs(cast(JobRuntime, runtime), 20)
    for _ in range(20):
        assert handed_within(offs[queue.BATCH], queue.BATCH)
    assert [handed_within(offs[queue.INTERACTIVE], queue.INTERACTIVE) for _ in range(3)] == [
        True,
        True,
        False,
    ]
    runtime.finish_all()
    assert handed_within(offs[queue.BATCH], queue.BATCH)
