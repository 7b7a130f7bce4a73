"""Warehouse and DuckDB views: atomic parts, content-addressed arrays, clear errors for bad warehouses."""

from __future__ import annotations

import numpy as np
import pytest

from survey.catalog import TABLES, Warehouse, connect
from survey.errors import SurveyError


def _run_row(stage: str) -> dict:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return {"stage": stage, "config": "{}", "started": now, "finished": now, "status": "ok", "executor": "local",
            "units_total": 1, "units_run": 1, "units_skipped": 0, "rows": "{}", "run_id": "r", "code_version": "0"}


def test_parts_are_keyed_and_idempotent(tmp_path):
    warehouse = Warehouse(tmp_path / "wh")
    warehouse.ensure_writable()
    warehouse.append_unit("runs", "a", [_run_row("x")])
    warehouse.append_unit("runs", "a", [_run_row("x")])  # the same unit again replaces its own part
    warehouse.append_unit("runs", "b", [_run_row("y"), _run_row("z")])
    assert warehouse.done_keys("runs") == {"a", "b"}
    assert connect(warehouse).execute("SELECT count(*) FROM runs").fetchone()[0] == 3
    assert warehouse.read_table("runs").num_rows == 3


def test_staged_and_foreign_files_are_invisible_to_queries(tmp_path):
    warehouse = Warehouse(tmp_path / "wh")
    warehouse.ensure_writable()
    warehouse.append_unit("runs", "a", [_run_row("x")])
    table_dir = tmp_path / "wh" / "runs"
    (table_dir / ".part-b.parquet.0123.tmp").write_bytes(b"half a parquet file")  # a killed writer's leftover
    assert warehouse.done_keys("runs") == {"a"}
    assert connect(warehouse).execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    assert warehouse.read_table("runs").num_rows == 1


def test_empty_warehouse_has_every_view_with_its_columns(tmp_path):
    warehouse = Warehouse(tmp_path / "wh")
    connection = connect(warehouse)
    for table, schema in TABLES.items():
        result = connection.sql(f"SELECT * FROM {table}")
        assert result.columns == schema.names
        assert result.fetchall() == []


def test_arrays_are_content_addressed(tmp_path):
    warehouse = Warehouse(tmp_path / "wh")
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    uri, digest = warehouse.put_array(array)
    again, digest_again = warehouse.put_array(array.copy())
    assert (uri, digest) == (again, digest_again)
    assert warehouse.put_array(array + 1)[0] != uri
    np.testing.assert_array_equal(warehouse.load_array(uri), array)
    assert len(list((tmp_path / "wh" / "arrays").iterdir())) == 2


def test_file_uri_warehouse_reads_what_a_path_warehouse_wrote(tmp_path):
    Warehouse(tmp_path / "wh").append_unit("runs", "a", [_run_row("x")])
    by_uri = Warehouse(f"file://{tmp_path / 'wh'}")
    assert by_uri.done_keys("runs") == {"a"}
    assert connect(by_uri).sql("SELECT stage FROM runs").fetchall() == [("x",)]


def test_bad_warehouses_get_one_line_errors(tmp_path):
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    with pytest.raises(SurveyError, match="is a file, not a directory") as error:
        Warehouse(a_file)
    assert "\n" not in str(error.value)
    with pytest.raises(SurveyError, match="cannot be opened") as error:
        Warehouse("nosuchscheme://bucket/warehouse")
    assert "--warehouse" in str(error.value)
    with pytest.raises(SurveyError, match="not writable"):
        Warehouse(a_file / "below-a-file").ensure_writable()
