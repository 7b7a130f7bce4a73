"""What the command line prints: rich tables that never cut a value short, or the same rows as CSV, JSON or Parquet."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path

import pyarrow as pa
from rich.console import Console
from rich.table import Table

console = Console()
WIDEST = 240  # a table up to this many columns wide is printed whole, wider than the terminal if need be


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def print_table(columns: list[str], rows: list[dict], title: str | None = None, path: Path | None = None) -> None:
    """`rows` as a rich table, on the terminal or into the text file `path`. No value is ever elided: the table
    grows past the terminal's width (up to WIDEST) so that ids print whole and can be copied into the next command;
    beyond that, long cells fold onto more lines."""
    table = Table(*columns, title=title)
    for column in table.columns:
        column.overflow = "fold"
    for row in rows:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
    natural = console.measure(table, options=console.options.update_width(WIDEST)).maximum
    if path is not None:
        with path.open("w") as sink:
            Console(file=sink, width=natural).print(table)
    else:
        (console if natural <= console.width else Console(width=natural)).print(table)


def emit(data: pa.Table, output_format: OutputFormat, output: Path | None = None, title: str | None = None) -> None:
    """`data` in `output_format`, to the file `output` or to standard output (Parquet: a file only)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if output_format is OutputFormat.parquet:
        pq.write_table(data, output)
    elif output_format is OutputFormat.csv:
        pacsv.write_csv(nested_as_json(data), output or sys.stdout.buffer)
    elif output_format is OutputFormat.json:
        text = json.dumps(data.to_pylist(), default=str, indent=1)
        output.write_text(text) if output else print(text)
    else:
        print_table(data.column_names, data.to_pylist(), title, output)


def rows_table(columns: list[str], rows: list[dict]) -> pa.Table:
    """`rows` (dicts holding at least `columns`) as an Arrow table of those columns, in that order."""
    return pa.Table.from_pylist([{column: row[column] for column in columns} for row in rows]) if rows else (
        pa.table({column: pa.array([], pa.string()) for column in columns}))


def nested_as_json(data: pa.Table) -> pa.Table:
    """`data` with every list, struct and map column as JSON text (one cell each), for CSV."""
    for index, field in enumerate(data.schema):
        if pa.types.is_nested(field.type):
            text = pa.array([None if value is None else json.dumps(value, default=str)
                             for value in data.column(index).to_pylist()], pa.string())
            data = data.set_column(index, field.name, text)
    return data
