"""Search recall@10 against exact brute-force metric search on families of synthetic representations.

A small version of `benchmarks/search_recall.py` (same generator): 300 representations in 20 families go through
the real `distances` and `spaces` stages; stored and out-of-sample queries must find ≥ 95% of their exact
top 10 after the exact rerank, reranked results carry the metric's own distances, embedded ones say so.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from survey.catalog import Warehouse
from survey.catalog.synthetic import write_representations
from survey.config import DistancesConfig, SurveyConfig
from survey.metrics.shape import ShapeMetric
from survey.runtime.survey import run_survey
from survey.search.space import SearchService
from survey.sources.families import Synthetic
from survey.stages import RunInfo

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "search_recall.py"
_SPEC = importlib.util.spec_from_file_location("search_recall_benchmark", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench  # dataclasses look their module up by name
_SPEC.loader.exec_module(bench)

K = bench.K
N, FAMILIES, STIMULI, UNITS = 300, 20, 100, 24


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> dict:
    warehouse = Warehouse(tmp_path_factory.mktemp("recall") / "warehouse")
    synthetic = Synthetic(FAMILIES, STIMULI, UNITS, seed=0)
    arrays = write_representations(warehouse, synthetic, synthetic.population(N), RunInfo("recall"), bench.STIMSET)
    config = SurveyConfig(distances=DistancesConfig(metrics=(bench.METRIC,), stimuli=(bench.STIMSET,),
                                                    tile_size=128), stages=("distances",))
    run_survey(config, warehouse, progress=False)
    row, _ = bench.build_space(warehouse, bench.STIMSET, dim=16, landmarks=64)
    ids, matrix = bench.stored_matrix(warehouse, row["stimset_id"])
    engine = ShapeMetric(bench.METRIC.metric, bench.METRIC.alpha, bench.METRIC.score, bench.METRIC.center, "cpu")
    return {"warehouse": warehouse, "synthetic": synthetic, "row": row, "ids": ids, "matrix": matrix,
            "engine": engine, "stored": [engine.prepare(arrays[rep], rep) for rep in ids],
            "service": SearchService(warehouse)}


def test_space_holds_every_representation(survey: dict) -> None:
    row, matrix = survey["row"], survey["matrix"]
    assert row["n_items"] == N == len(survey["ids"]) and matrix.shape == (N, N)
    assert (matrix[np.triu_indices(N, 1)] > 0).all()
    families = {rep["rep_id"]: rep["source_id"] for rep in survey["warehouse"].rows("representations")}
    assert len(set(families.values())) == FAMILIES
    assert bench.structure(survey["ids"], families, matrix)["exact_top10_same_family_share"] > 0.5


def test_stored_queries_recall_and_exact_distances(survey: dict) -> None:
    service, ids, matrix = survey["service"], survey["ids"], survey["matrix"]
    space_id = survey["row"]["space_id"]
    position = {rep: i for i, rep in enumerate(ids)}
    queries = np.random.default_rng(1).choice(N, size=60, replace=False)
    reranked, embedded = [], []
    for q in queries:
        exact = matrix[q].copy()
        exact[q] = np.inf
        truth = [ids[i] for i in np.argsort(exact, kind="stable")[:K]]
        found = service.neighbors(ids[q], K, space_id=space_id)
        assert len(found) == K and ids[q] not in {n.rep_id for n in found}
        assert all(n.exact for n in found)
        np.testing.assert_allclose([n.distance for n in found], [matrix[q, position[n.rep_id]] for n in found],
                                   rtol=0, atol=1e-12)
        assert [n.distance for n in found] == sorted(n.distance for n in found)
        reranked.append(bench.recall([n.rep_id for n in found], truth))
        alone = service.neighbors(ids[q], K, space_id=space_id, rerank=False)
        assert len(alone) == K and not any(n.exact for n in alone)
        embedded.append(bench.recall([n.rep_id for n in alone], truth))
    assert np.mean(reranked) >= 0.95, (np.mean(reranked), np.mean(embedded))
    assert np.mean(reranked) >= np.mean(embedded)


def test_out_of_sample_queries_recall_and_exact_distances(survey: dict) -> None:
    service, ids, engine, stored = survey["service"], survey["ids"], survey["engine"], survey["stored"]
    space_id = survey["row"]["space_id"]
    position = {rep: i for i, rep in enumerate(ids)}
    reranked, embedded = [], []
    for array, _ in survey["synthetic"].fresh(30):
        exact = engine.distances([engine.prepare(array, "query")], stored)
        truth = [ids[i] for i in np.argsort(exact, kind="stable")[:K]]
        found = service.search(array, K, space_id=space_id)
        assert len(found) == K and all(n.exact for n in found)
        np.testing.assert_allclose([n.distance for n in found], [exact[position[n.rep_id]] for n in found],
                                   rtol=0, atol=1e-9)
        reranked.append(bench.recall([n.rep_id for n in found], truth))
        assert all(n.metadata["rep_id"] == n.rep_id for n in found)
        alone = service.search(array, K, space_id=space_id, rerank=False)
        assert len(alone) == K and not any(n.exact for n in alone)
        embedded.append(bench.recall([n.rep_id for n in alone], truth))
    assert np.mean(reranked) >= 0.95, (np.mean(reranked), np.mean(embedded))
    assert np.mean(reranked) >= np.mean(embedded)
