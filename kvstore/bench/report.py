"""Small helpers the benchmarks share: percentiles, tables, JSON output."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[pos]


def _cell(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """Rows as columns; a single row prints as a figure/value list, which stays readable at 80 columns."""
    if len(rows) == 1:
        table = Table(title=title)
        table.add_column("figure")
        table.add_column("value", justify="right")
        for k, v in rows[0].items():
            table.add_row(k, _cell(v))
        Console().print(table)
        return
    table = Table(title=title)
    for col in rows[0]:
        table.add_column(col.replace("_", " "), justify="left" if isinstance(rows[0][col], str) else "right")
    for row in rows:
        table.add_row(*(_cell(v) for v in row.values()))
    Console().print(table)


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))
