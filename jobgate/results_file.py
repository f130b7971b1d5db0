"""A results file that a download appends to and a later download resumes.

`jobgate batch results ID -o FILE` may be stopped at any moment (Ctrl-C, a lost connection,
a killed process). Run again, it keeps every complete line already in FILE, cuts off a last
line that was only partly written, and appends only the jobs whose `job_id` is not in it
yet. Lines come in submission order, so on a finished batch this is exactly "skip as many
lines as the file holds"; going by `job_id` also stays right for a batch still running,
whose later reads insert newly finished jobs between the earlier ones. Every line is flushed
whole, so nothing written is lost to a buffer.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import IO, Any


class NotAResultsFile(Exception):
    """FILE holds something other than result lines: it is left as it is."""


class ResultsFile:
    def __init__(self, path: Path, job_ids: set[str]) -> None:
        self.path = path
        self.job_ids = job_ids
        self.lines = len(job_ids)
        self.written = 0
        self._file: IO[bytes] | None = None

    @classmethod
    def open_for_resume(cls, path: Path) -> ResultsFile:
        """Read what `path` holds already (absent: nothing) and cut a partial last line."""
        if not path.exists():
            return cls(path, set())
        job_ids: set[str] = set()
        complete_bytes = 0
        with path.open("r+b") as file:
            for number, raw in enumerate(file, start=1):
                if not raw.endswith(b"\n"):
                    break  # written in part when the last download stopped
                job_ids.add(_job_id(raw, path, number))
                complete_bytes += len(raw)
            file.truncate(complete_bytes)
        return cls(path, job_ids)

    def __enter__(self) -> ResultsFile:
        self._file = self.path.open("ab")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def append(self, line: dict[str, Any]) -> None:
        assert self._file is not None, "append inside `with`"
        if line["job_id"] in self.job_ids:
            return
        self._file.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        self._file.flush()
        self.job_ids.add(line["job_id"])
        self.lines += 1
        self.written += 1


def _job_id(raw: bytes, path: Path, number: int) -> str:
    try:
        item = json.loads(raw)
    except ValueError:
        item = None
    if not isinstance(item, dict) or not isinstance(item.get("job_id"), str):
        raise NotAResultsFile(
            f"{path} line {number} is not a result line; give another file (it was left unchanged)"
        )
    return item["job_id"]
