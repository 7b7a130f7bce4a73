"""Stage `spaces`: embedding spaces of the stored shape distances, indexed in FAISS → `spaces`, `embeddings`.

A space embeds every representation of one stimulus set under one metric configuration by landmark MDS (de Silva &
Tenenbaum 2004) and indexes the vectors in FAISS (DESIGN §5.4). It reads only the L × N landmark rows of the distance
matrix, as Arrow arrays: the landmarks frozen by the distances stage in landmarks mode, else L picked by maxmin one
stored row at a time. Its stress is measured on a sample of the stored pairs; nothing N × N is ever held. The space id
is a content key of the configuration and the representations it holds, so a grown catalog gets a new version; its
files (``index.faiss``, ``embedder.npz``) go under ``arrays/spaces/<space_id>/`` and the `spaces` row, written last,
makes it visible.
"""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import numpy as np
import pyarrow as pa

from survey.catalog import Warehouse
from survey.catalog.distances import landmark_sequence, metric_filter
from survey.catalog.prepared import REP_COLUMNS, eligible
from survey.catalog.stimuli import catalog_stimulus_sets
from survey.config import SpaceSpec
from survey.embedding import LandmarkMDS, maxmin_landmarks, pair_stress
from survey.errors import SurveyError
from survey.stages import RunInfo, Stage, WorkUnit
from survey.vector_index import VectorIndex

STRESS_SAMPLE = 20_000  # stored pairs the stress is measured on


class SpacesStage(Stage):
    name = "spaces"
    section = "spaces"
    table = "spaces"
    version = 2
    writes_also = ("embeddings",)
    reads = ("shape_distances", "distance_landmarks", "representations", "stimulus_sets")

    def plan(self, warehouse: Warehouse, info: RunInfo) -> list[WorkUnit]:
        builds = self.options.build
        sets = catalog_stimulus_sets(warehouse, tuple({spec.stimuli for spec in builds}), "spaces.build.stimuli")
        by_name = {row["name"]: row for row in sets.values()}
        reps = warehouse.rows("representations", REP_COLUMNS)
        units = []
        for spec in builds:
            stimset = by_name[spec.stimuli]
            ids = sorted(rep["rep_id"] for rep in reps
                         if rep["stimset_id"] == stimset["stimset_id"] and eligible(spec.metric.metric, rep))
            if len(ids) < 3:
                raise SurveyError(f"space {spec.label}: {len(ids)} representations of {spec.stimuli} can be compared "
                                  f"by {spec.metric.label}; a space needs ≥ 3: survey more networks or sessions")
            units.append(self.unit("space", [spec.model_dump(mode="json"), stimset["stimset_id"], ids],
                                   f"space {spec.label}", {"spec": spec, "stimset_id": stimset["stimset_id"],
                                                           "rep_ids": ids}))
        return units

    def run(self, unit: WorkUnit, warehouse: Warehouse, info: RunInfo) -> dict[str, int]:
        spec, stimset_id, rep_ids = unit.payload["spec"], unit.payload["stimset_id"], unit.payload["rep_ids"]
        rows = LandmarkRows(warehouse, spec, stimset_id, rep_ids)
        n, dim, n_landmarks = len(rep_ids), min(spec.dim, len(rep_ids) - 1), min(spec.landmarks, len(rep_ids))
        frozen = landmark_sequence(warehouse, spec.metric, stimset_id)
        if frozen:
            landmarks = np.array([rows.index[rep] for rep in frozen[:n_landmarks] if rep in rows.index])
        else:
            rows.check_all_pairs()
            landmarks = maxmin_landmarks(lambda i: rows.read([i])[0], n_landmarks, seed=0, n_items=n)
        to_landmarks = rows.read(landmarks).T  # N × L
        embedder = LandmarkMDS(dim, len(landmarks)).fit(to_landmarks[landmarks])
        vectors = embedder.transform(to_landmarks)
        stress, stress_pairs = rows.sampled_stress(vectors)
        index = VectorIndex.build(vectors.astype(np.float32), np.arange(n), kind=spec.kind)
        folder = f"arrays/spaces/{unit.key}"
        warehouse.put_npz(f"{folder}/embedder.npz", {
            "rep_ids": np.array(rep_ids), "landmarks": landmarks,
            **{key: np.asarray(value) for key, value in embedder.state_dict().items()}})
        uri = warehouse.put_bytes(f"{folder}/index.faiss", index.to_bytes()).rsplit("/", 1)[0]
        landmark_set = set(landmarks.tolist())
        written = {"embeddings": self.commit(warehouse, "embeddings", unit, [
            {"space_id": unit.key, "rep_id": rep, "item": i, "is_landmark": i in landmark_set,
             "vector": vectors[i].astype(np.float32).tolist(), **info.provenance()}
            for i, rep in enumerate(rep_ids)])}
        metric = spec.metric
        written[self.table] = self.commit(warehouse, self.table, unit, [{
            "space_id": unit.key, "name": spec.label, "stimset_id": stimset_id, **metric.columns(),
            "conv_size": metric.pooling(spec.conv_size), "n_items": n, "dim": dim,
            "n_landmarks": len(landmarks), "landmarks_from": "distance_landmarks" if frozen else "maxmin",
            "index_kind": spec.kind, "negative_mass": embedder.embedding_.negative_mass, "stress": stress,
            "stress_pairs": stress_pairs, "uri": uri, "created": datetime.now(UTC), **info.provenance()}])
        return written


class LandmarkRows:
    """Reads rows of one metric configuration's stored distance matrix over `rep_ids` from `shape_distances`, as
    Arrow arrays of (row, column, distance) indices: only the rows asked for, never the matrix."""

    def __init__(self, warehouse: Warehouse, spec: SpaceSpec, stimset_id: str, rep_ids: list[str]) -> None:
        self.spec, self.rep_ids = spec, rep_ids
        self.index = {rep: i for i, rep in enumerate(rep_ids)}
        self.connection = duckdb.connect(":memory:")
        self.connection.register("pairs", warehouse.dataset("shape_distances").filter(
            metric_filter(spec.metric, stimset_id)))
        self.connection.register("items", pa.table({"rep_id": rep_ids, "item": np.arange(len(rep_ids),
                                                                                         dtype=np.int32)}))

    def read(self, items: np.ndarray | list[int]) -> np.ndarray:
        """The L × N rows of the given items (float64); a missing pair is one clear error."""
        items = np.asarray(items, dtype=np.int32)
        self.connection.register("rows", pa.table({"rep_id": [self.rep_ids[i] for i in items],
                                                   "row": np.arange(len(items), dtype=np.int32)}))
        found = self.connection.sql("""
            SELECT r.row, i.item, p.distance FROM pairs p JOIN rows r ON p.rep_a = r.rep_id
                JOIN items i ON p.rep_b = i.rep_id
            UNION ALL
            SELECT r.row, i.item, p.distance FROM pairs p JOIN rows r ON p.rep_b = r.rep_id
                JOIN items i ON p.rep_a = i.rep_id""").to_arrow_table()
        matrix = np.full((len(items), len(self.rep_ids)), np.nan)
        matrix[found["row"].to_numpy(), found["item"].to_numpy()] = found["distance"].to_numpy()
        matrix[np.arange(len(items)), items] = 0.0
        missing = int(np.isnan(matrix).sum())
        if missing:
            raise SurveyError(f"space {self.spec.label}: {missing} distances from its landmarks are not in "
                              "shape_distances; run the distances stage for this metric and stimulus set first")
        return matrix

    def check_all_pairs(self) -> None:
        """All-pairs mode: every pair of the space's representations is stored (one count)."""
        n = len(self.rep_ids)
        stored = self.connection.execute("""SELECT count(*) FROM pairs p JOIN items a ON p.rep_a = a.rep_id
                                            JOIN items b ON p.rep_b = b.rep_id""").fetchall()[0][0]
        if stored != n * (n - 1) // 2:
            raise SurveyError(f"space {self.spec.label}: shape_distances holds {stored} of the {n * (n - 1) // 2} "
                              f"pairs of its {n} representations; run the distances stage for them first (or "
                              "distances.pairs: landmarks)")

    def sampled_stress(self, vectors: np.ndarray) -> tuple[float, int]:
        """Kruskal stress-1 of `vectors` over a seeded sample of the stored pairs; returns it and the sample size."""
        sample = self.connection.sql(f"""
            SELECT a.item AS i, b.item AS j, p.distance FROM pairs p JOIN items a ON p.rep_a = a.rep_id
                JOIN items b ON p.rep_b = b.rep_id USING SAMPLE reservoir({STRESS_SAMPLE} ROWS) REPEATABLE (0)
            """).to_arrow_table()
        i, j = sample["i"].to_numpy(), sample["j"].to_numpy()
        return pair_stress(sample["distance"].to_numpy(), vectors[i], vectors[j]), len(i)
