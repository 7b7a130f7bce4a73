"""Incremental all-pairs: a survey of N representations grows by a few; only the new pairs are computed.

    python benchmarks/survey_growth.py [--n 2000] [--added 20] [--stimuli 50] [--units 8] [--tile-size 64]
        [--plan-n 10000] [--threads CORES] [--workdir DIR]

1. `growth`: N synthetic representations (survey.sources.families) go through the real `distances` stage (linear,
   alpha = 1, local executor); then `--added` more, and the stage again. Reports the pairs each run computed (rows
   it committed) against the new pairs added × old + added choose 2, the seconds of each run, and the stored row
   count against N(N−1)/2 (by SQL, with the number of distinct natural keys). Goal: second run ≤ 2 × the new
   pairs; stored count exact.
2. `planning`: the seconds `DistancesStage.plan` takes over `--plan-n` representations for one metric
   configuration, on the first plan (which also commits the blocks) and on a later one. Goal ≤ 5 s.
Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from survey.catalog import Warehouse, connect
from survey.catalog.synthetic import write_representations
from survey.config import parse_config
from survey.runtime.survey import run_survey
from survey.sources.families import Synthetic
from survey.stages import RunInfo
from survey.stages.distances import DistancesStage


def log(message: str) -> None:
    print(f"[survey_growth] {message}", file=sys.stderr, flush=True)


def config(tile_size: int, threads: int) -> object:
    return parse_config({"name": "growth", "executor": {"kind": "local", "threads_per_worker": threads},
                         "distances": {"metrics": [{"metric": "linear", "alpha": 1.0}], "stimuli": ["synthetic"],
                                       "tile_size": tile_size}, "stages": ["distances"]})


def members(synthetic: Synthetic, n: int) -> list:
    return [synthetic.member(synthetic.families[i % len(synthetic.families)], (i // len(synthetic.families) % 9 + 1)
                             / 9) for i in range(n)]


def growth(args: argparse.Namespace, root: str) -> dict:
    warehouse = Warehouse(root)
    synthetic = Synthetic(max(2, args.n // 20), args.stimuli, args.units, seed=0)
    write_representations(warehouse, synthetic, members(synthetic, args.n), RunInfo("growth-1"))
    runs = []
    n_old = 0
    for n_new in (args.n, args.added):
        if runs:
            write_representations(warehouse, synthetic, members(synthetic, n_new), RunInfo("growth-2"))
        log(f"distances over {n_old} + {n_new} representations")
        start = time.perf_counter()
        (report,) = run_survey(config(args.tile_size, args.threads), warehouse, progress=True)
        seconds = time.perf_counter() - start
        new_pairs = n_new * n_old + n_new * (n_new - 1) // 2
        computed = report.rows.get("shape_distances", 0)
        runs.append({"old": n_old, "added": n_new, "new_pairs": new_pairs, "pairs_computed": computed,
                     "computed_over_new": round(computed / new_pairs, 4), "tiles_run": report.units_run,
                     "tiles_total": report.units_total, "seconds": round(seconds, 2),
                     "pairs_per_s": round(computed / seconds)})
        n_old += n_new
    rows, distinct = connect(warehouse, ["shape_distances"]).execute(
        "SELECT count(*), count(DISTINCT (metric, alpha, score_method, stimset_id, rep_a, rep_b)) "
        "FROM shape_distances").fetchall()[0]
    return {"runs": runs, "stored_rows": rows, "distinct_natural_keys": distinct,
            "expected_rows": n_old * (n_old - 1) // 2, "second_over_first_seconds":
            round(runs[1]["seconds"] / runs[0]["seconds"], 4),
            "goal_second_run_le_2x_new_pairs": runs[1]["computed_over_new"] <= 2.0,
            "goal_stored_exact": rows == distinct == n_old * (n_old - 1) // 2}


def planning(args: argparse.Namespace, root: str) -> dict:
    warehouse = Warehouse(root)
    synthetic = Synthetic(max(2, args.plan_n // 20), args.stimuli, args.units, seed=1)
    log(f"planning: writing {args.plan_n} representations")
    write_representations(warehouse, synthetic, members(synthetic, args.plan_n), RunInfo("plan"))
    stage = DistancesStage(config(args.tile_size, args.threads))
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        units = stage.plan(warehouse, RunInfo("plan"))
        timings.append(time.perf_counter() - start)
    return {"representations": args.plan_n, "tiles": len(units), "first_plan_s": round(timings[0], 3),
            "later_plan_s": round(timings[1], 3), "goal_le_5s": max(timings) <= 5.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--added", type=int, default=20)
    parser.add_argument("--stimuli", type=int, default=50)
    parser.add_argument("--units", type=int, default=8)
    parser.add_argument("--tile-size", type=int, default=64)
    parser.add_argument("--plan-n", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="survey-growth-", dir=args.workdir) as root:
        result = {"growth": growth(args, f"{root}/growth"), "planning": planning(args, f"{root}/planning")}
    print(json.dumps({"cpus": len(os.sched_getaffinity(0)), "tile_size": args.tile_size, **result}, indent=1))


if __name__ == "__main__":
    main()
