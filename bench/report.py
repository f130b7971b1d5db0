"""What a benchmark hands back and how the figures are shown: summary rows, machine info, the table.

Every benchmark's result dict carries a `summary` list of `summary_row(...)`: one figure,
jobgate's value, the baseline measured beside it in the same run, and their ratio; a figure
the issue sets a target for names it (`target="<= 7x"`) and whether this run `met` it.
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from typing import Any


def summary_row(
    figure: str,
    value: float | None,
    baseline: float | None = None,
    ratio: float | None = None,
    *,
    target: str | None = None,
    met: bool | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "figure": figure,
        "value": value,
        "baseline": baseline,
        "ratio": None if ratio is None else round(ratio, 3),
    }
    if target is not None:
        row["target"] = target
        row["met"] = met
    return row


def _verdict(row: dict[str, Any]) -> str:
    if "target" not in row:
        return ""
    return f"{row['target']}: {'met' if row['met'] else 'MISSED'}"


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


def _ratio(value: float) -> str:
    return f"{value:.2f}" if abs(value) >= 0.1 or value == 0 else f"{value:.2g}"


def format_table(results: dict[str, dict[str, Any]]) -> str:
    header = ("benchmark", "figure", "jobgate", "baseline", "ratio", "target")
    rows = [header]
    for name, result in results.items():
        if "error" in result:
            rows.append((name, "FAILED: " + result["error"].strip().splitlines()[-1][:70], "", "", "", ""))
            continue
        for row in result.get("summary", []):
            ratio = "-" if row["ratio"] is None else _ratio(row["ratio"])
            cells = (name, row["figure"], _number(row["value"]), _number(row["baseline"]), ratio)
            rows.append((*cells, _verdict(row)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)
