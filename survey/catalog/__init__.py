"""The catalog layer: Delta Lake tables in a warehouse, DuckDB views over them, and the one place every stage, command,
job, report and the search service reads catalog rows and stored arrays through (`stimuli`, `networks`, `models`,
`prepared`, `distances`, `tracking`; `provenance` for what a run writes)."""

from survey.catalog.schemas import TABLES
from survey.catalog.sql import connect, query_catalog, read_only, tables_named, with_condition
from survey.catalog.warehouse import Warehouse

__all__ = ["TABLES", "Warehouse", "connect", "query_catalog", "read_only", "tables_named", "with_condition"]
