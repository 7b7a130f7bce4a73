"""Warehouse and DuckDB views: atomic parts, content-addressed arrays, clear errors for bad warehouses."""

from __future__ import annotations

import subprocess
import sys
import time

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


def test_a_unit_committed_while_its_table_is_being_created_lands_once(tmp_path, monkeypatch):
    """Writer B saw no table yet; writer A then created it with the same unit. B must find A's commit, not append
    the unit a second time (two concurrent first runs of a survey used to leave a duplicate row)."""
    warehouse = Warehouse(tmp_path / "wh")
    warehouse.ensure_writable()
    original = Warehouse.delta
    stale = {"runs": 1}  # B's first look: before A's commit

    def delta(self, table):
        if stale.get(table):
            stale[table] = 0
            self.append_unit(table, "a", [_run_row("by A")])  # A creates the table with unit a meanwhile
            return None  # what B saw before
        return original(self, table)

    monkeypatch.setattr(Warehouse, "delta", delta)
    assert warehouse.append_unit("runs", "a", [_run_row("by B")]) == 0
    monkeypatch.setattr(Warehouse, "delta", original)
    assert [row["stage"] for row in warehouse.rows("runs")] == ["by A"]


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


# ---- compaction ------------------------------------------------------------------------------------------------

QUERY = "SELECT stage, count(*), min(unit_key), max(unit_key) FROM runs GROUP BY 1 ORDER BY 1"


def _many_units(warehouse: Warehouse, n: int) -> None:
    for i in range(n):
        warehouse.append_unit("runs", f"unit-{i:04d}", [_run_row(f"stage{i % 3}")] * (1 + i % 2))


def _files(warehouse: Warehouse, table: str) -> int:
    return len(warehouse.delta(table).file_uris())


def test_compaction_changes_no_answer_and_a_query_running_through_it_keeps_its_files(tmp_path):
    warehouse = Warehouse(tmp_path / "wh")
    _many_units(warehouse, 60)
    assert _files(warehouse, "runs") == 60 and warehouse.mergeable_files("runs", 1 << 20) == 59
    running = connect(warehouse, ["runs"])  # bound to the snapshot before compaction
    before = running.execute(QUERY).fetchall()
    keys = warehouse.done_keys("runs")
    assert warehouse.compact("runs", vacuum_hours=1)["files_removed"] == 60
    assert _files(warehouse, "runs") == 1 and warehouse.mergeable_files("runs", 1 << 20) == 0
    assert running.execute(QUERY).fetchall() == before  # superseded files stay for an hour
    assert connect(warehouse, ["runs"]).execute(QUERY).fetchall() == before
    assert warehouse.done_keys("runs") == keys  # read from the compacted file's unit_key column
    assert warehouse.append_unit("runs", "unit-0007", [_run_row("again")]) == 0  # still committed
    assert warehouse.compact("runs", vacuum_hours=0)["files_vacuumed"] == 60
    assert connect(warehouse, ["runs"]).execute(QUERY).fetchall() == before


def _compaction_process(warehouse: Warehouse) -> subprocess.Popen:
    """`survey compact` in a fresh process that says "ready" on stdout just before it starts compacting."""
    code = ("import sys; from survey.catalog import Warehouse; w = Warehouse(sys.argv[1]); print('ready', flush=True);"
            " w.compact('runs', 0)")
    return subprocess.Popen([sys.executable, "-c", code, warehouse.uri], stdout=subprocess.PIPE, text=True)


def test_queries_during_compaction_agree_and_a_kill_at_any_moment_loses_nothing(tmp_path):
    warehouse = Warehouse(tmp_path / "wh")
    _many_units(warehouse, 150)
    expected, keys = connect(warehouse, ["runs"]).execute(QUERY).fetchall(), warehouse.done_keys("runs")
    for delay in (0.0, 0.05, 0.1, 0.2, 0.4, 0.8):
        process = _compaction_process(warehouse)
        assert process.stdout.readline().strip() == "ready"
        time.sleep(delay)
        process.kill()
        process.wait()
        assert connect(warehouse, ["runs"]).execute(QUERY).fetchall() == expected
        assert warehouse.done_keys("runs") == keys
    compacting = _compaction_process(warehouse)
    answers = []
    while compacting.poll() is None:
        answers.append(connect(warehouse, ["runs"]).execute(QUERY).fetchall())
    assert compacting.returncode == 0 and answers and all(answer == expected for answer in answers)
    assert _files(warehouse, "runs") == 1 and warehouse.done_keys("runs") == keys


def test_an_old_layout_warehouse_is_refused_in_one_line_then_migrated_in_place(tmp_path):
    """Pre-Delta warehouses held `<table>/part-<unit key>.parquet` (hive folders for metric=, no unit_key column);
    `survey migrate` keeps their rows and keys, and drops the tables whose units are keyed otherwise now."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .conftest import survey_cli

    root = tmp_path / "old"
    (root / "runs").mkdir(parents=True)
    (root / "shape_distances" / "metric=linear").mkdir(parents=True)
    old_runs = pa.Table.from_pylist([_run_row("x")], schema=TABLES["runs"].remove(TABLES["runs"].get_field_index(
        "unit_key")))
    pq.write_table(old_runs, root / "runs" / "part-run1-stimuli.parquet")
    distance = {"rep_a": "rep-a", "rep_b": "rep-b", "stimset_id": "s", "alpha": 1.0, "score_method": "angular",
                "center": True, "distance": 0.5, "run_id": "r", "code_version": "0"}
    pq.write_table(pa.Table.from_pylist([distance]), root / "shape_distances" / "metric=linear" / "part-t1.parquet")
    with pytest.raises(SurveyError, match="survey migrate") as error:
        Warehouse(root).rows("runs")
    assert "\n" not in str(error.value)
    assert survey_cli("sql", "SELECT * FROM runs", "-w", str(root)).returncode == 2

    result = survey_cli("migrate", "-w", str(root))
    assert result.returncode == 0, result.stderr
    warehouse = Warehouse(root)
    assert [(row["stage"], row["unit_key"]) for row in warehouse.rows("runs")] == [("x", "run1-stimuli")]
    assert warehouse.done_keys("runs") == {"run1-stimuli"}
    assert warehouse.append_unit("runs", "run1-stimuli", [_run_row("again")]) == 0
    assert warehouse.rows("shape_distances") == []  # recomputed by the distances stage
    assert not list(root.rglob("part-run1-stimuli.parquet"))
