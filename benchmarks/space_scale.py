"""A space over a survey too big for all pairs: landmark rows only, landmark MDS, FAISS, exact rerank.

    python benchmarks/space_scale.py [--n 50000] [--stimuli 200] [--units 16] [--landmarks 200] [--dim 32]
        [--tile-size 2048] [--executor ray|local] [--compact-after 64] [--queries 50] [--latency-queries 200]
        [--workdir DIR]

N cheap synthetic representations (survey.sources.families: `--stimuli` × `--units`) go through the real stages:
`distances` with ``pairs: landmarks`` (maxmin landmarks picked round by round, each round's row spread over the
executor's actors) and `spaces` (landmark MDS from the L × N landmark rows only, FAISS flat index). Reports the
seconds of each stage, each landmark round's seconds (between the commits of consecutive picks; goal: the median of
the last 10 ≤ 1.3× the median of the first 10), the same L rows computed in this process without the stage (every
array prepared once, then one `ShapeMetric.distances` call per landmark; goal: the stage ≤ 1.5× that), the
driver's peak RSS while the stages run (sampled; goal ≤ 2 GB) and while the synthetic representations are written
(not the survey's: the generator holds them all), the stored rows against L·N − L(L+1)/2, and then, with
`SearchService` over the space: recall@10 with the exact rerank (and from the embedding alone) on `--queries` stored
queries against brute force (the exact distances from the query to all N, goal ≥ 0.95), and the p50/p90 latency of
`neighbors(rep, 10)` with rerank over `--latency-queries` other stored queries (goal p50 ≤ 20 ms). Prints one JSON
object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import numpy as np

from survey.catalog import Warehouse, connect
from survey.catalog.prepared import load_prepared
from survey.catalog.synthetic import write_representations
from survey.config import parse_config
from survey.metrics.shape import ShapeMetric
from survey.runtime.survey import run_survey
from survey.search.space import SearchService
from survey.sources.families import Synthetic
from survey.stages import RunInfo

K = 10
METRIC = {"metric": "linear", "alpha": 1.0}


def log(message: str) -> None:
    print(f"[space_scale] {message}", file=sys.stderr, flush=True)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextlib.contextmanager
def sampled_peak_rss(period_s: float = 0.2) -> Iterator[dict]:
    """This process's RSS sampled every `period_s` while the block runs: yields a dict that gets `peak_mib`,
    `end_mib` and `every_10_s_mib` (ru_maxrss cannot be reset, so it would count what ran before)."""
    result, stop, start = {"peak_mib": rss_mib(), "every_10_s_mib": []}, threading.Event(), time.monotonic()

    def sample() -> None:
        while not stop.wait(period_s):
            now = rss_mib()
            result["peak_mib"] = max(result["peak_mib"], now)
            if time.monotonic() - start >= 10 * len(result["every_10_s_mib"]):
                result["every_10_s_mib"].append(round(now))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["end_mib"] = rss_mib()
        result["peak_mib"] = max(result["peak_mib"], result["end_mib"])


def build(args: argparse.Namespace, warehouse: Warehouse) -> dict:
    synthetic = Synthetic(max(2, args.n // 25), args.stimuli, args.units, seed=0)
    log(f"writing {args.n} representations of {args.stimuli} × ~{args.units}")
    start = time.perf_counter()
    write_representations(warehouse, synthetic, synthetic.population(args.n), RunInfo("space-scale"))
    write_s = time.perf_counter() - start
    config = parse_config({
        "name": "space-scale",
        "executor": {"kind": args.executor, "num_workers": 2, "num_cpus_per_worker": 1},
        "distances": {"metrics": [METRIC], "stimuli": ["synthetic"], "pairs": "landmarks",
                      "landmarks": args.landmarks, "tile_size": args.tile_size},
        "spaces": {"build": [{"metric": METRIC, "stimuli": "synthetic", "dim": args.dim,
                              "landmarks": args.landmarks}]},
        "stages": ["distances", "spaces"],
        **({"catalog": {"compact_after": args.compact_after}} if args.compact_after else {}),
    })
    write_rss = peak_rss_mib()
    with sampled_peak_rss() as survey_rss:
        reports = run_survey(config, warehouse, progress=True)
    rows = connect(warehouse, ["shape_distances"]).execute("SELECT count(*) FROM shape_distances").fetchall()[0][0]
    L = args.landmarks
    rounds = round_seconds(warehouse)
    first, last = float(np.median(rounds[:10])), float(np.median(rounds[-10:]))
    stage_s = next(r.seconds for r in reports if r.stage == "distances")
    baseline = in_process_rows(warehouse)
    return {"write_representations_s": round(write_s, 1),
            "stages": {r.stage: {"seconds": round(r.seconds, 1), "units": r.units_run, "rows": r.rows}
                       for r in reports},
            "round_seconds": [round(x, 2) for x in rounds],
            "round_median_first_10_s": round(first, 2), "round_median_last_10_s": round(last, 2),
            "round_ratio_last_over_first": round(last / first, 3), "goal_round_ratio_le_1_3": last / first <= 1.3,
            "in_process": baseline,
            "stage_over_in_process": round(stage_s / baseline["seconds"], 3),
            "goal_stage_le_1_5x_in_process": stage_s <= 1.5 * baseline["seconds"],
            "stored_rows": rows, "expected_rows": L * args.n - L * (L + 1) // 2,
            "driver_peak_rss_mib_writing": round(write_rss),
            "driver_peak_rss_mib_surveying": round(survey_rss["peak_mib"]),
            "driver_rss_mib_after_survey": round(survey_rss["end_mib"]),
            "driver_rss_mib_every_10_s": survey_rss["every_10_s_mib"],
            "goal_driver_le_2gb": survey_rss["peak_mib"] <= 2048}


def round_seconds(warehouse: Warehouse) -> list[float]:
    """Seconds between the commits of consecutive landmark picks: one round (its row computed, the next picked)."""
    picks = sorted(entry["timestamp"] for entry in warehouse.delta("distance_landmarks").history()
                   if entry.get("operation") == "WRITE")
    return [(b - a) / 1e3 for a, b in itertools.pairwise(picks)]


def in_process_rows(warehouse: Warehouse) -> dict:
    """The stage's landmark rows computed here without it: every array prepared once, one call per row."""
    engine = ShapeMetric(METRIC["metric"], METRIC["alpha"], "angular", True, "cpu")
    reps = {row["rep_id"]: row for row in warehouse.rows("representations")}
    sequence = [row["rep_id"] for row in sorted(warehouse.rows("distance_landmarks"), key=lambda row: row["round"])]
    start = time.perf_counter()
    prepared = {rep: engine.prepare(warehouse.load_array(row["array_uri"]), rep) for rep, row in reps.items()}
    loaded = time.perf_counter()
    earlier: set[str] = set()
    for landmark in sequence:
        earlier.add(landmark)
        engine.distances([prepared[landmark]], [prepared[rep] for rep in reps if rep not in earlier])
    computed = time.perf_counter()
    log(f"in process: prepared {len(prepared)} arrays in {loaded - start:.1f} s, {len(sequence)} rows in "
        f"{computed - loaded:.1f} s")
    return {"seconds": round(computed - start, 1), "prepare_s": round(loaded - start, 1),
            "rows_s": round(computed - loaded, 1)}


def search(args: argparse.Namespace, warehouse: Warehouse) -> dict:
    service = SearchService(warehouse)
    space = service.space()
    rows = service.catalog.rows
    engine = ShapeMetric("linear", 1.0, "angular", True, "cpu")
    rng = np.random.default_rng(1)
    picks = rng.choice(len(space.rep_ids), size=args.queries + args.latency_queries + 5, replace=False)
    recall_queries, latency_queries = picks[:args.queries], picks[args.queries:]
    log(f"preparing all {len(space.rep_ids)} representations for brute force")
    everything = [load_prepared(engine, warehouse, rows[rep], None) for rep in space.rep_ids]
    reranked, embedded = [], []
    for count, q in enumerate(recall_queries):
        exact = engine.distances([everything[q]], everything)
        exact[q] = np.inf
        truth = {space.rep_ids[i] for i in np.argsort(exact, kind="stable")[:K]}
        found = service.neighbors(space.rep_ids[q], K)
        reranked.append(len(truth & {n.rep_id for n in found}) / K)
        alone = service.neighbors(space.rep_ids[q], K, rerank=False)
        embedded.append(len(truth & {n.rep_id for n in alone}) / K)
        if (count + 1) % 10 == 0:
            log(f"recall queries {count + 1}/{len(recall_queries)}: {np.mean(reranked):.3f}")
    seconds = []
    for q in latency_queries:
        start = time.perf_counter()
        service.neighbors(space.rep_ids[q], K)
        seconds.append(time.perf_counter() - start)
    seconds = seconds[5:]  # the first queries load the space and warm the catalog
    return {"space": {key: space.row[key] for key in ("n_items", "dim", "n_landmarks", "landmarks_from",
                                                      "negative_mass", "stress", "stress_pairs")},
            "recall_at_10": {"rerank": round(float(np.mean(reranked)), 4),
                             "embedding_only": round(float(np.mean(embedded)), 4), "queries": len(reranked)},
            "neighbors_latency_ms": {"p50": round(float(np.median(seconds)) * 1e3, 2),
                                     "p90": round(float(np.percentile(seconds, 90)) * 1e3, 2),
                                     "queries": len(seconds)},
            "goal_recall_ge_0_95": float(np.mean(reranked)) >= 0.95,
            "goal_p50_le_20ms": float(np.median(seconds)) <= 0.020}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--stimuli", type=int, default=200)
    parser.add_argument("--units", type=int, default=16)
    parser.add_argument("--landmarks", type=int, default=200)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--tile-size", type=int, default=2048)
    parser.add_argument("--executor", choices=["ray", "local"], default="ray")
    parser.add_argument("--compact-after", type=int, default=None, help="catalog.compact_after (default: the config's)")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="space-scale-", dir=args.workdir) as root:
        warehouse = Warehouse(root)
        result = {"n": args.n, "cpus": len(os.sched_getaffinity(0)), "executor": args.executor,
                  "build": build(args, warehouse)}
        result["search"] = search(args, warehouse)
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
