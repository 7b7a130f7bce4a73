"""Delta Lake catalogs in a warehouse, and DuckDB views over them."""

from survey.catalog.schemas import TABLES
from survey.catalog.sql import connect, query_catalog, read_only, tables_named, with_condition
from survey.catalog.warehouse import Warehouse

__all__ = ["TABLES", "Warehouse", "connect", "query_catalog", "read_only", "tables_named", "with_condition"]
