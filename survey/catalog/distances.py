"""Stored shape distances read by metric configuration: the rows of one configuration, its frozen landmarks, and
the pairs among a set of representations as a lookup (what the search service reranks with)."""

from __future__ import annotations

import functools
import operator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.compute as pc

from survey.catalog.warehouse import Warehouse

if TYPE_CHECKING:
    from survey.config import DistanceMetric


def metric_filter(metric: DistanceMetric, stimset_id: str) -> pc.Expression:
    """Rows of `shape_distances` (or `distance_landmarks`) for one metric configuration on one stimulus set."""
    columns = {"stimset_id": stimset_id, **metric.columns()}
    return functools.reduce(operator.and_, (pc.field(name) == value for name, value in columns.items()))


class FrozenLandmarks:
    """The frozen landmarks of one metric configuration on one stimulus set, followed as `distance_landmarks` grows:
    each read takes in only the data files stored since the last."""

    def __init__(self, metric: DistanceMetric, stimset_id: str) -> None:
        self.filter = metric_filter(metric, stimset_id)
        self.picks: dict[int, str] = {}  # by round
        self.files: set[str] = set()

    def read(self, warehouse: Warehouse) -> list[str]:
        """The landmarks in the order they were picked."""
        stored = warehouse.read_new_files("distance_landmarks", self.files, ["round", "rep_id"], self.filter)
        self.picks.update(zip(stored["round"].to_pylist(), stored["rep_id"].to_pylist(), strict=True))
        return [self.picks[round_] for round_ in sorted(self.picks)]


def landmark_sequence(warehouse: Warehouse, metric: DistanceMetric, stimset_id: str) -> list[str]:
    """The frozen landmarks of one metric configuration on one stimulus set, in the order they were picked."""
    return FrozenLandmarks(metric, stimset_id).read(warehouse)


class StoredPairs:
    """The stored distances among `rep_ids` under one metric configuration, as a lookup by item (index in
    `rep_ids`).

    Pairs are kept as sorted keys i·n + j (i < j) with their distances, 16 bytes a pair: all pairs of a space of
    2,000 representations take 32 MB, the landmark rows of 50,000 (L = 200) 160 MB. `version` is the
    `shape_distances` version read."""

    def __init__(self, warehouse: Warehouse, metric: DistanceMetric, stimset_id: str, rep_ids: list[str]) -> None:
        snapshot = warehouse.delta("shape_distances")
        self.version = -1 if snapshot is None else snapshot.version()
        self.n = len(rep_ids)
        ids = np.asarray(rep_ids)
        order = np.argsort(ids)
        stored = warehouse.dataset("shape_distances").to_table(columns=["rep_a", "rep_b", "distance"],
                                                               filter=metric_filter(metric, stimset_id))
        a, b = (_items(ids[order], order, stored[column].to_numpy(zero_copy_only=False))
                for column in ("rep_a", "rep_b"))
        held = (a >= 0) & (b >= 0)
        keys = np.minimum(a, b)[held] * self.n + np.maximum(a, b)[held]
        by_key = np.argsort(keys, kind="stable")
        self.keys, self.distances = keys[by_key], stored["distance"].to_numpy()[held][by_key]

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, item: int, others: np.ndarray) -> np.ndarray:
        """Stored distances from `item` to each of `others` (items); NaN where a pair is not stored."""
        others = np.asarray(others, dtype=np.int64)
        result = np.full(len(others), np.nan)
        if len(self.keys):
            keys = np.minimum(item, others) * self.n + np.maximum(item, others)
            position = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
            found = self.keys[position] == keys
            result[found] = self.distances[position[found]]
        return result


def _items(sorted_ids: np.ndarray, order: np.ndarray, reps: np.ndarray) -> np.ndarray:
    """The item of each of `reps` (`sorted_ids` = ids[order]); −1 for one not among them."""
    if len(reps) == 0:
        return np.zeros(0, dtype=np.int64)
    position = np.minimum(np.searchsorted(sorted_ids, reps), len(sorted_ids) - 1)
    return np.where(sorted_ids[position] == reps, order[position], -1).astype(np.int64)
