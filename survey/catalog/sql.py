"""DuckDB over the Parquet catalogs: an in-memory connection with one view per table."""

from __future__ import annotations

import duckdb

from survey.catalog.schemas import TABLES
from survey.catalog.warehouse import Warehouse


def view_sql(warehouse: Warehouse, table: str) -> str:
    """The DuckDB expression a view of `table` reads (the one documented in catalogs/README.md)."""
    glob = f"{warehouse.table_dir(table)}/**/*.parquet".replace("'", "''")
    return f"read_parquet('{glob}', hive_partitioning = true, union_by_name = true)"


def connect(warehouse: Warehouse) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per catalog table; nothing is opened read-write on disk.

    Local warehouses are read by DuckDB's own Parquet reader; other filesystems through pyarrow datasets.
    Tables with no part yet are empty views with the declared columns.
    """
    connection = duckdb.connect(":memory:")
    for table in TABLES:
        if warehouse.is_local and warehouse.done_keys(table):
            connection.execute(f"CREATE VIEW {table} AS SELECT * FROM {view_sql(warehouse, table)}")
        else:
            connection.register(f"_{table}_arrow", warehouse.read_table(table))
            connection.execute(f"CREATE VIEW {table} AS SELECT * FROM _{table}_arrow")
    return connection
