"""What the command line prints: rich tables that never cut a value short, or the same rows as CSV, JSON or Parquet."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # imported where used: `survey --help` needs it not
    import pyarrow as pa

console = Console()


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def print_table(columns: list[str], rows: list[dict], title: str | None = None, path: Path | None = None) -> None:
    """`rows` as a rich table, on the terminal or into the text file `path`. No value is ever elided or broken
    inside a word: text wraps at its spaces, and the table grows past the terminal's width only where a word needs
    it, so that ids print whole and can be copied into the next command."""
    cells = [["" if row[c] is None else str(row[c]) for c in columns] for row in rows]
    texts = [[column, *(values[index] for values in cells)] for index, column in enumerate(columns)]
    widths = _column_widths(texts, console.width)
    table = Table(*columns, title=title)
    for column, width in zip(table.columns, widths, strict=True):
        column.width, column.overflow = width, "fold"
    for values in cells:
        table.add_row(*values)
    total = sum(widths) + 3 * len(widths) + 1  # each column's padding and border, and the last border
    if path is not None:
        with path.open("w") as sink:
            Console(file=sink, width=total).print(table)
    else:
        (console if total <= console.width else Console(width=total)).print(table)


def _column_widths(texts: list[list[str]], terminal: int) -> list[int]:
    """Each column's width (its header and cells in `texts`): its longest text when the table fits the terminal;
    otherwise columns of one word per cell (ids, numbers) keep their longest, and the others share what is left of
    the terminal's width in proportion to their longest texts, never below their longest word (so the table is
    wider than the terminal only where a word needs it)."""
    longest = [max(len(text) for text in column) for column in texts]
    word = [max(len(part) for text in column for part in text.split() or [""]) for column in texts]
    borders = 3 * len(texts) + 1
    if sum(longest) + borders <= terminal:
        return longest
    single = [all(len(text.split()) <= 1 for text in column[1:]) for column in texts]
    rest = terminal - borders - sum(n for n, one in zip(longest, single, strict=True) if one)
    shared = sum(n for n, one in zip(longest, single, strict=True) if not one) or 1
    return [n if one else max(w, rest * n // shared) for n, w, one in zip(longest, word, single, strict=True)]


def emit(data: pa.Table, output_format: OutputFormat, output: Path | None = None, title: str | None = None) -> None:
    """`data` in `output_format`, to the file `output` or to standard output (Parquet: a file only)."""
    if output_format is OutputFormat.parquet:
        import pyarrow.parquet as pq

        pq.write_table(data, output)
    elif output_format is OutputFormat.csv:
        import pyarrow.csv as pacsv

        pacsv.write_csv(nested_as_json(data), output or sys.stdout.buffer)
    elif output_format is OutputFormat.json:
        text = json.dumps(data.to_pylist(), default=str, indent=1)
        output.write_text(text) if output else print(text)
    else:
        print_table(data.column_names, data.to_pylist(), title, output)


def rows_table(columns: list[str], rows: list[dict]) -> pa.Table:
    """`rows` (dicts holding at least `columns`) as an Arrow table of those columns, in that order."""
    import pyarrow as pa

    return pa.Table.from_pylist([{column: row[column] for column in columns} for row in rows]) if rows else (
        pa.table({column: pa.array([], pa.string()) for column in columns}))


def nested_as_json(data: pa.Table) -> pa.Table:
    """`data` with every list, struct and map column as JSON text (one cell each), for CSV."""
    import pyarrow as pa

    for index, field in enumerate(data.schema):
        if pa.types.is_nested(field.type):
            text = pa.array([None if value is None else json.dumps(value, default=str)
                             for value in data.column(index).to_pylist()], pa.string())
            data = data.set_column(index, field.name, text)
    return data
