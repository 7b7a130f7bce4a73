"""A sixth shape metric, added as the registry says (one ShapeFamily subclass, here in this module, and one
`register` line), reaches the config, the distances stage, the catalog, a space and the search service."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch

from survey.catalog import Warehouse
from survey.catalog.distances import metric_filter
from survey.config import DistanceMetric, parse_config
from survey.metrics.configuration import METRIC_KINDS, MetricKind, register
from survey.metrics.shape import Prepared, ShapeFamily
from survey.runtime.survey import run_survey
from survey.search.space import SearchService


class MeanResponseMetric(ShapeFamily):
    """Toy metric: each representation's mean response over its units, per stimulus (centred over stimuli), up to
    a sign: ⟨a, b⟩ = |aᵀb|."""

    def prepare(self, x: torch.Tensor, name: str) -> Prepared:
        mean = x.mean(dim=1)
        mean = mean - mean.mean() if self.center else mean
        return Prepared(mean, float(torch.linalg.norm(mean)))

    def cross_pair(self, a: Prepared, b: Prepared) -> float:
        return abs(float(a.data @ b.data))

    def aligned(self, a: Prepared, b: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        return a.data, b.data * (1.0 if float(a.data @ b.data) >= 0 else -1.0)


def plain_distance(x: np.ndarray, y: np.ndarray) -> float:
    """The toy metric's angular distance, from its definition."""
    x, y = x.astype(np.float64), y.astype(np.float64)  # the engine works in float64
    a, b = x.mean(axis=1) - x.mean(), y.mean(axis=1) - y.mean()
    unit_a, unit_b = a / np.linalg.norm(a), np.sign(a @ b) * b / np.linalg.norm(b)
    return float(2 * np.arcsin(np.linalg.norm(unit_a - unit_b) / 2))  # the angle, without arccos's cancellation


@pytest.fixture
def mean_response() -> str:
    register(MetricKind("mean_response", f"{__name__}:MeanResponseMetric", alpha_range=None))
    yield "mean_response"
    del METRIC_KINDS["mean_response"]


def test_a_registered_metric_is_surveyed_stored_embedded_and_searched(mean_response, tiny_surveyed, tiny_dict,
                                                                       tmp_path):
    warehouse = Warehouse(shutil.copytree(tiny_surveyed.root, tmp_path / "wh"))
    metric = {"metric": mean_response}
    settings = copy.deepcopy(tiny_dict)
    settings["distances"]["metrics"] = [metric]
    settings["spaces"] = {"build": [{"metric": metric, "stimuli": "natural", "dim": 4}]}
    config = parse_config(settings)
    reports = run_survey(config, warehouse, stages=("distances", "spaces"), progress=False)
    assert [report.units_run > 0 for report in reports] == [True, True]

    natural = next(row["stimset_id"] for row in warehouse.rows("stimulus_sets") if row["name"] == "natural")
    reps = {row["rep_id"]: warehouse.load_array(row["array_uri"])
            for row in warehouse.rows("representations") if row["stimset_id"] == natural}
    stored = warehouse.dataset("shape_distances").to_table(
        filter=metric_filter(DistanceMetric(**metric), natural)).to_pylist()
    assert len(stored) == len(reps) * (len(reps) - 1) // 2
    for row in stored:
        assert row["distance"] == pytest.approx(plain_distance(reps[row["rep_a"]], reps[row["rep_b"]]), abs=1e-12)

    [space] = [row for row in warehouse.rows("spaces") if row["metric"] == mean_response]
    query = sorted(reps)[0]
    found = SearchService(warehouse).neighbors(query, k=3, space_id=space["space_id"])
    expected = sorted((plain_distance(reps[query], reps[other]), other) for other in reps if other != query)[:3]
    assert [(n.rep_id, n.exact) for n in found] == [(other, True) for _, other in expected]
    np.testing.assert_allclose([n.distance for n in found], [d for d, _ in expected], atol=1e-12)

