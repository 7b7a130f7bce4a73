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
(local executor) fills `shape_distances`, the real `spaces` stage embeds and indexes them, and then
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
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from survey.catalog import Warehouse, connect
from survey.catalog.synthetic import write_representations
from survey.config import DistanceMetric, DistancesConfig, ExecutorConfig, SpacesConfig, SpaceSpec, SurveyConfig
from survey.metrics.shape import ShapeMetric
from survey.runtime.survey import run_survey
from survey.search.space import SHORTLIST, Neighbor, SearchService, Space
from survey.sources.families import Synthetic
from survey.stages import RunInfo

K = 10
METRIC = DistanceMetric(metric="linear", alpha=1.0, score="angular", center=True)
STIMSET = "synthetic"
CURVE = (10, 15, 20, 30, 40, 60, 80, 100, 150, 200, 300)
def log(message: str) -> None:
    print(f"[search_recall] {message}", file=sys.stderr, flush=True)


def build_space(warehouse: Warehouse, stimset: str, dim: int, landmarks: int, threads: int = 1) -> tuple[dict, float]:
    """Run the `spaces` stage for METRIC on `stimset`; returns the space's row and the seconds it took."""
    spec = SpaceSpec(metric=METRIC, stimuli=stimset, dim=dim, landmarks=landmarks)
    config = SurveyConfig(name="search-recall-space", executor=ExecutorConfig(kind="local", threads_per_worker=threads),
                          spaces=SpacesConfig(build=(spec,)), stages=("spaces",))
    start = time.perf_counter()
    run_survey(config, warehouse, progress=False)
    seconds = time.perf_counter() - start
    return max((r for r in warehouse.rows("spaces") if r["name"] == spec.label), key=lambda r: r["created"]), seconds


def stored_matrix(warehouse: Warehouse, stimset_id: str) -> tuple[list[str], np.ndarray]:
    """Brute-force ground truth: the ids of the representations METRIC compares on `stimset_id` (sorted) and their
    full N × N matrix from `shape_distances`, read as Arrow columns (a benchmark's check, not the engine's path)."""
    pairs = connect(warehouse, ["shape_distances"]).sql(
        f"""SELECT rep_a, rep_b, distance FROM shape_distances WHERE stimset_id = '{stimset_id}'
            AND metric = '{METRIC.metric}' AND alpha = {METRIC.alpha} AND score_method = '{METRIC.score}'
            AND center = {METRIC.center}""").to_arrow_table()
    ids = sorted(set(pairs["rep_a"].to_pylist()) | set(pairs["rep_b"].to_pylist()))
    index = {rep: i for i, rep in enumerate(ids)}
    rows = np.array([index[rep] for rep in pairs["rep_a"].to_pylist()])
    cols = np.array([index[rep] for rep in pairs["rep_b"].to_pylist()])
    matrix = np.zeros((len(ids), len(ids)))
    matrix[rows, cols] = matrix[cols, rows] = pairs["distance"].to_numpy()
    return ids, matrix


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


DEFAULT_SHORTLIST = max(10 * K, SHORTLIST)  # what SearchService uses when `shortlist` is not given


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
    keys = ("space_id", "n_items", "dim", "n_landmarks", "landmarks_from", "negative_mass", "stress", "stress_pairs")
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
    arrays = write_representations(warehouse, synthetic, population, RunInfo(uuid.uuid4().hex[:16]), STIMSET)
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
    ids, matrix = stored_matrix(warehouse, stimset_id)
    families = {r["rep_id"]: r["source_id"] for r in warehouse.rows("representations")}

    engine = ShapeMetric(METRIC.metric, METRIC.alpha, METRIC.score, METRIC.center, "cpu")
    stored = [engine.prepare(arrays[rep], rep) for rep in ids]
    check = np.random.default_rng(args.seed).choice(len(ids), size=min(20, len(ids)), replace=False)
    recomputed = engine.distances([stored[i] for i in check], stored).reshape(len(check), len(ids))
    catalog_error = float(np.abs(recomputed - matrix[check]).max())

    log("spaces stage")
    row, build_s = build_space(warehouse, STIMSET, args.dim, args.landmarks, args.threads)
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
        row, build_s = build_space(warehouse, "natural", args.dim, args.landmarks)
    ids, matrix = stored_matrix(warehouse, row["stimset_id"])
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
