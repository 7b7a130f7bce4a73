"""Recall@10 of nearest-representation search (shortlist + exact rerank) against exact brute-force metric search.

    python benchmarks/search_recall.py [--n 2000] [--families 100] [--stimuli 200] [--units 24] [--dim 32]
        [--landmarks 200] [--queries 200] [--demo-warehouse catalogs/warehouse] [--seed 0] [--threads CORES]

Prints one JSON object (progress goes to stderr). Metric: linear, alpha = 1 (Procrustes), angular.

(b) synthetic: a real warehouse in a temporary directory holds one stimulus set ("synthetic": m random stimulus
features) and N representations in families. A family is a base response matrix φ(S W) of `--units`/2 latent
dimensions (S: the stimulus features; W: the family's weights, drawn around its super-family's weights, so
families have relatives; φ: a random nonlinearity and gain). A member mixes the base by a random near-identity
invertible matrix, embeds it in 2/3, 1 or 4/3 × `--units` units by a random isometry, and adds noise; mixing
strength and noise grow along the family (graded levels, family-specific scale). The real `distances` stage
(local executor) fills `shape_distances`, `build_space` embeds and indexes them, and then
  (i) stored queries: `SearchService.neighbors(rep, 10)` with the default shortlist, at shortlists 20 and 100,
      and with `rerank=False` (the embedding alone), against the exact top 10 of the catalog's distance matrix;
  (ii) out-of-sample queries: fresh members not in the space, `SearchService.search(array, 10)` (landmark MDS
      placement, then shortlist and rerank) against exact distances to all N stored representations computed
      with `survey.metrics.shape`.
`shortlist_curve` is the recall@10 an exact rerank of the k' embedded nearest would get, from the embedding
vectors themselves, and `shortlist_needed` the k' each query needs to hold its whole exact top 10.

(a) demo: the newest linear alpha=1 angular space of the `natural` stimulus set in `--demo-warehouse` (built
there with --dim/--landmarks when the distances exist but no space does), every representation as a query.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from survey.catalog import Warehouse
from survey.config import DistanceMetric, DistancesConfig, ExecutorConfig, SurveyConfig
from survey.hashing import array_hash, canonical_json, content_key
from survey.metrics.shape import ShapeMetric
from survey.runtime.survey import run_survey
from survey.search.space import Neighbor, SearchService, Space, build_space, distance_matrix
from survey.stages import RunInfo

K = 10
METRIC = DistanceMetric(metric="linear", alpha=1.0, score="angular", center=True)
STIMSET = "synthetic"
CURVE = (10, 15, 20, 30, 40, 60, 80, 100, 150, 200, 300)
NONLINEARITIES = {
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "softplus": lambda x: np.logaddexp(0.0, x),
    "sin": np.sin,
    "abs": np.abs,
    "cubic": lambda x: x**3 / (1.0 + x**2),
}


def log(message: str) -> None:
    print(f"[search_recall] {message}", file=sys.stderr, flush=True)


# ---- synthetic representations ----------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    name: str
    superfamily: int
    nonlinearity: str
    base: np.ndarray  # m × latent, zero-mean columns
    noise: float  # noise at the top of the family's graded levels, relative to the signal's RMS
    mixing: float  # strength of the non-orthogonal mixing at the top level


class Synthetic:
    """Families of related representations over one set of random stimulus features (see the module docstring)."""

    def __init__(self, n_families: int, n_stimuli: int, units: int, seed: int, n_features: int = 16,
                 family_size: int = 10) -> None:
        rng = np.random.default_rng(seed)
        self.rng = np.random.default_rng(seed + 1)
        self.units, self.latent = units, max(2, units // 2)
        self.widths = sorted({max(self.latent, round(units * 2 / 3)), units, round(units * 4 / 3)})
        self.features = rng.normal(size=(n_stimuli, n_features))
        supers = rng.normal(size=(max(1, n_families // family_size), n_features, self.latent)) / np.sqrt(n_features)
        self.families = []
        for f in range(n_families):
            superfamily = f % len(supers)
            weights = supers[superfamily] + 0.6 * rng.normal(size=supers[superfamily].shape) / np.sqrt(n_features)
            name = sorted(NONLINEARITIES)[rng.integers(len(NONLINEARITIES))]
            base = NONLINEARITIES[name](rng.uniform(0.5, 2.0) * self.features @ weights)
            self.families.append(Family(f"synfam-{f:04d}", superfamily, name, base - base.mean(axis=0),
                                        noise=float(rng.uniform(0.2, 1.0)), mixing=float(rng.uniform(0.1, 0.6))))

    def member(self, family: Family, level: float, width: int | None = None) -> tuple[np.ndarray, dict]:
        """One member at `level` in (0, 1]: base · (I + level·mixing·G) · isometry into `width` units + noise."""
        rng = self.rng
        width = width or int(rng.choice(self.widths))
        mix = np.eye(self.latent) + level * family.mixing * rng.normal(size=(self.latent, self.latent)) / np.sqrt(
            self.latent)
        isometry = np.linalg.qr(rng.normal(size=(width, self.latent)))[0].T  # latent × width, orthonormal rows
        signal = family.base @ mix @ isometry
        sigma = level * family.noise * np.sqrt((signal**2).mean())
        array = (signal + sigma * rng.normal(size=signal.shape)).astype(np.float32)
        return array, {"family": family.name, "superfamily": family.superfamily, "level": round(float(level), 4),
                       "width": width, "nonlinearity": family.nonlinearity}

    def population(self, n: int) -> list[tuple[np.ndarray, dict]]:
        """n members spread over the families; within a family the levels are graded from low to high."""
        sizes = np.full(len(self.families), n // len(self.families))
        sizes[: n % len(self.families)] += 1
        out = []
        for family, size in zip(self.families, sizes, strict=True):
            out += [self.member(family, (j + 1) / size) for j in range(size)]
        return out

    def fresh(self, count: int) -> list[tuple[np.ndarray, dict]]:
        """Out-of-sample members: random families, levels and widths."""
        picks = self.rng.integers(len(self.families), size=count)
        return [self.member(self.families[f], float(self.rng.uniform(0.05, 1.0))) for f in picks]


def write_synthetic(warehouse: Warehouse, synthetic: Synthetic, population: list[tuple[np.ndarray, dict]]) -> dict:
    """The stimulus-set row and one `representations` row + stored array per member; returns {rep_id: array}."""
    info = RunInfo(uuid.uuid4().hex[:16])
    features = synthetic.features.astype(np.float32)
    m, p = features.shape
    digest = array_hash(features)
    buffer = io.BytesIO()
    np.savez(buffer, images=features.reshape(m, p, 1, 1), labels=np.zeros(m, np.int64),
             coords=np.zeros((m, 0), np.float32), features=features)
    uri = warehouse.put_bytes(f"arrays/{digest[:32]}.npz", buffer.getvalue())
    params = {"name": STIMSET, "kind": "synthetic", "n": m, "n_features": p, "distribution": "standard normal"}
    stimset_id = content_key("stim", params, digest)
    warehouse.append_unit("stimulus_sets", stimset_id, [{
        "stimset_id": stimset_id, "name": STIMSET, "kind": "synthetic", "n_images": m, "height": 1, "width": 1,
        "channels": p, "params": canonical_json(params), "content_hash": digest, "uri": uri, **info.provenance(),
    }])
    rows, arrays, counters = [], {}, {}
    for array, meta in population:
        index = counters[meta["family"]] = counters.get(meta["family"], -1) + 1
        array_uri, content_hash = warehouse.put_array(array)
        rep_id = content_key("rep", meta["family"], index, content_hash)
        arrays[rep_id] = array
        rows.append({
            "rep_id": rep_id, "source_kind": "network", "source_id": meta["family"], "source_name": meta["family"],
            "layer_or_area": f"member{index:03d}", "layer_index": index, "depth": meta["level"],
            "stimset_id": stimset_id, "n_stimuli": m, "n_units": array.shape[1], "array_uri": array_uri,
            "spatial_uri": None, "repeats_uri": None, "n_repeats": None, "preprocessing": canonical_json(meta),
            "content_hash": content_hash, **info.provenance(),
        })
    warehouse.append_unit("representations", content_key("reps", [r["rep_id"] for r in rows]), rows)
    return arrays


# ---- measurement ----------------------------------------------------------------------------------------


def recall(found: list[str], truth: list[str]) -> float:
    return len(set(found) & set(truth)) / len(truth)


def p50_ms(seconds: list[float]) -> float | None:
    return round(float(np.median(seconds)) * 1e3, 3) if seconds else None


def embedded_vectors(space: Space) -> np.ndarray:
    return np.stack([space.index.reconstruct(i) for i in range(space.index.ntotal)]).astype(np.float64)


class ShortlistStats:
    """Per query: the embedding rank of each exact top-10 item → recall@10 after rerank at any shortlist k'."""

    def __init__(self) -> None:
        self.ranks: list[np.ndarray] = []

    def add(self, embedded: np.ndarray, exact: np.ndarray, exclude: int | None = None) -> None:
        embedded, exact = embedded.astype(np.float64).copy(), exact.astype(np.float64).copy()
        if exclude is not None:
            embedded[exclude] = exact[exclude] = np.inf
        position = np.empty(len(embedded), np.int64)
        position[np.argsort(embedded, kind="stable")] = np.arange(len(embedded))
        self.ranks.append(np.sort(position[np.argsort(exact, kind="stable")[:K]]))

    def recall_at(self, shortlist: int) -> float:
        return float(np.mean([(ranks < shortlist).mean() for ranks in self.ranks]))

    def summary(self, n_candidates: int) -> dict:
        needed = np.array([ranks[-1] + 1 for ranks in self.ranks])
        sizes = [s for s in CURVE if s < n_candidates] + [n_candidates]

        def smallest(target: float) -> int:
            return next(s for s in range(K, n_candidates + 1) if self.recall_at(s) >= target - 1e-12)

        return {
            "shortlist_curve": {str(s): round(self.recall_at(s), 4) for s in sizes},
            "shortlist_needed": {  # k' that holds a query's whole exact top 10
                "p50": int(np.percentile(needed, 50)), "p90": int(np.percentile(needed, 90)),
                "p95": int(np.percentile(needed, 95)), "max": int(needed.max()),
            },
            "smallest_shortlist_for_mean_recall": {"0.95": smallest(0.95), "0.99": smallest(0.99),
                                                   "1.0": smallest(1.0)},
        }


DEFAULT_SHORTLIST = max(4 * K, 40)  # what SearchService uses when `shortlist` is not given


def measure(call: Callable[..., list[Neighbor]], queries: list, truths: list[list[str]],
            exact_of: Callable[[int, str], float], shortlists: tuple[int, ...], what: str) -> dict:
    """Recall@10 of `call(query, **options)` for each option set, latency of the default and the embedding alone.

    The timed variants run in a pass of their own, first: interleaving larger shortlists would evict the
    landmarks' prepared representations from the shared 256-entry cache and time reloads instead.
    """
    passes = [[("rerank", {}), ("embedding_only", {"rerank": False})],
              [(f"rerank_{s}", {"shortlist": s}) for s in shortlists]]
    recalls: dict[str, list[float]] = {}
    latency: dict[str, list[float]] = {"rerank": [], "embedding_only": []}
    mismatches, inexact, max_error = 0, 0, 0.0
    for variants in passes:
        for count, (query, truth) in enumerate(zip(queries, truths, strict=True)):
            for name, options in variants:
                start = time.perf_counter()
                found = call(query, **options)
                if name in latency:
                    latency[name].append(time.perf_counter() - start)
                recalls.setdefault(name, []).append(recall([n.rep_id for n in found], truth))
                reranked = options.get("rerank", True)
                inexact += sum(n.exact != reranked for n in found)
                if reranked:
                    errors = [abs(n.distance - exact_of(count, n.rep_id)) for n in found]
                    max_error = max(max_error, *errors)
                    mismatches += int(sum(e > 1e-9 for e in errors))
            if (count + 1) % 50 == 0:
                log(f"  {what} queries {count + 1}/{len(queries)} ({', '.join(name for name, _ in variants)})")
    return {
        "queries": len(queries),
        "recall_at_10": {
            f"rerank_default_shortlist_{DEFAULT_SHORTLIST}": round(float(np.mean(recalls["rerank"])), 4),
            "embedding_only": round(float(np.mean(recalls["embedding_only"])), 4),
            **{f"rerank_shortlist_{s}": round(float(np.mean(recalls[f"rerank_{s}"])), 4) for s in shortlists},
        },
        "min_query_recall_rerank": round(float(np.min(recalls["rerank"])), 4),
        "latency_p50_ms": {"rerank": p50_ms(latency["rerank"]), "embedding_only": p50_ms(latency["embedding_only"])},
        "rerank_distance_mismatches": mismatches,  # reranked distances that differ from the exact ones by > 1e-9
        "rerank_max_abs_error": max_error,
        "wrong_exact_flags": inexact,
    }


def measure_stored(service: SearchService, space: Space, ids: list[str], matrix: np.ndarray, queries: list[int],
                   shortlists: tuple[int, ...] = (20, 100)) -> dict:
    """`neighbors` for stored queries against the exact top 10 of the catalog's `matrix` (rows/cols = `ids`)."""
    space_id = space.row["space_id"]
    vectors = embedded_vectors(space)
    assert space.rep_ids == ids, "space items and distance matrix disagree"
    position = {rep: i for i, rep in enumerate(ids)}
    stats, truths = ShortlistStats(), []
    for q in queries:
        exact = matrix[q].copy()
        exact[q] = np.inf
        truths.append([ids[i] for i in np.argsort(exact, kind="stable")[:K]])
        stats.add(np.linalg.norm(vectors - vectors[q], axis=1), matrix[q], exclude=q)
    result = measure(lambda rep, **options: service.neighbors(rep, K, space_id=space_id, **options),
                     [ids[q] for q in queries], truths, lambda i, rep: matrix[queries[i], position[rep]],
                     shortlists, "stored")
    return {**result, **stats.summary(len(ids) - 1)}


def measure_out_of_sample(service: SearchService, space: Space, ids: list[str], stored: list, fresh: list,
                          engine: ShapeMetric, shortlists: tuple[int, ...] = (20, 100)) -> dict:
    """`search` for arrays not in the space against exact distances to every stored representation."""
    space_id = space.row["space_id"]
    vectors = embedded_vectors(space)
    position = {rep: i for i, rep in enumerate(ids)}
    stats, truths, exacts = ShortlistStats(), [], []
    for array, _ in fresh:
        exact = engine.distances([engine.prepare(array, "query")], stored)
        exacts.append(exact)
        truths.append([ids[i] for i in np.argsort(exact, kind="stable")[:K]])
        placed = space.embed(exact[space.landmarks]).astype(np.float64)
        stats.add(np.linalg.norm(vectors - placed, axis=1), exact)
    result = measure(lambda array, **options: service.search(array, K, space_id=space_id, **options),
                     [array for array, _ in fresh], truths, lambda i, rep: exacts[i][position[rep]],
                     shortlists, "out-of-sample")
    return {**result, **stats.summary(len(ids))}


def space_summary(row: dict, build_s: float | None) -> dict:
    keys = ("space_id", "n_items", "dim", "n_landmarks", "mds_stress", "negative_mass", "stress")
    return {**{key: row[key] for key in keys}, "build_s": None if build_s is None else round(build_s, 3)}


def structure(ids: list[str], families: dict[str, str], matrix: np.ndarray) -> dict:
    """How much family structure the exact neighbours show."""
    exact = matrix.copy()
    np.fill_diagonal(exact, np.inf)
    top = np.argsort(exact, axis=1, kind="stable")[:, :K]
    same = np.mean([[families[ids[j]] == families[ids[i]] for j in row] for i, row in enumerate(top)])
    upper = matrix[np.triu_indices(len(ids), k=1)]
    return {"exact_top10_same_family_share": round(float(same), 4),
            "distance_quantiles_rad": {q: round(float(np.quantile(upper, float(q))), 4)
                                       for q in ("0.001", "0.01", "0.1", "0.5", "0.9")}}


def run_synthetic(args: argparse.Namespace, root: str) -> dict:
    warehouse = Warehouse(root)
    synthetic = Synthetic(args.families, args.stimuli, args.units, args.seed)
    log(f"synthetic: {args.n} representations in {args.families} families, {args.stimuli} stimuli, widths "
        f"{synthetic.widths}; warehouse {root}")
    population = synthetic.population(args.n)
    fresh = synthetic.fresh(args.queries)
    arrays = write_synthetic(warehouse, synthetic, population)
    config = SurveyConfig(
        name="search-recall", executor=ExecutorConfig(kind="local", threads_per_worker=args.threads),
        distances=DistancesConfig(metrics=(METRIC,), stimuli=(STIMSET,), tile_size=128), stages=("distances",),
    )
    log("distances stage")
    start = time.perf_counter()
    (report,) = run_survey(config, warehouse, progress=True)
    distances_s = time.perf_counter() - start
    n_pairs = args.n * (args.n - 1) // 2
    stimset_id = next(r["stimset_id"] for r in warehouse.rows("stimulus_sets") if r["name"] == STIMSET)
    reps, matrix = distance_matrix(warehouse, METRIC, stimset_id)
    ids = [r["rep_id"] for r in reps]
    families = {r["rep_id"]: r["source_id"] for r in reps}

    engine = ShapeMetric(METRIC.metric, METRIC.alpha, METRIC.score, METRIC.center, "cpu")
    stored = [engine.prepare(arrays[rep], rep) for rep in ids]
    check = np.random.default_rng(args.seed).choice(len(ids), size=min(20, len(ids)), replace=False)
    recomputed = engine.distances([stored[i] for i in check], stored).reshape(len(check), len(ids))
    catalog_error = float(np.abs(recomputed - matrix[check]).max())

    log("build_space")
    start = time.perf_counter()
    row = build_space(warehouse, METRIC, STIMSET, RunInfo(uuid.uuid4().hex[:16]), args.dim, args.landmarks)
    build_s = time.perf_counter() - start
    service = SearchService(warehouse)
    space = service.space(row["space_id"])
    queries = sorted(np.random.default_rng(args.seed + 2).choice(len(ids), size=min(args.queries, len(ids)),
                                                                 replace=False).tolist())
    log(f"stored queries ({len(queries)})")
    stored_result = measure_stored(service, space, ids, matrix, queries)
    log(f"out-of-sample queries ({len(fresh)})")
    oos_result = measure_out_of_sample(service, space, ids, stored, fresh, engine)
    return {
        "n": args.n, "families": args.families, "stimuli": args.stimuli, "widths": synthetic.widths,
        "latent_dims": synthetic.latent, "seed": args.seed,
        "structure": structure(ids, families, matrix),
        "distances_stage": {"seconds": round(distances_s, 2), "pairs": n_pairs, "tiles": report.units_run,
                            "pairs_per_s": round(n_pairs / distances_s), "threads": args.threads},
        "catalog_vs_recomputed_max_abs_diff": catalog_error,
        "space": space_summary(row, build_s),
        "stored": stored_result,
        "out_of_sample": oos_result,
    }


def run_demo(args: argparse.Namespace) -> dict:
    path = args.demo_warehouse
    if not path or not Path(path).is_dir():
        return {"skipped": f"no warehouse at {path!r}; run `survey demo` first"}
    warehouse = Warehouse(path)
    sets = {r["stimset_id"]: r["name"] for r in warehouse.rows("stimulus_sets")}
    rows = [r for r in warehouse.rows("spaces") if sets.get(r["stimset_id"]) == "natural" and r["metric"] == "linear"
            and r["alpha"] == 1.0 and r["score_method"] == "angular" and r["center"]]
    build_s = None
    if rows:
        row = max(rows, key=lambda r: r["created"])
    else:
        log("demo: no linear alpha=1 natural space; building one")
        start = time.perf_counter()
        row = build_space(warehouse, METRIC, "natural", RunInfo(uuid.uuid4().hex[:16]), args.dim, args.landmarks)
        build_s = time.perf_counter() - start
    reps, matrix = distance_matrix(warehouse, METRIC, row["stimset_id"])
    ids = [r["rep_id"] for r in reps]
    service = SearchService(warehouse)
    space = service.space(row["space_id"])
    log(f"demo: {len(ids)} stored queries")
    return {"warehouse": str(Path(path).absolute()), "space": space_summary(row, build_s),
            "stored": measure_stored(service, space, ids, matrix, list(range(len(ids))))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--families", type=int, default=100)
    parser.add_argument("--stimuli", type=int, default=200)
    parser.add_argument("--units", type=int, default=24)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--landmarks", type=int, default=200)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--demo-warehouse", default="catalogs/warehouse")
    parser.add_argument("--workdir", default=None, help="keep the synthetic warehouse here (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    started = time.perf_counter()
    if args.workdir:
        synthetic = run_synthetic(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="search-recall-") as root:
            synthetic = run_synthetic(args, root)
    demo = run_demo(args)
    print(json.dumps({"k": K, "metric": METRIC.label, "dim": args.dim, "landmarks": args.landmarks,
                      "synthetic": synthetic, "demo": demo, "total_s": round(time.perf_counter() - started, 1)}))


if __name__ == "__main__":
    main()
