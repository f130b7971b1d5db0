"""What a benchmark hands back and how the figures are shown: summary rows, machine info, the table.

Every benchmark's result dict carries a `summary` list of `summary_row(...)`: one figure,
jobgate's value, the baseline measured beside it in the same run, and their ratio.
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from typing import Any


def summary_row(
    figure: str, value: float | None, baseline: float | None = None, ratio: float | None = None
) -> dict[str, Any]:
    return {
        "figure": figure,
        "value": value,
        "baseline": baseline,
        "ratio": None if ratio is None else round(ratio, 3),
    }


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def machine() -> dict[str, Any]:
    memory_gb = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory_gb = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1)
    return {
        "nproc": os.cpu_count(),
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": utc_now(),
    }


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    header = ("benchmark", "figure", "jobgate", "baseline", "ratio")
    rows = [header]
    for name, result in results.items():
        if "error" in result:
            rows.append((name, "FAILED: " + result["error"].strip().splitlines()[-1][:70], "", "", ""))
            continue
        for row in result.get("summary", []):
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
            rows.append((name, row["figure"], _number(row["value"]), _number(row["baseline"]), ratio))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)
