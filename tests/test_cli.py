"""`survey sql` output formats and `survey layers`, through the command line users run."""

from __future__ import annotations

import csv
import io
import json

import pyarrow.parquet as pq
import pytest

from survey.catalog import Warehouse
from survey.config import parse_config
from survey.runtime.survey import run_survey

from .conftest import TINY, survey_cli

QUERY = "SELECT name, kind, n_images FROM stimulus_sets ORDER BY name"


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("cli") / "wh"
    run_survey(parse_config({**TINY, "stages": ["stimuli"]}), Warehouse(root), progress=False)
    return str(root)


def test_sql_formats_agree(warehouse, tmp_path):
    expected = [{"name": "grid", "kind": "tuning_grid", "n_images": 25},
                {"name": "natural", "kind": "natural", "n_images": 24}]
    as_json = survey_cli("sql", QUERY, "-w", warehouse, "--format", "json")
    assert json.loads(as_json.stdout) == expected
    as_csv = survey_cli("sql", QUERY, "-w", warehouse, "--format", "csv")
    assert [{**row, "n_images": int(row["n_images"])} for row in csv.DictReader(io.StringIO(as_csv.stdout))] == expected
    target = tmp_path / "out.parquet"
    assert survey_cli("sql", QUERY, "-w", warehouse, "--format", "parquet", "-o", str(target)).returncode == 0
    assert pq.read_table(target).to_pylist() == expected
    table = survey_cli("sql", QUERY, "-w", warehouse)
    assert "tuning_grid" in table.stdout and table.returncode == 0


def test_sql_errors_are_one_line(warehouse):
    result = survey_cli("sql", "SELECT nope FROM stimulus_sets", "-w", warehouse)
    assert result.returncode == 2 and result.stderr.startswith("error: query failed")
    assert result.stderr.strip().count("\n") == 0
    missing = survey_cli("sql", "SELECT 1", "-w", warehouse + "-missing")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_layers_of_a_user_network():
    result = survey_cli("layers", "tests.nets:small_cnn", "--kind", "callable")
    assert result.stdout.split() == ["0", "1", "2", "3", "4"]


def test_zoo_build_and_sessions_synth_commands(tmp_path):
    warehouse = str(tmp_path / "wh")
    zoo = survey_cli("zoo", "build", "--n", "1", "--steps", "4", "-w", warehouse)
    assert zoo.returncode == 0, zoo.stderr
    synth = survey_cli("sessions", "synth", "--n", "1", "-w", warehouse)
    assert synth.returncode == 0, synth.stderr
    counts = survey_cli("sql", "SELECT (SELECT count(*) FROM networks) || ',' || (SELECT count(*) FROM sessions) "
                        "|| ',' || (SELECT count(DISTINCT layer_or_area) FROM representations)",
                        "-w", warehouse, "--format", "json")
    assert list(json.loads(counts.stdout)[0].values()) == ["3,1,3"]  # 1 architecture × 3 objectives; V1, V4, IT
