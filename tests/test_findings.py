"""The seed papers' findings: each statistic against an analytic case or a plain implementation, and the checks run
end to end on a tiny survey's catalogs (and on catalogs that lack a table)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold, cross_val_predict

from survey.catalog import Warehouse, connect
from survey.errors import NotApplicable
from survey.report.findings import (
    CHECKS,
    KUOCH,
    RIDGE_PENALTIES,
    WILLIAMS,
    Finding,
    chance_rate,
    closest_distance,
    cross_validated_r2,
    depth_trend,
    findings,
    group_means,
    increasing,
    nearest_neighbour_accuracy,
    permutation_p_value,
    signature_drift,
    spearman,
    zscore,
)

# ---- statistics ---------------------------------------------------------------------------------------------------


def test_r2_is_one_for_an_exactly_linear_target_and_not_positive_for_noise():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4))
    assert cross_validated_r2(x, x @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.7) == pytest.approx(1.0, abs=1e-4)
    assert cross_validated_r2(x, rng.standard_normal(60)) < 0.05


def test_r2_pools_held_out_predictions_as_sklearn_does():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 3))
    y = x[:, 0] + rng.standard_normal(30)
    plain = r2_score(y, cross_val_predict(RidgeCV(alphas=RIDGE_PENALTIES), x, y,
                                          cv=KFold(5, shuffle=True, random_state=3)))
    assert cross_validated_r2(x, y, folds=5, seed=3) == pytest.approx(plain, abs=1e-12)


def test_r2_needs_a_sample_per_fold_and_a_varying_target():
    with pytest.raises(NotApplicable, match="needs ≥ 5"):
        cross_validated_r2(np.zeros((4, 2)), np.arange(4.0))
    with pytest.raises(NotApplicable, match="constant"):
        cross_validated_r2(np.arange(12.0).reshape(6, 2), np.ones(6))


def test_nearest_neighbour_accuracy_separated_clusters_and_a_plain_loop():
    rng = np.random.default_rng(2)
    clusters = np.concatenate([rng.standard_normal((10, 3)), 50 + rng.standard_normal((10, 3))])
    labels = np.array(["a"] * 10 + ["b"] * 10)
    assert nearest_neighbour_accuracy(clusters, labels) == 1.0
    assert 1 / 200 <= permutation_p_value(clusters, labels, permutations=199) < 0.05
    assert permutation_p_value(clusters, np.array(["a"] * 20), permutations=9) == 1.0  # every shuffle ties

    x, random_labels = rng.standard_normal((25, 4)), rng.integers(0, 3, 25)
    hits = 0
    for i in range(25):
        others = [j for j in range(25) if j != i]
        nearest = min(others, key=lambda j: np.linalg.norm(x[i] - x[j]))
        hits += random_labels[nearest] == random_labels[i]
    assert nearest_neighbour_accuracy(x, random_labels) == hits / 25
    assert 0.05 < permutation_p_value(x, random_labels, permutations=199) <= 1.0


def test_chance_is_the_majority_share():
    assert chance_rate(np.array(["x", "x", "y"])) == pytest.approx(2 / 3)


def test_spearman_monotone_ties_and_constant():
    assert spearman([0, 1, 2, 3], [1, 5, 9, 100]) == pytest.approx(1.0)
    assert spearman([0, 1, 2, 3], [3, 2, 1, 0]) == pytest.approx(-1.0)
    x, y = [0, 1, 1, 2, 3, 5], [2, 2, 1, 4, 3, 3]
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert math.isnan(spearman([0, 1, 2], [1, 1, 1]))
    assert math.isnan(spearman([0], [1]))


def test_depth_trend_is_the_median_over_groups_with_a_rho():
    depth = np.array([0, 0.5, 1, 0, 0.5, 1, 0, 0.5, 1, 0])
    value = np.array([1, 2, 3, 3, 2, 1, 1, 3, 2, 4])  # rho +1, −1, 0.5; the last group has one point
    groups = np.array(list("aaabbbcccd"))
    rho, n = depth_trend(depth, value, groups)
    assert rho == pytest.approx(0.5) and n == 3
    with pytest.raises(NotApplicable):
        depth_trend(np.array([0.0, 1.0]), np.array([2.0, 2.0]), np.array(["a", "a"]))


def test_profile_helpers():
    keys, means = group_means(np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 10.0], [np.nan, 0.0]]),
                              np.array(["V4", "V4", "IT", "V4"]))
    assert keys == [("IT",), ("V4",)]
    np.testing.assert_allclose(means, [[10, 10], [2, 3]])  # the row holding NaN is left out
    keys, means = group_means(np.array([1.0, 2.0, 4.0, np.nan, 8.0]), np.array(["a", "a", "a", "b", "b"]),
                              np.array([0, 1, 1, 0, 0]))
    assert keys == [("a", 0), ("a", 1), ("b", 0)]
    np.testing.assert_allclose(means, [1.0, 3.0, 8.0])
    z = zscore(np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]]))
    np.testing.assert_allclose(z[:, 0], [-math.sqrt(1.5), 0, math.sqrt(1.5)])
    np.testing.assert_allclose(z[:, 1], 0)
    assert closest_distance(np.array([[3.0, 4.0], [10.0, 0.0]]), np.zeros(2)) == 5.0


def test_signature_drift_and_increasing():
    np.testing.assert_allclose(signature_drift(np.array([[1, 0, 2], [1, 1, 2], [0, 3, 0]])), [0, 1, 6])
    assert increasing([0.1, 0.2, 0.5]) and not increasing([0.1, 0.1, 0.5]) and not increasing([2, 1])


# ---- end to end on a tiny survey ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_warehouse(tiny_surveyed) -> Warehouse:
    return tiny_surveyed


def test_findings_on_a_tiny_survey(tiny_warehouse):
    connection = connect(tiny_warehouse)
    results = findings(connection)
    assert len(results) == len(CHECKS)
    for finding in results:
        assert isinstance(finding, Finding) and finding.paper and finding.claim and finding.statistic
        if finding.holds is None:
            assert finding.value is None and finding.note
        else:
            assert isinstance(finding.holds, bool) and math.isfinite(finding.value)
        connection.execute(finding.sql).fetchall()  # the query the statistic came from runs as shown
    by_claim = {(f.paper, f.claim): f for f in results}
    # the tiny zoo holds 2 supervised and 2 untrained networks: too few for a 5-fold R², and no contrastive ones
    accuracy = by_claim[WILLIAMS, "shape-metric embedding coordinates predict a network's test accuracy"]
    assert accuracy.holds is None and "needs ≥ 5" in accuracy.note
    resemblance = next(f for f in results if f.paper == KUOCH and "contrastive" in f.claim)
    assert resemblance.holds is None and "no contrastive network" in resemblance.note
    assert sum(f.holds is not None for f in results) == len(CHECKS) - 2


def test_findings_without_capacity_or_any_table(tiny_warehouse, tmp_path):
    shutil.copytree(tiny_warehouse.root, tmp_path / "wh", ignore=shutil.ignore_patterns("capacity", "alignment"))
    results = findings(connect(Warehouse(str(tmp_path / "wh"))))
    capacity = [f for f in results if f.sql == CHECKS[2].sql]
    assert len(capacity) == 6 and all(f.holds is None and f.value is None for f in capacity)
    assert [f.note for f in capacity] == ["table capacity is empty"] * 5 + ["tables capacity, alignment are empty"]
    assert any(f.holds is not None for f in results)  # the other tables still answer

    empty = findings(connect(Warehouse(str(tmp_path / "nothing"))))
    assert [f.holds for f in empty] == [None] * len(CHECKS)
    assert all(f.note.startswith(("table ", "tables ")) and f.note.endswith("empty") for f in empty)
