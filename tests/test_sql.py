"""`survey sql` and `survey search --where` are read-only by construction, and CSV holds every column type."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from survey.catalog import TABLES, Warehouse, query_catalog
from survey.errors import SurveyError

from .conftest import survey_cli


@pytest.fixture(scope="module")
def surveyed(tiny_surveyed) -> Warehouse:
    """The tiny survey, every table filled (an embedding space included, for `search --where`)."""
    return tiny_surveyed


def fingerprint(root: Path) -> dict[str, str]:
    """Every file under `root` with the sha256 of its bytes."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def probes(warehouse: Path, outside: Path) -> dict[str, str]:
    part = next((warehouse / "sessions").glob("*.parquet"))
    return {
        "copy_outside": f"COPY (SELECT 1 AS a) TO '{outside / 'out.csv'}'",
        "copy_over_a_part": f"COPY (SELECT * FROM sessions) TO '{part}' (FORMAT parquet)",
        "copy_partitioned_overwrite": f"COPY (SELECT 1 AS a) TO '{outside}' (FORMAT parquet, PARTITION_BY (a), "
                                      "OVERWRITE true)",
        "attach_and_create": f"ATTACH '{outside / 'x.db'}' AS x; CREATE TABLE x.t AS SELECT 1",
        "attach": f"ATTACH '{outside / 'y.db'}' AS y",
        "read_outside": "SELECT * FROM read_csv('/etc/passwd')",
        "read_a_part": f"SELECT * FROM read_parquet('{part}')",
        "file_as_table": f"SELECT * FROM '{part}'",
        "create": "CREATE TABLE t AS SELECT 1",
        "insert": "INSERT INTO sessions SELECT * FROM sessions",
        "delete": "DELETE FROM sessions",
        "set": "SET enable_external_access = true",
        "install": "INSTALL httpfs",
        "export": f"EXPORT DATABASE '{outside / 'db'}'",
        "pragma": "PRAGMA version",
        "stacked": f"SELECT 1; COPY (SELECT 1) TO '{outside / 'stacked.csv'}'",
    }


def test_every_write_or_file_probe_is_refused_and_changes_nothing(surveyed, tmp_path):
    root = Path(surveyed.root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("an unrelated file")
    before, before_outside = fingerprint(root), fingerprint(outside)
    for name, query in probes(root, outside).items():
        result = survey_cli("sql", query, "-w", surveyed.uri)
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (name, result.stderr)
        assert fingerprint(root) == before, name
        assert fingerprint(outside) == before_outside, name
    assert survey_cli("sql", "SELECT count(*) AS n FROM sessions", "-w", surveyed.uri, "--format", "csv").stdout \
        .splitlines() == ["\"n\"", "2"]


@pytest.mark.parametrize(("condition", "refused"), [
    ("r.layer_or_area = 'IT'", False),
    ("n.objective = 'supervised' AND r.depth > 0.5", False),
    ("1=1; COPY (SELECT 1) TO '/tmp/x.csv'", True),
    ("1=1) UNION (SELECT 'rep-x'", True),
    ("true GROUP BY r.rep_id HAVING count(*) > 0", True),
    ("r.rep_id IN (SELECT * FROM read_csv('/etc/passwd'))", True),
])
def test_search_where_is_one_read_only_condition(surveyed, condition, refused):
    from survey.search.space import SearchService

    rep = sorted(SearchService(surveyed).space().rep_ids)[0]
    result = survey_cli("search", rep, "-k", "3", "--where", condition, "-w", surveyed.uri)
    if refused:
        assert result.returncode == 2 and result.stderr.startswith("error: --where"), result.stderr
        assert result.stderr.count("\n") == 1
    else:
        assert result.returncode == 0, result.stderr


def test_csv_holds_list_and_struct_columns_of_every_table(surveyed, tmp_path):
    for table in TABLES:
        result = survey_cli("sql", f"SELECT * FROM {table}", "-w", surveyed.uri, "--format", "csv")
        assert result.returncode == 0, (table, result.stderr)
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        assert list(rows[0]) == TABLES[table].names if rows else result.stdout.strip()
        for field in TABLES[table]:
            if pa.types.is_nested(field.type):
                for row in rows:
                    assert row[field.name] == "" or isinstance(json.loads(row[field.name]), list)
    nested = survey_cli("sql", "SELECT {'a': 1, 'b': [1, 2]} AS s, [[1], [2, 3]] AS l", "-w", surveyed.uri,
                        "--format", "csv")
    assert nested.returncode == 0, nested.stderr
    row = next(csv.DictReader(io.StringIO(nested.stdout)))
    assert json.loads(row["s"]) == {"a": 1, "b": [1, 2]} and json.loads(row["l"]) == [[1], [2, 3]]


FRAGMENTS = ["SELECT", "WITH", "COPY", "ATTACH", "INSERT", "INTO", "CREATE", "TABLE", "DROP", "DELETE", "FROM",
             "sessions", "runs", "read_csv('/etc/passwd')", "read_parquet('x.parquet')", "'out.csv'", "TO", "(", ")",
             "1", "*", ";", "AS", "x", "SET", "PRAGMA", "INSTALL", "httpfs", "EXPLAIN", "DESCRIBE", "SUMMARIZE",
             "UNION", "VALUES", "CALL", "EXPORT", "DATABASE", "LOAD", "WHERE", "count(*)", "=", ","]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=9))
def test_generated_sql_succeeds_only_as_one_select(surveyed, words):
    query = " ".join(words)
    before = fingerprint(Path(surveyed.root))
    try:
        query_catalog(surveyed, query)
    except SurveyError as err:
        assert "\n" not in str(err)
        return
    finally:
        assert fingerprint(Path(surveyed.root)) == before, query
    statements = duckdb.extract_statements(query)
    assert len(statements) == 1
    assert statements[0].type in (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN), query
