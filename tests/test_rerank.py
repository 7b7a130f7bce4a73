"""The search rerank reads the distances the survey stored and computes only the pairs it lacks."""

from __future__ import annotations

import functools
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import write_deltalake

from survey.catalog import Warehouse
from survey.catalog.distances import StoredPairs
from survey.search.space import SearchService


def space_pairs(warehouse: Warehouse, space) -> dict[frozenset, float]:
    """The stored distances of `space`'s metric configuration among its representations, by unordered pair."""
    rows = warehouse.rows("shape_distances")
    metric = space.metric
    return {frozenset((row["rep_a"], row["rep_b"])): row["distance"] for row in rows
            if (row["stimset_id"], row["metric"], row["alpha"], row["score_method"], row["center"]) == (
                space.row["stimset_id"], metric.metric, metric.alpha, metric.score, metric.center)
            and row["rep_a"] in space.item and row["rep_b"] in space.item}


def test_the_lookup_holds_every_stored_pair_of_the_space_and_nothing_else(tiny_surveyed):
    space = SearchService(tiny_surveyed).space()
    expected = space_pairs(tiny_surveyed, space)
    stored = StoredPairs(tiny_surveyed, space.metric, space.row["stimset_id"], space.rep_ids)
    n = len(space.rep_ids)
    assert len(stored) == len(expected) == n * (n - 1) // 2  # the tiny space is built over all pairs
    for i, rep in enumerate(space.rep_ids):
        found = stored.lookup(i, np.arange(n))
        assert np.isnan(found[i])  # no stored distance of a representation to itself
        assert [found[j] for j in range(n) if j != i] == [expected[frozenset((rep, other))]
                                                          for j, other in enumerate(space.rep_ids) if j != i]
    outsider = StoredPairs(tiny_surveyed, space.metric, space.row["stimset_id"], space.rep_ids[:3])
    assert len(outsider) == 3


def rewrite_distances(warehouse: Warehouse, change) -> None:
    """Overwrite `shape_distances` with `change(table)` (a new table version)."""
    data = warehouse.read_table("shape_distances")
    write_deltalake(warehouse.table_uri("shape_distances"), change(data), mode="overwrite", partition_by=["metric"])


def pair_mask(data: pa.Table, space, rep: str, other: str) -> pa.ChunkedArray:
    """Rows of `data` holding the pair (rep, other) under `space`'s metric configuration."""
    metric = space.metric
    wanted = {"rep_a": min(rep, other), "rep_b": max(rep, other), "stimset_id": space.row["stimset_id"],
              "metric": metric.metric, "alpha": metric.alpha, "score_method": metric.score, "center": metric.center}
    return functools.reduce(pc.and_, [pc.equal(data[column], value) for column, value in wanted.items()])


def test_the_rerank_reads_stored_pairs_and_computes_only_the_missing_ones(tiny_surveyed, tmp_path, monkeypatch):
    warehouse = Warehouse(shutil.copytree(tiny_surveyed.root, tmp_path / "wh"))
    service = SearchService(warehouse)
    monkeypatch.setattr(service, "CATALOG_CHECK_S", 0.0)
    space = service.space()
    query, *others = space.rep_ids
    k = len(others)
    original = {n.rep_id: n.distance for n in service.neighbors(query, k)}
    assert set(original) == set(others)
    computed: list[int] = []
    engine_distances = space.engine.distances

    def counting(rows, cols, pairs=None):
        computed.append(len(cols))
        return engine_distances(rows, cols, pairs)

    monkeypatch.setattr(space.engine, "distances", counting)
    doctored, dropped = others[0], others[1]

    def change(data: pa.Table) -> pa.Table:
        hit = pair_mask(data, space, query, doctored)
        assert pc.sum(hit).as_py() == 1
        data = data.set_column(data.schema.get_field_index("distance"), "distance",
                               pc.if_else(hit, pa.scalar(123.0), data["distance"]))
        return data.filter(pc.invert(pair_mask(data, space, query, dropped)))

    rewrite_distances(warehouse, change)
    found = {n.rep_id: n for n in service.neighbors(query, k)}
    assert found[doctored].distance == 123.0 and found[doctored].exact  # read, not computed
    assert found[dropped].distance == pytest.approx(original[dropped], abs=1e-9) and found[dropped].exact
    assert computed == [1]  # the one pair the survey lacks
    assert all(found[rep].distance == original[rep] for rep in others if rep not in (doctored, dropped))
