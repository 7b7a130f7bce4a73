"""The `predictivity` stage: layers × recorded areas, the best layer one SQL query away, stored readouts that
reproduce the fit, and reasons instead of failures where a score cannot be made."""

import numpy as np
import pytest

from survey.catalog import Warehouse, connect
from survey.catalog.models import load_readout
from survey.catalog.synthetic import write_representations
from survey.config import parse_config
from survey.metrics.predictivity import (
    cross_validated_predictions,
    fit_readout,
    neural_predictivity,
    pearson_columns,
)
from survey.runtime.survey import run_survey
from survey.sources.families import Synthetic
from survey.stages import RunInfo

BEST_LAYER = """
    SELECT network_id, session_id, area, arg_max(layer, median_corrected) AS best_layer,
           max(median_corrected) AS score
    FROM predictivity WHERE status = 'ok' GROUP BY ALL ORDER BY ALL"""


def config(**predictivity: object):
    return parse_config({"name": "pred", "predictivity": predictivity, "stages": ["predictivity"]})


def add_session(warehouse: Warehouse, stimset_id: str, repeats: np.ndarray, area: str, session: str) -> str:
    uri, digest = warehouse.put_array(repeats.mean(axis=1).astype(np.float32))
    repeats_uri, _ = warehouse.put_array(repeats.astype(np.float32))
    rep_id = f"rep-{session}-{area}"
    warehouse.append_unit("representations", rep_id, [{
        "rep_id": rep_id, "source_kind": "session", "source_id": session, "source_name": session,
        "layer_or_area": area, "layer_index": 0, "depth": 0.0, "stimset_id": stimset_id,
        "n_stimuli": repeats.shape[0], "n_units": repeats.shape[2], "array_uri": uri, "spatial_uri": None,
        "repeats_uri": repeats_uri, "n_repeats": repeats.shape[1], "preprocessing": "{}", "content_hash": digest,
        **RunInfo("test").provenance()}])
    return rep_id


@pytest.fixture(scope="module")
def surveyed(tmp_path_factory):
    """One network of three layers (independent noise, the truth X, a nonlinear mix of X) and a session whose IT
    neurons are a known linear map of X plus trial noise, on 400 stimuli."""
    warehouse = Warehouse(tmp_path_factory.mktemp("pred") / "wh")
    rng = np.random.default_rng(0)
    n, width = 400, 12
    truth_layer = rng.standard_normal((n, width))
    layers = [rng.standard_normal((n, width)), truth_layer, np.tanh(2 * truth_layer @ rng.standard_normal((width, 20)))]
    synthetic = Synthetic(n_families=1, n_stimuli=n, units=width, seed=0)
    arrays = write_representations(warehouse, synthetic, [(layer.astype(np.float32), {"family": "net", "level": i / 2})
                                                          for i, layer in enumerate(layers)], RunInfo("test"))
    stimset_id = warehouse.rows("stimulus_sets")[0]["stimset_id"]
    clean = truth_layer.astype(np.float32).astype(np.float64) @ rng.standard_normal((width, 8))
    repeats = clean[:, None, :] + rng.standard_normal((n, 4, 8)) * 1.2 * clean.std(axis=0)
    add_session(warehouse, stimset_id, repeats, "IT", "ses-a")
    v4 = layers[0].astype(np.float32).astype(np.float64) @ rng.standard_normal((width, 5))
    add_session(warehouse, stimset_id, v4[:, None, :] + rng.standard_normal((n, 4, 5)) * v4.std(axis=0), "V4", "ses-a")
    report = run_survey(config(), warehouse, progress=False)[0]
    return warehouse, arrays, clean, repeats, report


def test_the_layer_the_neurons_read_is_best_and_its_corrected_score_is_the_truth(surveyed):
    warehouse, arrays, clean, repeats, report = surveyed
    assert report.units_run == 1 and report.rows["predictivity"] == 3 * 2
    rows = connect(warehouse).execute(BEST_LAYER).fetchall()
    assert [(network, area, layer) for network, _, area, layer, _ in rows] == [("net", "IT", "member001"),
                                                                               ("net", "V4", "member000")]
    features = arrays[next(r["rep_id"] for r in warehouse.rows("representations") if r["layer_or_area"] == "member001")]
    truth = np.median(pearson_columns(cross_validated_predictions(features.astype(np.float64), repeats.mean(axis=1)),
                                      clean))
    assert rows[0][4] == pytest.approx(truth, abs=0.05)
    median_r, = connect(warehouse).execute(
        "SELECT median_r FROM predictivity WHERE layer = 'member001' AND area = 'IT'").fetchone()
    assert median_r < truth - 0.05  # the trial noise is large enough for the correction to matter


def test_a_sessions_areas_fitted_side_by_side_equal_one_fit_per_area(surveyed):
    warehouse, arrays, _, _, _ = surveyed
    reps = {r["rep_id"]: r for r in warehouse.rows("representations")}
    for row in warehouse.rows("predictivity"):
        alone = neural_predictivity(arrays[row["network_rep_id"]].astype(np.float64),
                                    warehouse.load_array(reps[row["session_rep_id"]]["repeats_uri"]),
                                    row["n_folds"], row["seed"])
        np.testing.assert_allclose(row["r"], alone.r, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(row["reliability"], alone.reliability, rtol=1e-10, atol=1e-12)
        assert row["median_corrected"] == pytest.approx(alone.median, rel=1e-10)


def test_the_stored_readout_is_the_fit_on_every_stimulus(surveyed):
    warehouse, arrays, _, repeats, _ = surveyed
    row = next(r for r in warehouse.rows("predictivity") if r["layer"] == "member002" and r["area"] == "IT")
    features = arrays[row["network_rep_id"]].astype(np.float64)
    stored = load_readout(warehouse, row["readout_uri"])
    expected = fit_readout(features, repeats.astype(np.float32).astype(np.float64).mean(axis=1))
    np.testing.assert_allclose(stored.weights, expected.weights, rtol=1e-10, atol=1e-12)
    assert len(row["r"]) == len(row["corrected"]) == len(row["reliability"]) == row["n_neurons"] == 8


def test_a_second_run_adds_nothing_and_a_new_session_only_its_own_unit(surveyed, tmp_path):
    warehouse, _, _, repeats, _ = surveyed
    assert run_survey(config(), warehouse, progress=False)[0].units_run == 0
    stimset_id = warehouse.rows("stimulus_sets")[0]["stimset_id"]
    add_session(warehouse, stimset_id, repeats[:, :1], "V4", "ses-one-repeat")
    report = run_survey(config(), warehouse, progress=False)[0]
    assert report.units_run == 1
    statuses = {r["status"] for r in warehouse.rows("predictivity") if r["session_id"] == "ses-one-repeat"}
    assert len(statuses) == 1 and "at least 2" in statuses.pop()
    count, distinct = connect(warehouse).execute(
        "SELECT count(*), count(DISTINCT (network_rep_id, session_rep_id)) FROM predictivity").fetchone()
    assert count == distinct == 3 * 3
