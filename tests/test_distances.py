"""The `distances` stage: all pairs per stimulus set and metric, tiled, resumable, equal to `pairwise`."""

from __future__ import annotations

import numpy as np
import pytest

from survey.catalog import Warehouse, connect
from survey.config import parse_config
from survey.errors import SurveyError
from survey.metrics.shape import pairwise
from survey.runtime.survey import run_survey

from .conftest import survey_cli


def _rows(warehouse: Warehouse, query: str) -> list[tuple]:
    return connect(warehouse).execute(query).fetchall()


@pytest.fixture(scope="module")
def surveyed(tmp_path_factory) -> Warehouse:
    from .conftest import TINY

    warehouse = Warehouse(tmp_path_factory.mktemp("distances") / "wh")
    run_survey(parse_config(TINY), warehouse, progress=False)
    return warehouse


ELIGIBLE = {"stochastic": "repeats_uri IS NOT NULL", "conv": "spatial_uri IS NOT NULL"}


def test_every_metric_holds_exactly_one_row_per_unordered_pair(surveyed):
    configs = _rows(surveyed, """
        SELECT metric, alpha, score_method, stimset_id, count(*), count(DISTINCT (rep_a, rep_b)),
               bool_and(rep_a < rep_b) FROM shape_distances GROUP BY ALL""")
    assert {row[0] for row in configs} == {"linear", "permutation", "stochastic", "conv"}
    for metric, _, _, stimset_id, rows, distinct, ordered in configs:
        n = _rows(surveyed, f"""SELECT count(*) FROM representations WHERE stimset_id = '{stimset_id}'
                                AND {ELIGIBLE.get(metric, 'true')}""")[0][0]
        assert n >= 6
        assert rows == distinct == n * (n - 1) // 2
        assert ordered


def test_stage_distances_equal_pairwise_on_the_stored_arrays(surveyed):
    reps = _rows(surveyed, """SELECT rep_id, array_uri FROM representations WHERE stimset_id IN
                              (SELECT stimset_id FROM stimulus_sets WHERE name = 'natural') ORDER BY rep_id""")
    expected = pairwise([surveyed.load_array(uri) for _, uri in reps], "linear", alpha=0.5)
    index = {rep_id: i for i, (rep_id, _) in enumerate(reps)}
    stored = _rows(surveyed, "SELECT rep_a, rep_b, distance FROM shape_distances WHERE metric = 'linear'")
    got = np.array([distance for _, _, distance in stored])
    want = np.array([expected[index[a], index[b]] for a, b, _ in stored])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_deleted_tiles_are_recomputed_and_nothing_else(tmp_path, tiny_dict):
    warehouse = Warehouse(tmp_path / "wh")
    config = parse_config(tiny_dict)
    run_survey(config, warehouse, progress=False)
    before = sorted(_rows(warehouse, "SELECT rep_a, rep_b, metric, round(distance, 12) FROM shape_distances"))
    parts = sorted((tmp_path / "wh" / "shape_distances").rglob("part-*.parquet"))
    assert len(parts) > 10  # tiles of 5 a side
    for part in parts[::3]:
        part.unlink()
    report = run_survey(config, warehouse, stages=("distances",), progress=False)[0]
    assert report.units_run == len(parts[::3])
    assert sorted(_rows(warehouse, "SELECT rep_a, rep_b, metric, round(distance, 12) FROM shape_distances")) == before


def test_non_finite_representation_is_named_and_its_tiles_are_not_written(tmp_path, tiny_dict):
    warehouse = Warehouse(tmp_path / "wh")
    tiny_dict["distances"] = {"stimuli": ["natural"], "tile_size": 50, "metrics": [{"metric": "linear"}]}
    config = parse_config(tiny_dict)
    run_survey(config, warehouse, stages=("stimuli", "networks", "sessions", "activations"), progress=False)
    natural = next(r["stimset_id"] for r in warehouse.rows("stimulus_sets") if r["name"] == "natural")
    row = next(r for r in warehouse.rows("representations") if r["stimset_id"] == natural)
    broken = warehouse.load_array(row["array_uri"]).copy()
    broken[3, 0] = np.nan
    uri, digest = warehouse.put_array(broken)
    warehouse.append_unit("representations", "zz-broken", [{**row, "rep_id": "rep-broken", "array_uri": uri,
                                                           "content_hash": digest}])
    with pytest.raises(SurveyError, match="representation rep-broken has 1 non-finite values") as err:
        run_survey(config, warehouse, stages=("distances",), progress=False)
    assert "\n" not in str(err.value)
    assert not warehouse.done_keys("shape_distances")
    assert _rows(warehouse, "SELECT count(*) FROM shape_distances") == [(0,)]


def test_cli_distances_runs_over_an_existing_catalog(surveyed):
    result = survey_cli("distances", "-m", "cka:euclidean", "--stimset", "natural", "-w", surveyed.uri,
                        "--executor", "local")
    assert result.returncode == 0, result.stderr
    rows = _rows(surveyed, "SELECT count(*), min(distance), max(distance) FROM shape_distances WHERE metric = 'cka'")
    n = _rows(surveyed, """SELECT count(*) FROM representations WHERE stimset_id IN
                           (SELECT stimset_id FROM stimulus_sets WHERE name = 'natural')""")[0][0]
    assert rows[0][0] == n * (n - 1) // 2
    assert 0 < rows[0][1] <= rows[0][2] <= 2 ** 0.5  # chordal distance between unit-norm Gram matrices
    bad = survey_cli("distances", "-m", "permutation:0.5", "-w", surveyed.uri)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: --metric: Value error, the permutation metric has no alpha; leave alpha at 1"
