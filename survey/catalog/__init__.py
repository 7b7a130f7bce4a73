"""Delta Lake catalogs in a warehouse, and DuckDB views over them."""

from survey.catalog.schemas import TABLES
from survey.catalog.sql import connect, tables_named
from survey.catalog.warehouse import Warehouse

__all__ = ["TABLES", "Warehouse", "connect", "tables_named"]
