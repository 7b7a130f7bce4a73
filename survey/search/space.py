"""Nearest-representation search over the warehouse's embedding spaces (DESIGN §5.4).

A space (built by the `spaces` stage) embeds one stimulus set's representations under one metric configuration by
landmark MDS, so an uploaded representation needs distances to the L landmarks only, and indexes the vectors in FAISS.
Search = a FAISS shortlist of k' > k, then an exact rerank: the metric's distance from the query to each candidate.
For a stored representation the survey has most of those distances already (all pairs, or the landmark rows): they
are read from `shape_distances` (one lookup per space, reloaded when the table changes), and only the missing ones
are computed, batched, from the candidates' prepared arrays. An uploaded array has no stored distances.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from survey.catalog import Warehouse, connect
from survey.catalog.distances import StoredPairs
from survey.catalog.prepared import REP_COLUMNS, load_prepared
from survey.config import DistanceMetric
from survey.embedding import LandmarkMDS
from survey.errors import SurveyError
from survey.metrics.shape import Prepared, ShapeMetric, check_representation
from survey.vector_index import VectorIndex

SHORTLIST = 100  # FAISS candidates reranked per query (at least 10 k): a family of related representations
# larger than the shortlist is ordered poorly by the embedding alone (benchmarks/search_recall.py)
MAX_K = 1000  # the most neighbours one search returns (the CLI's -k and the API's k alike)
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


def check_k(k: int, what: str = "k") -> int:
    """`k` when it is a number of neighbours a search can return (1 to MAX_K); else one SurveyError."""
    if not 1 <= k <= MAX_K:
        raise SurveyError(f"{what} {k}: ask for 1 to {MAX_K} neighbours")
    return k


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
        self.metric = DistanceMetric.from_columns(row)
        self._stored: StoredPairs | None = None
        self._lock = threading.Lock()

    def stored_pairs(self, version: int) -> StoredPairs:
        """The stored distances among this space's representations, reloaded when `shape_distances` is at another
        `version` than when they were read."""
        with self._lock:
            if self._stored is None or self._stored.version != version:
                self._stored = StoredPairs(self.warehouse, self.metric, self.row["stimset_id"], self.rep_ids)
            return self._stored

    @cached_property
    def engine(self) -> ShapeMetric:
        """The space's metric on the service's device (CUDA when there is one)."""
        return self.metric.engine()

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


@dataclass(frozen=True)
class CatalogState:
    """What the service reads from the catalog, taken together at one set of table versions."""

    versions: tuple[int, ...]
    spaces: list[dict]  # `spaces` rows, by name then creation
    metadata: dict[str, dict]  # rep_id → METADATA of every representation
    rows: dict[str, dict]  # rep_id → its `representations` row (array URIs)


class SearchService:
    """Neighbours of stored representations and of uploaded arrays, over the warehouse's spaces.

    The catalog it reads (spaces, representation metadata) is re-read whenever one of its tables has a new version,
    checked at most every CATALOG_CHECK_S seconds, so a space built while a server runs is served with the metadata
    of every representation it holds.
    """

    CATALOG_CHECK_S = 1.0
    WATCHED = ("spaces", "representations", "networks", "sessions")

    def __init__(self, warehouse: Warehouse) -> None:
        self.warehouse = warehouse
        self._spaces: dict[str, Space] = {}
        self._landmark_cache: dict[str, list[Prepared]] = {}
        self._lock = threading.Lock()
        self._state: CatalogState | None = None
        self._checked = 0.0
        self._distances: tuple[float, int] | None = None  # (when checked, shape_distances version)

    # ---- catalog -------------------------------------------------------------------------------------

    @property
    def catalog(self) -> CatalogState:
        """The catalog as of the newest table versions (checked at most every CATALOG_CHECK_S seconds)."""
        with self._lock:
            if self._state is None or time.monotonic() - self._checked > self.CATALOG_CHECK_S:
                versions = tuple(self._version(table) for table in self.WATCHED)
                if self._state is None or versions != self._state.versions:
                    self._state = self._load(versions)
                self._checked = time.monotonic()
            return self._state

    def _distances_version(self) -> int:
        """The version of `shape_distances`, checked at most every CATALOG_CHECK_S seconds."""
        with self._lock:
            now = time.monotonic()
            if self._distances is None or now - self._distances[0] > self.CATALOG_CHECK_S:
                self._distances = (now, self._version("shape_distances"))
            return self._distances[1]

    def _version(self, table: str) -> int:
        snapshot = self.warehouse.delta(table)
        return -1 if snapshot is None else snapshot.version()

    def _load(self, versions: tuple[int, ...]) -> CatalogState:
        connection = connect(self.warehouse, ("representations", "networks", "sessions"))
        rows = connection.execute("""
            SELECT r.rep_id, r.source_kind, r.source_id, r.source_name, r.layer_or_area, r.depth, r.stimset_id,
                   r.n_stimuli, r.n_units, n.family, n.objective, n.test_accuracy, s.subject,
                   CASE WHEN r.source_kind = 'session' THEN r.layer_or_area END AS area
            FROM representations r LEFT JOIN networks n ON r.source_id = n.network_id
            LEFT JOIN sessions s ON r.source_id = s.session_id""").fetchall()
        spaces = sorted(self.warehouse.rows("spaces"), key=lambda row: (row["name"], row["created"]))
        return CatalogState(versions, spaces, {row[0]: dict(zip(METADATA, row, strict=True)) for row in rows},
                            {row["rep_id"]: row for row in self.warehouse.rows("representations", REP_COLUMNS)})

    @property
    def metadata(self) -> dict[str, dict]:
        """Catalog metadata of every representation, with its network's family/objective or session's subject."""
        return self.catalog.metadata

    def spaces(self) -> list[dict]:
        return self.catalog.spaces

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
        with self._lock:
            if row["space_id"] not in self._spaces:
                self._spaces[row["space_id"]] = Space(self.warehouse, row)
            return self._spaces[row["space_id"]]

    def representation(self, rep_id: str) -> dict:
        metadata = self.metadata
        if rep_id not in metadata:
            raise NotFoundError(f"representation {rep_id!r} not found; list ids with "
                                "`survey sql \"SELECT rep_id FROM representations\"`")
        return metadata[rep_id]

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
        max(10k, SHORTLIST)), reranked by the exact metric distances to it."""
        check_k(k)
        self.representation(rep_id)
        space = self.space(space_id, rep_id)
        if rep_id not in space.item:
            raise NotFoundError(f"representation {rep_id!r} is not in space {space.row['space_id']!r} "
                                f"({space.row['name']}); pick a space of its stimulus set")
        item = space.item[rep_id]
        candidates = space.shortlist(space.index.reconstruct(item), _width(k, rerank, shortlist), keep, exclude=rep_id)
        if rerank:
            candidates = self._rerank(space, lambda: self._prepared(space, [rep_id])[0], candidates, item)
        return self._finish(candidates, k)

    def search(
        self, array: np.ndarray, k: int = 10, space_id: str | None = None, keep: set[str] | None = None,
        rerank: bool = True, shortlist: int | None = None,
    ) -> list[Neighbor]:
        """The k nearest stored representations to an uploaded one (m stimuli × n units of the space's stimulus
        set): exact distances to the landmarks place it by landmark MDS, then FAISS shortlist and exact rerank."""
        check_k(k)
        space = self.space(space_id)
        kind = space.metric.kind
        values = check_representation(array, "upload", kind.input_ndim, kind.input_layout)
        n_stimuli = self.catalog.rows[space.rep_ids[0]]["n_stimuli"]
        if len(values) != n_stimuli:
            raise SurveyError(f"upload has {len(values)} stimuli but space {space.row['space_id']} is over "
                              f"{n_stimuli}; send responses to that stimulus set in its order")
        query = space.engine.prepare(space.engine.metric_input(values, space.row["conv_size"]), "upload")
        to_landmarks = space.engine.distances([query], self._landmarks(space))
        vector = space.embed(to_landmarks)
        candidates = space.shortlist(vector, _width(k, rerank, shortlist), keep, exclude=None)
        if rerank:
            candidates = self._rerank(space, lambda: query, candidates)
        return self._finish(candidates, k)

    def _rerank(self, space: Space, query: Callable[[], Prepared], candidates: list[Neighbor],
                item: int | None = None) -> list[Neighbor]:
        """The candidates with their exact distances to the query: stored ones where the query is the space's
        `item` and the survey has the pair, the rest computed by the metric on their arrays (batched)."""
        exact = np.full(len(candidates), np.nan)
        if item is not None:
            stored = space.stored_pairs(self._distances_version())
            exact = stored.lookup(item, np.array([space.item[c.rep_id] for c in candidates], dtype=np.int64))
        missing = np.flatnonzero(np.isnan(exact))
        if missing.size:
            prepared = self._prepared(space, [candidates[i].rep_id for i in missing])
            exact[missing] = space.engine.distances([query()], prepared)
        return [Neighbor(c.rep_id, float(d), exact=True) for c, d in zip(candidates, exact, strict=True)]

    def _finish(self, candidates: list[Neighbor], k: int) -> list[Neighbor]:
        ordered = sorted(candidates, key=lambda c: c.distance)[:k]
        metadata = self.metadata
        return [Neighbor(c.rep_id, c.distance, c.exact, metadata.get(c.rep_id, {})) for c in ordered]

    def _prepared(self, space: Space, rep_ids: list[str]) -> list[Prepared]:
        rows = self.catalog.rows
        return [load_prepared(space.engine, self.warehouse, rows[rep], space.row["conv_size"], store=False)
                for rep in rep_ids]  # a query service does not write to the warehouse

    def _landmarks(self, space: Space) -> list[Prepared]:
        """The space's landmarks prepared for its metric, kept for the life of the service: every upload needs all
        of them, whatever the shared cache has evicted for other queries' candidates."""
        if space.row["space_id"] not in self._landmark_cache:
            self._landmark_cache[space.row["space_id"]] = self._prepared(space, [space.rep_ids[i]
                                                                                 for i in space.landmarks])
        return self._landmark_cache[space.row["space_id"]]
