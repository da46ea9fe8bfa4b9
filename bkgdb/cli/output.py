"""One output path for every listing: a rich table, CSV or JSON."""

import csv
import io
import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from rich.console import Console

__all__ = ["OutputFormat", "render_rows"]


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render_rows(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    fmt: OutputFormat | str,
    console: Console,
    title: str | None = None,
) -> None:
    """Print ``rows`` (dicts) with the given ``columns`` in format ``fmt`` to a rich console.

    Every format shows ``columns`` and only them, so that CSV and JSON carry the same fields and a
    row with another key never breaks the CSV writer.
    """
    fmt = OutputFormat(fmt)
    shown = [{column: row.get(column) for column in columns} for row in rows]
    if fmt is OutputFormat.json:
        console.print_json(json.dumps(shown, default=str)) if shown else console.out("[]")
    elif fmt is OutputFormat.csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(shown)
        console.out(buffer.getvalue(), end="")
    else:
        from rich.table import Table

        table = Table(title=title)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in shown:
            table.add_row(*[_cell(row[column]) for column in columns])
        console.print(table)
