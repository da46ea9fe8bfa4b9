"""One output path for every listing: a rich table, CSV or JSON."""

import csv
import io
import json
from enum import StrEnum

__all__ = ["OutputFormat", "render_rows"]


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render_rows(rows, columns, fmt, console, title=None):
    """Print ``rows`` (dicts) with the given ``columns`` in format ``fmt`` to a rich console."""
    fmt = OutputFormat(fmt)
    if fmt is OutputFormat.json:
        console.print_json(json.dumps(rows, default=str)) if rows else console.out("[]")
    elif fmt is OutputFormat.csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        console.out(buffer.getvalue(), end="")
    else:
        from rich.table import Table

        table = Table(title=title)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*[_cell(row[column]) for column in columns])
        console.print(table)
