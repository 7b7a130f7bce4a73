"""Embedding spaces and nearest-representation search (DESIGN §5.4).

A space embeds every representation of one stimulus set under one metric configuration: landmark MDS (de Silva &
Tenenbaum 2004) of the stored shape distances, so that an uploaded representation needs distances to the L
landmarks only, plus a FAISS index of the vectors. Its files (``index.faiss``, ``embedder.npz``) live under
``<warehouse>/arrays/spaces/<space_id>/``; the `spaces` row, written last, makes the version visible, and `embeddings`
holds the vectors for SQL. Search = shortlist k' > k from FAISS, then exact rerank by the true metric.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Literal

import duckdb
import numpy as np

from survey.catalog import Warehouse, connect
from survey.config import DistanceMetric
from survey.embedding import LandmarkMDS, classical_mds, kruskal_stress, maxmin_landmarks
from survey.errors import SurveyError
from survey.hashing import content_key
from survey.metrics.shape import INPUT_LAYOUT, INPUT_NDIM, Prepared, ShapeMetric, check_representation
from survey.search.index import VectorIndex
from survey.stages import RunInfo
from survey.stages.distances import pool_maps, prepared

SPACE_VERSION = 1
SHORTLIST = 100  # FAISS candidates reranked per query (at least 10 k): a family of related representations
# larger than the shortlist is ordered poorly by the embedding alone (benchmarks/search_recall.py)
FILTERS = ("source_kind", "area", "family", "objective")
METADATA = ("rep_id", "source_kind", "source_id", "source_name", "layer_or_area", "depth", "stimset_id", "n_stimuli",
            "n_units", "family", "objective", "test_accuracy", "subject", "area")  # the metadata a search may filter on


class NotFoundError(SurveyError):
    """An unknown space or representation id (HTTP 404)."""


@dataclass(frozen=True)
class Neighbor:
    rep_id: str
    distance: float
    exact: bool  # True: the metric's own distance; False: Euclidean distance in the embedding
    metadata: dict = field(default_factory=dict)


def space_metric(row: dict) -> DistanceMetric:
    return DistanceMetric(metric=row["metric"], alpha=row["alpha"], score=row["score_method"], center=row["center"])


def distance_matrix(warehouse: Warehouse, metric: DistanceMetric, stimset_id: str) -> tuple[list[dict], np.ndarray]:
    """The representations of `stimset_id` (sorted by id) and their full distance matrix from `shape_distances`."""
    connection = connect(warehouse)
    pairs = connection.execute(
        """SELECT rep_a, rep_b, distance FROM shape_distances WHERE stimset_id = ? AND metric = ? AND alpha = ?
           AND score_method = ? AND center = ?""",
        [stimset_id, metric.metric, metric.alpha, metric.score, metric.center],
    ).fetchall()
    ids = sorted({rep for a, b, _ in pairs for rep in (a, b)})
    n = len(ids)
    if n < 3 or len(pairs) != n * (n - 1) // 2:
        raise SurveyError(f"shape_distances has {len(pairs)} pairs of {n} representations for {metric.label} on "
                          f"{stimset_id}; a space needs all pairs of ≥ 3: run `survey distances` for it first")
    index = {rep: i for i, rep in enumerate(ids)}
    matrix = np.zeros((n, n))
    for a, b, value in pairs:
        matrix[index[a], index[b]] = matrix[index[b], index[a]] = value
    reps = {row["rep_id"]: row for row in warehouse.rows("representations")}
    return [reps[rep] for rep in ids], matrix


def build_space(
    warehouse: Warehouse, metric: DistanceMetric, stimset: str, info: RunInfo, dim: int = 32, n_landmarks: int = 200,
    kind: Literal["flat", "hnsw"] = "flat", conv_size: int = 4,
) -> dict:
    """Embed one stimulus set's representations under `metric` and index them; returns the `spaces` row.

    Building the same catalog state again returns the existing version without writing anything.
    """
    sets = {row["name"]: row for row in warehouse.rows("stimulus_sets")}
    if stimset not in sets:
        raise SurveyError(f"stimulus set {stimset!r} is not in warehouse {warehouse.uri} (it has {sorted(sets)}); "
                          "pass --stimset one of those")
    stimset_id = sets[stimset]["stimset_id"]
    reps, matrix = distance_matrix(warehouse, metric, stimset_id)
    n = len(reps)
    dim, n_landmarks = min(dim, n - 1), min(n_landmarks, n)
    space_id = content_key("space", metric.model_dump(), stimset_id, [(r["rep_id"], r["content_hash"]) for r in reps],
                           dim, n_landmarks, kind, conv_size if metric.metric == "conv" else None, SPACE_VERSION)
    existing = [row for row in warehouse.rows("spaces") if row["space_id"] == space_id]
    if existing:
        return existing[0]
    landmarks = maxmin_landmarks(matrix, n_landmarks, seed=0)
    embedder = LandmarkMDS(dim, n_landmarks).fit(matrix[np.ix_(landmarks, landmarks)])
    vectors = embedder.transform(matrix[:, landmarks])
    full = classical_mds(matrix, dim)
    index = VectorIndex.build(vectors.astype(np.float32), np.arange(n), kind=kind)
    folder = f"arrays/spaces/{space_id}"
    buffer = io.BytesIO()
    np.savez(buffer, rep_ids=np.array([r["rep_id"] for r in reps]), landmarks=landmarks,
             **{key: np.asarray(value) for key, value in embedder.state_dict().items()})
    warehouse.put_bytes(f"{folder}/embedder.npz", buffer.getvalue())
    uri = warehouse.put_bytes(f"{folder}/index.faiss", index.to_bytes()).rsplit("/", 1)[0]
    landmark_set = set(landmarks.tolist())
    warehouse.append_unit("embeddings", space_id, [
        {"space_id": space_id, "rep_id": rep["rep_id"], "item": i, "is_landmark": i in landmark_set,
         "vector": vectors[i].astype(np.float32).tolist(), **info.provenance()}
        for i, rep in enumerate(reps)
    ])
    row = {
        "space_id": space_id, "name": f"{metric.label} · {stimset}", "stimset_id": stimset_id,
        "metric": metric.metric, "alpha": metric.alpha, "score_method": metric.score, "center": metric.center,
        "conv_size": conv_size if metric.metric == "conv" else None, "n_items": n, "dim": dim,
        "n_landmarks": n_landmarks, "index_kind": kind, "mds_stress": full.stress,
        "negative_mass": full.negative_mass, "stress": kruskal_stress(matrix, vectors), "uri": uri,
        "created": datetime.now(UTC), **info.provenance(),
    }
    warehouse.append_unit("spaces", space_id, [row])
    return row


class Space:
    """A stored space, loaded: its FAISS index, landmark embedder and the representations it holds."""

    def __init__(self, warehouse: Warehouse, row: dict) -> None:
        self.warehouse, self.row = warehouse, row
        stored = np.load(io.BytesIO(warehouse.read_bytes(f"{row['uri']}/embedder.npz")), allow_pickle=False)
        self.rep_ids: list[str] = stored["rep_ids"].tolist()
        self.item = {rep: i for i, rep in enumerate(self.rep_ids)}
        self.landmarks = stored["landmarks"]
        self.embedder = LandmarkMDS.from_state({key: stored[key] for key in stored.files})
        self.index = VectorIndex.from_bytes(warehouse.read_bytes(f"{row['uri']}/index.faiss"))
        self.metric = space_metric(row)

    @cached_property
    def engine(self) -> ShapeMetric:
        return ShapeMetric(self.metric.metric, self.metric.alpha, self.metric.score, self.metric.center, "cpu")

    def embed(self, distances_to_landmarks: np.ndarray) -> np.ndarray:
        return self.embedder.transform(distances_to_landmarks.reshape(1, -1))[0].astype(np.float32)

    def shortlist(self, vector: np.ndarray, k: int, keep: set[str] | None, exclude: str | None) -> list[Neighbor]:
        """The k embedded nearest items that pass `keep` (None: all), widening the FAISS search until enough do."""
        found: list[Neighbor] = []
        width = min(max(2 * k, 32), self.index.ntotal)
        while True:
            distances, items = self.index.search(vector, width)
            found = [Neighbor(self.rep_ids[item], float(d), exact=False) for d, item in zip(distances[0], items[0],
                                                                                            strict=True)
                     if item >= 0 and self.rep_ids[item] != exclude and (keep is None or self.rep_ids[item] in keep)]
            if len(found) >= k or width >= self.index.ntotal:
                return found[:k]
            width = min(4 * width, self.index.ntotal)


def _width(k: int, rerank: bool, shortlist: int | None) -> int:
    """Candidates to take from FAISS: k without rerank, else `shortlist` or max(10 k, SHORTLIST)."""
    return shortlist or max(10 * k, SHORTLIST) if rerank else k


class SearchService:
    """Neighbours of stored representations and of uploaded arrays, over the warehouse's spaces."""

    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse
        self._spaces: dict[str, Space] = {}
        self._landmark_cache: dict[str, list[Prepared]] = {}
        self._lock = threading.Lock()

    # ---- catalog -------------------------------------------------------------------------------------

    def spaces(self) -> list[dict]:
        return sorted(self.warehouse.rows("spaces"), key=lambda row: (row["name"], row["created"]))

    def space(self, space_id: str | None = None, rep_id: str | None = None) -> Space:
        """A space by id; by default the newest space holding `rep_id` (or the newest of all)."""
        rows = self.spaces()
        if space_id is not None:
            rows = [row for row in rows if row["space_id"] == space_id]
            if not rows:
                raise NotFoundError(f"space {space_id!r} not found; list spaces with GET /spaces or `survey index ls`")
        if not rows:
            raise NotFoundError(f"warehouse {self.warehouse.uri} has no embedding space; run `survey index build`")
        if rep_id is not None and space_id is None:
            stimset = self.representation(rep_id)["stimset_id"]
            rows = [row for row in rows if row["stimset_id"] == stimset] or rows
        row = max(rows, key=lambda r: r["created"])
        if row["space_id"] not in self._spaces:
            self._spaces[row["space_id"]] = Space(self.warehouse, row)
        return self._spaces[row["space_id"]]

    @cached_property
    def metadata(self) -> dict[str, dict]:
        """Catalog metadata of every representation, with its network's family/objective or session's subject."""
        rows = self._sql("""
            SELECT r.rep_id, r.source_kind, r.source_id, r.source_name, r.layer_or_area, r.depth, r.stimset_id,
                   r.n_stimuli, r.n_units, n.family, n.objective, n.test_accuracy, s.subject,
                   CASE WHEN r.source_kind = 'session' THEN r.layer_or_area END AS area
            FROM representations r LEFT JOIN networks n ON r.source_id = n.network_id
            LEFT JOIN sessions s ON r.source_id = s.session_id""")
        return {row[0]: dict(zip(METADATA, row, strict=True)) for row in rows}

    def representation(self, rep_id: str) -> dict:
        if rep_id not in self.metadata:
            raise NotFoundError(f"representation {rep_id!r} not found; list ids with "
                                "`survey sql \"SELECT rep_id FROM representations\"`")
        return self.metadata[rep_id]

    def matching(self, **filters: str | None) -> set[str] | None:
        """Ids whose metadata equal every given filter (see FILTERS); None when no filter is set."""
        given = {key: value for key, value in filters.items() if value is not None}
        unknown = sorted(set(given) - set(FILTERS))
        if unknown:
            raise SurveyError(f"unknown filters {unknown}; filter on {', '.join(FILTERS)}")
        if not given:
            return None
        return {rep for rep, row in self.metadata.items() if all(row.get(k) == v for k, v in given.items())}

    # ---- search --------------------------------------------------------------------------------------

    def neighbors(
        self, rep_id: str, k: int = 10, space_id: str | None = None, keep: set[str] | None = None,
        rerank: bool = True, shortlist: int | None = None,
    ) -> list[Neighbor]:
        """The k nearest stored representations to a stored one: FAISS shortlist of k' = `shortlist` (default
        max(10k, SHORTLIST)), reranked by the exact distances in `shape_distances`."""
        self.representation(rep_id)
        space = self.space(space_id, rep_id)
        if rep_id not in space.item:
            raise NotFoundError(f"representation {rep_id!r} is not in space {space.row['space_id']!r} "
                                f"({space.row['name']}); pick a space of its stimulus set")
        vector = space.index.reconstruct(space.item[rep_id])
        candidates = space.shortlist(vector, _width(k, rerank, shortlist), keep, exclude=rep_id)
        if rerank:
            exact = self._stored_distances(space, rep_id, [c.rep_id for c in candidates])
            candidates = [Neighbor(c.rep_id, exact[c.rep_id], exact=True) for c in candidates]
        return self._finish(candidates, k)

    def search(
        self, array: np.ndarray, k: int = 10, space_id: str | None = None, keep: set[str] | None = None,
        rerank: bool = True, shortlist: int | None = None,
    ) -> list[Neighbor]:
        """The k nearest stored representations to an uploaded one (m stimuli × n units of the space's stimulus
        set): exact distances to the landmarks place it by landmark MDS, then FAISS shortlist and exact rerank."""
        space = self.space(space_id)
        metric = space.metric.metric
        values = check_representation(array, "upload", INPUT_NDIM[metric], INPUT_LAYOUT[metric])
        n_stimuli = self.metadata[space.rep_ids[0]]["n_stimuli"]
        if len(values) != n_stimuli:
            raise SurveyError(f"upload has {len(values)} stimuli but space {space.row['space_id']} is over "
                              f"{n_stimuli}; send responses to that stimulus set in its order")
        if metric == "conv":
            values = pool_maps(values, space.row["conv_size"])
        query = space.engine.prepare(values, "upload")
        to_landmarks = space.engine.distances([query], self._landmarks(space))
        vector = space.embed(to_landmarks)
        candidates = space.shortlist(vector, _width(k, rerank, shortlist), keep, exclude=None)
        if rerank:
            exact = self._exact(space, query, [c.rep_id for c in candidates])
            candidates = [Neighbor(c.rep_id, float(d), exact=True) for c, d in zip(candidates, exact, strict=True)]
        return self._finish(candidates, k)

    def _finish(self, candidates: list[Neighbor], k: int) -> list[Neighbor]:
        ordered = sorted(candidates, key=lambda c: c.distance)[:k]
        return [Neighbor(c.rep_id, c.distance, c.exact, self.metadata.get(c.rep_id, {})) for c in ordered]

    def _prepared(self, space: Space, rep_ids: list[str]) -> list[Prepared]:
        return [prepared(space.engine, self.warehouse.uri, self._catalog_rows[rep], space.row["conv_size"])
                for rep in rep_ids]

    def _landmarks(self, space: Space) -> list[Prepared]:
        """The space's landmarks prepared for its metric, kept for the life of the service (every upload needs
        all of them; the shared per-representation cache is too small to hold them beside the candidates)."""
        if space.row["space_id"] not in self._landmark_cache:
            self._landmark_cache[space.row["space_id"]] = self._prepared(space, [space.rep_ids[i]
                                                                                 for i in space.landmarks])
        return self._landmark_cache[space.row["space_id"]]

    def _exact(self, space: Space, query: Prepared, rep_ids: list[str]) -> np.ndarray:
        return space.engine.distances([query], self._prepared(space, rep_ids))

    def _stored_distances(self, space: Space, rep_id: str, others: list[str]) -> dict[str, float]:
        if not others:
            return {}
        metric = space.metric
        rows = self._sql(
            f"""SELECT CASE WHEN rep_a = ? THEN rep_b ELSE rep_a END, distance FROM shape_distances
                WHERE stimset_id = ? AND metric = ? AND alpha = ? AND score_method = ? AND center = ?
                AND (rep_a = ? OR rep_b = ?) AND (rep_a IN ({','.join('?' * len(others))})
                                                 OR rep_b IN ({','.join('?' * len(others))}))""",
            [rep_id, space.row["stimset_id"], metric.metric, metric.alpha, metric.score, metric.center,
             rep_id, rep_id, *others, *others],
        )
        return dict(rows)

    @cached_property
    def _catalog_rows(self) -> dict[str, dict]:
        return {row["rep_id"]: row for row in self.warehouse.rows("representations")}

    @cached_property
    def _connection(self) -> duckdb.DuckDBPyConnection:
        """One DuckDB connection with the catalog views (views read the Parquet files at query time)."""
        return connect(self.warehouse)

    def _sql(self, query: str, parameters: list | None = None) -> list[tuple]:
        """Rows of `query`; one query at a time on the shared connection (the API serves from a thread pool)."""
        with self._lock:
            return self._connection.execute(query, parameters or []).fetchall()
