"""DuckDB over the catalogs: an in-memory connection with a view per table, each a Delta table's current snapshot.

DuckDB's own delta extension cannot be installed offline, so each table is handed to DuckDB as the Arrow dataset of
its snapshot (`Warehouse.dataset`, with the declared schema): projections and filters are pushed down to the Parquet
files, and a view reads the same snapshot for the life of the connection.
"""

from __future__ import annotations

from collections.abc import Iterable

import duckdb

from survey.catalog.schemas import TABLES
from survey.catalog.warehouse import Warehouse


def tables_named(query: str) -> set[str]:
    """The catalog tables `query` reads (so that a connection binds only those); every table when DuckDB cannot
    parse it, which leaves the error to the query itself."""
    try:
        names = duckdb.get_table_names(query)
    except duckdb.Error:
        return set(TABLES)
    return {name for name in names if name in TABLES}


def connect(warehouse: Warehouse, tables: Iterable[str] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view of each of `tables` (default: every catalog table); nothing is
    opened read-write on disk. A table nothing has been committed to yet is an empty view with its columns."""
    connection = duckdb.connect(":memory:")
    for table in TABLES if tables is None else tables:
        connection.register(table, warehouse.dataset(table))
    return connection
