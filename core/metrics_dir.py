"""Where this machine's processes write their Prometheus multiprocess files.

prometheus-client reads `PROMETHEUS_MULTIPROC_DIR` once, when it is first imported, in every
process; so each entry point calls `use_metrics_dir` before anything imports it. The
directory is `JOBGATE_METRICS_DIR` when set (processes that must be added up together share
it), else the entry point's default. This module must not import prometheus-client.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def use_metrics_dir(
    configured: Path | None, default: Path | None = None, *, fresh: bool = False
) -> Path | None:
    """Set PROMETHEUS_MULTIPROC_DIR (unless the environment already does) and create the folder."""
    current = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(current) if current else (configured or default)
    if path is None:
        return None
    if fresh and not current:
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path.resolve())
    return path
