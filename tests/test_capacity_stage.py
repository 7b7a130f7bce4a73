"""The `capacity` stage: one capacity and one alignment row per representation of a manifold set."""

from __future__ import annotations

import numpy as np
import pytest

from survey.catalog import Warehouse, connect
from survey.config import parse_config
from survey.metrics.alignment import manifold_alignment
from survey.metrics.capacity import manifold_capacity
from survey.runtime.survey import run_survey
from survey.stages.capacity import split_manifolds

SURVEYED = ("stimuli", "networks", "sessions", "activations", "capacity")


@pytest.fixture(scope="module")
def surveyed(tmp_path_factory) -> Warehouse:
    from .conftest import TINY

    warehouse = Warehouse(tmp_path_factory.mktemp("capacity") / "wh")
    run_survey(parse_config(TINY), warehouse, stages=SURVEYED, progress=False)
    return warehouse


def test_one_row_per_representation_of_the_manifold_set(surveyed):
    connection = connect(surveyed)
    expected = connection.execute("""SELECT count(*) FROM representations r JOIN stimulus_sets s USING (stimset_id)
                                     WHERE s.name = 'natural'""").fetchone()[0]
    assert expected > 10
    for table in ("capacity", "alignment"):
        assert connection.execute(f"SELECT count(*), count(DISTINCT rep_id) FROM {table}").fetchone() == (
            expected, expected)
    statuses = dict(connection.execute("SELECT status, count(*) FROM capacity GROUP BY 1").fetchall())
    assert statuses == {"ok": expected}


def test_rows_equal_the_metrics_on_the_stored_arrays(surveyed):
    connection = connect(surveyed)
    uri, set_uri, capacity, radii, k, center = connection.execute("""
        SELECT r.array_uri, s.uri, c.capacity, c.radii, c.K, a.center_alignment
        FROM capacity c JOIN representations r USING (rep_id) JOIN stimulus_sets s ON s.stimset_id = r.stimset_id
        JOIN alignment a USING (rep_id) WHERE r.source_kind = 'session' ORDER BY rep_id LIMIT 1""").fetchone()
    manifolds = split_manifolds(surveyed.load_array(uri), surveyed.load_npz(set_uri)["labels"])
    result = manifold_capacity(manifolds, n_t=50, seed=0)
    assert capacity == pytest.approx(result.capacity, rel=1e-9)
    np.testing.assert_allclose(radii, result.radii, rtol=1e-9)
    assert k == result.K
    assert center == pytest.approx(manifold_alignment(manifolds).center_alignment, rel=1e-9)


def test_a_dead_representation_gets_null_estimates_and_a_reason(tmp_path, tiny_dict):
    warehouse = Warehouse(tmp_path / "wh")
    config = parse_config(tiny_dict)
    run_survey(config, warehouse, stages=SURVEYED[:-1], progress=False)
    natural = next(r["stimset_id"] for r in warehouse.rows("stimulus_sets") if r["name"] == "natural")
    row = next(r for r in warehouse.rows("representations")
               if r["source_kind"] == "network" and r["stimset_id"] == natural)
    uri, digest = warehouse.put_array(np.zeros((row["n_stimuli"], 6), np.float32))
    warehouse.append_unit("representations", "zz-dead", [{**row, "rep_id": "rep-dead", "array_uri": uri,
                                                         "content_hash": digest, "n_units": 6}])
    run_survey(config, warehouse, stages=("capacity",), progress=False)
    capacity, status, simulated_status = connect(warehouse).execute(
        "SELECT capacity, status, simulated_status FROM capacity WHERE rep_id = 'rep-dead'").fetchone()
    assert capacity is None
    assert status != "ok" and "\n" not in status
    assert simulated_status.startswith("not run")
    center, alignment_status = connect(warehouse).execute(
        "SELECT center_alignment, status FROM alignment WHERE rep_id = 'rep-dead'").fetchone()
    assert center is None and "center" in alignment_status and "\n" not in alignment_status
    # the other representations have alignments; their status may only carry decodability's reason (the tiny
    # natural set has a one-image class, fewer points than folds)
    assert connect(warehouse).execute("""SELECT bool_and(center_alignment IS NOT NULL AND status NOT LIKE '%center%')
                                         FROM alignment WHERE rep_id != 'rep-dead'""").fetchone()[0]
    ok = connect(warehouse).execute("SELECT count(*) FROM capacity WHERE status = 'ok'").fetchone()[0]
    assert ok == len(warehouse.rows("capacity")) - 1
