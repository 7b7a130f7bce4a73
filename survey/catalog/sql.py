"""DuckDB over the catalogs: an in-memory connection with a view per table, each a Delta table's current snapshot.

DuckDB's own delta extension cannot be installed offline. In a local warehouse a view reads the Parquet files of
its table's snapshot with DuckDB's own reader (projections and filters pushed down, nothing else imported); in an
object store, the snapshot's Arrow dataset. Either way a view reads one snapshot for the life of the connection.

The connection is read-only by construction: DuckDB may read those snapshot files and no other file, and write none
(`enable_external_access` off, then the configuration locked), Python variables are not tables, and a user's SQL
must parse, by DuckDB's own parser, as one statement of a reading kind.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import duckdb
import pyarrow as pa

from survey.catalog.schemas import PARTITIONS, TABLES
from survey.catalog.warehouse import Warehouse
from survey.errors import SurveyError, one_line

READ_STATEMENTS = (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN)  # SELECT covers WITH, DESCRIBE, …


def tables_named(query: str) -> set[str]:
    """The catalog tables `query` reads (so that a connection binds only those); every table when DuckDB cannot
    parse it, which leaves the error to the query itself."""
    try:
        names = duckdb.get_table_names(query)
    except duckdb.Error:
        return set(TABLES)
    return {name for name in names if name in TABLES}


def read_only(query: str, what: str = "query") -> str:
    """`query` if DuckDB parses it as exactly one SELECT-kind statement (SELECT, WITH, VALUES, DESCRIBE, SUMMARIZE,
    SHOW, EXPLAIN); otherwise one SurveyError naming what was found."""
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as err:
        raise SurveyError(f"{what} does not parse: {one_line(err, 300)}") from None
    if len(statements) != 1:
        raise SurveyError(f"{what} holds {len(statements)} statements; pass exactly one SELECT (no ';' chains)")
    kind = statements[0].type
    if kind not in READ_STATEMENTS:
        raise SurveyError(f"{what} is a {kind.name} statement; the catalogs are read-only here: pass one SELECT, "
                          "WITH, DESCRIBE, SUMMARIZE or EXPLAIN")
    return query


def with_condition(select: str, condition: str, what: str) -> str:
    """`select` filtered by a user's `condition`, refused unless DuckDB parses the result as the same query with one
    WHERE expression: a condition that closes a parenthesis, chains a statement or adds a UNION changes the parse."""
    query = read_only(f"{select} WHERE {condition}", what)
    if _parsed_without_where(query) != _parsed_without_where(f"{select} WHERE true"):
        raise SurveyError(f"{what} must be one SQL condition (as after WHERE), e.g. \"r.layer_or_area = 'IT'\"")
    return query


def _parsed_without_where(query: str) -> dict | None:
    """DuckDB's parse tree of a SELECT (json_serialize_sql) without its WHERE clause; None when it does not parse."""
    with duckdb.connect(":memory:", config={"enable_external_access": False}) as parser:
        tree = json.loads(parser.execute("SELECT json_serialize_sql(?)", [query]).fetchone()[0])
    if tree.get("error") or len(tree["statements"]) != 1:
        return None
    node = dict(tree["statements"][0]["node"])
    node.pop("where_clause", None)
    return node


def connect(warehouse: Warehouse, tables: Iterable[str] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view of each of `tables` (default: every catalog table), reading the
    files of their current snapshots and no other. A table nothing has been committed to yet is an empty view with
    its columns."""
    chosen = list(TABLES if tables is None else tables)
    connection = duckdb.connect(":memory:", config={"python_enable_replacements": False})
    if warehouse.is_local:
        files = {table: warehouse.snapshot_files(table) or [] for table in chosen}
        connection.execute("SET allowed_paths = ?", [[path for paths in files.values() for path in paths]])
    connection.execute("SET enable_external_access = false")
    for table in chosen:
        if warehouse.is_local:
            connection.execute(f"CREATE VIEW {table} AS {snapshot_select(table, files[table])}")
        else:
            connection.register(table, warehouse.dataset(table))
    connection.execute("SET lock_configuration = true")
    return connection


def snapshot_select(table: str, files: list[str]) -> str:
    """A SELECT of `table`'s declared columns, in order, from its snapshot's Parquet `files` (partition values from
    their ``<column>=<value>/`` folders; a column missing from older files is NULL there); none: no rows."""
    schema = TABLES[table]
    if not files:
        return "SELECT " + ", ".join(f'CAST(NULL AS {duckdb_type(field.type)}) AS "{field.name}"'
                                     for field in schema) + " WHERE false"
    columns = ", ".join(f'"{name}"' for name in schema.names)
    paths = ", ".join("'" + path.replace("'", "''") + "'" for path in files)
    options = "union_by_name = true"
    if partitions := PARTITIONS.get(table):
        types = ", ".join(f"'{name}': {duckdb_type(schema.field(name).type)}" for name in partitions)
        options += f", hive_partitioning = true, hive_types = {{{types}}}"
    return f"SELECT {columns} FROM read_parquet([{paths}], {options})"


_DUCKDB_TYPES = {pa.string(): "VARCHAR", pa.float64(): "DOUBLE", pa.float32(): "FLOAT", pa.int32(): "INTEGER",
                 pa.int64(): "BIGINT", pa.bool_(): "BOOLEAN", pa.timestamp("ms", tz="UTC"): "TIMESTAMPTZ"}


def duckdb_type(arrow_type: pa.DataType) -> str:
    """The DuckDB type DuckDB reads a Parquet column of `arrow_type` as (the catalog schemas' types)."""
    if pa.types.is_list(arrow_type):
        return duckdb_type(arrow_type.value_type) + "[]"
    return _DUCKDB_TYPES[arrow_type]


def query_catalog(warehouse: Warehouse, query: str) -> pa.Table:
    """The result of one read-only `query` over the catalog tables it names (what `survey sql` runs)."""
    read_only(query)
    try:
        with connect(warehouse, tables_named(query)) as connection:
            return connection.sql(query).to_arrow_table()
    except duckdb.Error as err:
        raise SurveyError(f"query failed: {one_line(err, 400)}") from None
