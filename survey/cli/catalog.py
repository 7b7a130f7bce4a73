"""Commands over a surveyed warehouse's catalogs: `sql`, `compact`, `migrate`, `report`, `layers`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from survey.cli.common import (
    DEFAULT_WAREHOUSE,
    FormatOption,
    OutputOption,
    WarehouseOption,
    app,
    check_output,
    existing,
)
from survey.display import OutputFormat
from survey.errors import SurveyError, one_line

if TYPE_CHECKING:
    from survey.catalog import Warehouse


@app.command()
def sql(
    query: Annotated[str | None, typer.Argument(help="DuckDB SQL over the catalog views (one per table).")] = None,
    file: Annotated[Path | None, typer.Option(
        "--file", help="Read the query from this file ('-': standard input) instead of the argument.")] = None,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    format: FormatOption = OutputFormat.table,
    output: OutputOption = None,
) -> None:
    """Query the catalogs with DuckDB: one read-only statement (SELECT, WITH, DESCRIBE, SUMMARIZE, EXPLAIN) over
    each table's current Delta snapshot, in memory; DuckDB may read those snapshots' files and no other."""
    from survey.catalog.sql import query_catalog, read_only
    from survey.display import emit

    if (query is None) == (file is None):
        given = "both a query and --file" if query is not None else "no query"
        raise SurveyError(f"{given}: pass the query as the argument or with --file QUERY.sql ('--file -': standard "
                          "input), one of the two")
    if file is not None:
        try:
            query = sys.stdin.read() if str(file) == "-" else file.read_text()
        except OSError as err:
            raise SurveyError(f"--file {file}: cannot be read ({one_line(err)}); pass a readable SQL file") from None
    check_output(format, output)
    read_only(query)
    emit(query_catalog(existing(warehouse), query), format, output)


@app.command()
def compact(
    table: Annotated[list[str] | None, typer.Option(help="Tables to compact (repeatable; default: all).")] = None,
    retention_hours: Annotated[int | None, typer.Option(help=(
        "Vacuum files superseded (or left by killed writers) longer ago than this. 0 frees space at once, but only "
        "when no query or survey is running on the warehouse. (default: the config's catalog.vacuum_hours)"))] = None,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
) -> None:
    """Compact the catalog tables' small files into large ones and vacuum superseded files (no row changes)."""
    from survey.catalog import TABLES
    from survey.config import CatalogConfig
    from survey.display import print_table

    store = existing(warehouse)
    chosen = table or list(TABLES)
    unknown = sorted(set(chosen) - set(TABLES))
    if unknown:
        raise SurveyError(f"--table: unknown tables {unknown}; choose from {', '.join(TABLES)}")
    settings = CatalogConfig()
    hours = settings.vacuum_hours if retention_hours is None else retention_hours
    print_table(["table", "files_removed", "files_added", "files_vacuumed"],
                [{"table": name, **store.compact(name, hours, settings.small_file_bytes)} for name in chosen],
                title="compaction")


@app.command()
def migrate(warehouse: WarehouseOption = DEFAULT_WAREHOUSE) -> None:
    """Bring a warehouse written by an older version up to date, in place (run it while no survey writes to it):
    tables of the old layout (Parquet parts, no Delta log) become Delta tables (shape distances and spaces, keyed
    otherwise before, are dropped for `survey run` to recompute), and absolute paths to the warehouse's own files
    become paths relative to its root (one commit per table), so that a copy or a move of it stands alone."""
    from survey.catalog import TABLES
    from survey.catalog.tracking import repoint_artifacts
    from survey.display import print_table

    store = existing(warehouse)
    rows = [{"table": name, "rows": converted} for name in TABLES
            if (converted := store.migrate_old_layout(name)) is not None]
    print_table(["table", "rows"], rows, title="converted to Delta tables (0: dropped, recomputed by its stage)")
    paths = [{"table": name, "paths": rewritten} for name in TABLES if (rewritten := store.relativize_paths(name))]
    print_table(["table", "paths"], paths, title="absolute paths made relative to the warehouse root")
    if store.is_local:
        repoint_artifacts(store)  # the default MLflow store's artifacts, at this warehouse


@app.command()
def report(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for index.html and its figures (default: "
                                                               "<warehouse>/report for a local warehouse).")] = None,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
) -> None:
    """A static HTML report of the catalogs (figures with their SQL) and the seed papers' findings, checked."""
    write_report(existing(warehouse), out)


def write_report(store: Warehouse, out: Path | None) -> None:
    """The HTML report of `store` in `out` (default <warehouse>/report), and its findings as a table."""
    from survey.display import console, print_table
    from survey.report.html import build_report

    if out is None:
        if not store.is_local:
            raise SurveyError(f"warehouse {store.uri} is not a local folder; pass --out DIR for the report")
        out = Path(store.root) / "report"
    if out.exists() and not out.is_dir():
        raise SurveyError(f"--out {out} is a file; the report is a folder (index.html and its figures): pass a folder "
                          "path, new or existing")
    index, results = build_report(store, out)
    print_table(["paper", "claim", "statistic", "value", "holds"], [
        {"paper": f.paper, "claim": f.claim, "statistic": f.statistic,
         "value": "" if f.value is None else f"{f.value:.3g}",
         "holds": {True: "yes", False: "no", None: f"not tested: {f.note}"}[f.holds]} for f in results],
        title="findings of the seed papers on this survey")
    console.print(f"report: {index.resolve()}  (open it in a browser; no server needed)", soft_wrap=True)


@app.command()
def layers(
    network: Annotated[str, typer.Argument(help="A network's name in the catalog, or a --kind TARGET.")],
    kind: Annotated[str | None, typer.Option(help="torchvision, timm or callable: build TARGET instead.")] = None,
    every: Annotated[bool, typer.Option("--all", help=(
        "Every hookable submodule (what a config's `layers:` may name), not only the surveyed layers."))] = False,
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
) -> None:
    """A catalog network's surveyed layers (what `survey mei --layer` takes); with --all or --kind, every hookable
    submodule of the network (what `layers:` in a config may name)."""
    from survey.sources.external import build_external, layer_names

    if kind:
        print("\n".join(layer_names(build_external(kind, network))))
        return
    store = existing(warehouse)
    rows = [row for row in store.rows("networks") if network in (row["name"], row["network_id"])]
    if not rows:
        raise SurveyError(f"no network named {network!r} in {store.uri}; list them with "
                          "`survey sql \"SELECT name FROM networks\"` or pass --kind")
    if every:
        from survey.catalog.networks import load_network

        print("\n".join(layer_names(load_network(rows[0], store)[0])))
    else:
        print("\n".join(rows[0]["layers"]))
