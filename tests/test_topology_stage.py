"""The `topology` stage: one row per unit and neuron of every tuning-grid representation, equal to the math."""

from __future__ import annotations

import math

import numpy as np
import pytest

from survey.catalog import Warehouse, connect
from survey.config import parse_config
from survey.metrics.topology import signature, smooth_to_noise
from survey.runtime.survey import run_survey
from survey.stages.topology import tuning_maps


@pytest.fixture(scope="module")
def surveyed(tmp_path_factory) -> Warehouse:
    from .conftest import TINY

    warehouse = Warehouse(tmp_path_factory.mktemp("topology") / "wh")
    run_survey(parse_config({**TINY, "distances": None, "spaces": None}), warehouse, progress=False)
    return warehouse


def test_one_row_per_unit_of_every_grid_representation(surveyed):
    connection = connect(surveyed)
    expected = connection.execute("""
        SELECT sum(CASE WHEN r.spatial_uri IS NULL THEN r.n_units ELSE 0 END), count(*) FROM representations r
        JOIN stimulus_sets s USING (stimset_id) WHERE s.kind = 'tuning_grid'""").fetchone()
    conv_channels = [
        surveyed.load_array(uri).shape[1] for (uri,) in connection.execute("""
            SELECT spatial_uri FROM representations JOIN stimulus_sets s USING (stimset_id)
            WHERE s.kind = 'tuning_grid' AND spatial_uri IS NOT NULL""").fetchall()
    ]
    rows, reps, duplicates = connection.execute(
        "SELECT count(*), count(DISTINCT rep_id), count(*) - count(DISTINCT (rep_id, unit)) FROM topology").fetchone()
    assert rows == expected[0] + sum(conv_channels)
    assert reps == expected[1]
    assert duplicates == 0
    lengths = connection.execute("SELECT DISTINCT len(n_loop), len(isotropy), n_levels FROM topology").fetchall()
    assert lengths == [(11, 11, 11)]


def test_network_rows_equal_the_signature_of_the_stored_map(surveyed):
    connection = connect(surveyed)
    rep_id, spatial_uri, n_images = connection.execute("""
        SELECT rep_id, spatial_uri, s.n_images FROM representations r JOIN stimulus_sets s USING (stimset_id)
        WHERE s.kind = 'tuning_grid' AND r.source_kind = 'network' AND spatial_uri IS NOT NULL
        ORDER BY rep_id LIMIT 1""").fetchone()
    spatial = surveyed.load_array(spatial_uri)
    centre = spatial[:, :, spatial.shape[2] // 2, spatial.shape[3] // 2].astype(np.float64)
    expected = signature(tuning_maps(centre, math.isqrt(n_images)), 11)
    stored = connection.execute(f"SELECT unit, n_loop, n_line, betti0 FROM topology WHERE rep_id = '{rep_id}' "
                                "ORDER BY unit").fetchall()
    assert [list(row[1]) for row in stored] == expected.n_loop.tolist()
    assert [list(row[2]) for row in stored] == expected.n_line.tolist()
    assert [list(row[3]) for row in stored] == expected.betti0.tolist()


def test_recorded_neurons_are_smoothed_at_their_noise_level_and_get_a_reliability(surveyed):
    connection = connect(surveyed)
    rep_id, uri, repeats_uri, n_images = connection.execute("""
        SELECT rep_id, array_uri, repeats_uri, s.n_images FROM representations r JOIN stimulus_sets s USING (stimset_id)
        WHERE s.kind = 'tuning_grid' AND r.source_kind = 'session' ORDER BY rep_id LIMIT 1""").fetchone()
    side = math.isqrt(n_images)
    repeats = surveyed.load_array(repeats_uri).astype(np.float64)
    trials = np.stack([tuning_maps(repeats[:, r], side) for r in range(repeats.shape[1])], axis=1)
    sem = trials.std(axis=1, ddof=1) / np.sqrt(trials.shape[1])
    expected = signature(smooth_to_noise(tuning_maps(surveyed.load_array(uri).astype(np.float64), side), sem), 11)
    stored = connection.execute(f"""SELECT n_loop, n_line, smoothing_sigma, reliability_agreement FROM topology
                                    WHERE rep_id = '{rep_id}' ORDER BY unit""").fetchall()
    assert [list(row[0]) for row in stored] == expected.n_loop.tolist()
    assert [list(row[1]) for row in stored] == expected.n_line.tolist()
    assert all(row[2] is not None and 0 <= row[2] <= 3 for row in stored)
    assert all(0 <= row[3] <= 1 for row in stored)
    networks = connection.execute(
        "SELECT count(*) FROM topology WHERE source_kind = 'network' AND reliability_agreement IS NOT NULL").fetchone()
    assert networks == (0,)
