"""Where this machine's processes write their Prometheus multiprocess files, and who clears them.

prometheus-client reads `PROMETHEUS_MULTIPROC_DIR` once, when it is first imported, in every
process; so each entry point calls `open_metrics_dir` before anything imports it. The folder
is `PROMETHEUS_MULTIPROC_DIR` when already set (a parent jobgate process chose it for its
children), else `JOBGATE_METRICS_DIR`, else the entry point's default: for `jobgate api`,
`jobgate worker` and `python -m workers` the deployment's own folder under the system temp
directory, named by a hash of the database URL and the Redis prefix, so that the API and the
workers of one deployment on one machine add up with no setting, and two deployments never mix.

Every process using a folder holds a shared `flock` on its `.in-use` file for its whole life;
the kernel drops it when the process dies, however it dies, so neither pid reuse nor pid
namespaces sharing a volume can fool the check. The first process to find a folder unused
(granted the lock exclusively) deletes the `*.db` files a previous run left there; the last
process to leave the deployment's default folder deletes the folder. While the deployment
runs, the files of its dead processes stay: their counters and histograms are part of the
totals (deleting them would make counters go backwards, which Prometheus reads as a reset),
and prometheus-client's collector fails a scrape whose counter file vanished under it. jobgate
keeps no live gauges in these files (fleet gauges are computed at scrape time), so there is
nothing for prometheus-client's `mark_process_dead` to remove. This module must not import
prometheus-client.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from core.errors import ConfigError

ENV = "PROMETHEUS_MULTIPROC_DIR"
IN_USE = ".in-use"
# A folder removed between our `open` and our lock (its last user leaving) is made again;
# a few rounds settle any interleaving of processes starting and stopping at once.
JOIN_ATTEMPTS = 5


def _deployment_identity(database_url: str, redis_prefix: str) -> str:
    """The database (whatever driver or password names it) and the Redis prefix."""
    try:
        url = make_url(database_url)
    except ArgumentError:
        return f"{database_url}\0{redis_prefix}"  # not a URL: the database layer will say so
    backend = url.get_backend_name()
    url = url.set(drivername=backend)
    if backend == "sqlite" and url.database and url.database != ":memory:":
        url = url.set(database=str(Path(url.database).resolve()))
    return f"{url.render_as_string(hide_password=True)}\0{redis_prefix}"


def deployment_metrics_dir(database_url: str, redis_prefix: str) -> Path:
    """`<temp dir>/jobgate-metrics-<uid>-<hash>`: the same for every process of a deployment."""
    digest = hashlib.sha256(_deployment_identity(database_url, redis_prefix).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"jobgate-metrics-{os.geteuid()}-{digest}"


@dataclass
class MetricsDir:
    """A folder this process has joined; `close` leaves it (at the process's end)."""

    path: Path
    lock_fd: int
    remove_when_unused: bool

    def close(self) -> None:
        """Leave the folder; the last process out of a deployment's default folder removes it."""
        if self.remove_when_unused and _lock_nowait(self.lock_fd, fcntl.LOCK_EX):
            shutil.rmtree(self.path, ignore_errors=True)
        os.close(self.lock_fd)


def open_metrics_dir(configured: Path | None, default: Path, *, default_is_private: bool) -> MetricsDir:
    """Join this process's metrics folder and set PROMETHEUS_MULTIPROC_DIR to it.

    `default_is_private`: `default` is a folder jobgate names and owns under the shared temp
    directory (the deployment's): it is made private to this user, refused when someone else
    made it, and removed by the last process to leave it.
    """
    current = os.environ.get(ENV)
    path = Path(current) if current else (configured or default)
    private = not current and configured is None and default_is_private
    for _ in range(JOIN_ATTEMPTS):
        if private:
            _make_private_dir(path)
        else:
            path.mkdir(parents=True, exist_ok=True)
        lock_fd = _join(path)
        if lock_fd is not None:
            os.environ[ENV] = str(path.resolve())
            return MetricsDir(path, lock_fd, remove_when_unused=private)
    raise ConfigError(f"{path}: removed again each time it was made; set JOBGATE_METRICS_DIR elsewhere")


def _join(path: Path) -> int | None:
    """A shared lock on the folder's `.in-use` file, after clearing a folder nobody uses;
    None when the folder was removed meanwhile (its last user left)."""
    lock_path = path / IN_USE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    if _lock_nowait(fd, fcntl.LOCK_EX) and _still_there(fd, lock_path):
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
    # Blocks only while another process holds it exclusively: clearing (an instant) or leaving.
    # Converting the exclusive lock is not atomic, so whether the folder survived is checked after.
    fcntl.flock(fd, fcntl.LOCK_SH)
    if _still_there(fd, lock_path):
        return fd
    os.close(fd)
    return None


def _lock_nowait(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _still_there(fd: int, lock_path: Path) -> bool:
    """Our lock is on the folder's current `.in-use` file (not one a leaving process deleted)."""
    try:
        return os.stat(lock_path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _make_private_dir(path: Path) -> None:
    """Create `path` readable by this user only, or check that the one there is ours: in a
    shared temp directory another user could otherwise make it first and feed us metrics."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise ConfigError(
                f"{path}: exists and is not a folder of this user; "
                "set JOBGATE_METRICS_DIR to a folder of your own"
            ) from None
