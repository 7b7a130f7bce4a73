"""Ray scaling of the all-pairs distances stage: throughput (pairs/s) in this process, on 1 and on 2 single-CPU Ray
actors, and Ray's overhead per unit of work, all in one run on copies of the same catalog (goal: 2 actors ≥ 1.7 × 1
actor on 2 cores).

    python -m benchmarks.ray_scaling [--architectures 8] [--tile-size 8] [--stimuli 1000]

A survey of untrained zoo networks and synthetic sessions is built once up to its activations; then each executor
runs the planned units of the `distances` stage (linear metric, alpha 0.5 and 1; torch at one thread per worker) on
its own copy, through the executor's `map` as `run_survey` does. The Ray runs join a local cluster started
beforehand. Each run is timed twice: whole (from the first unit handed out to the last result, so it counts the
actors' start, a process that imports torch) and in steady state (from the first result to the last: pairs that
arrived after the first result over that time), which is the throughput of a long survey, whose pool starts once.
Prints JSON: per run the units, pairs, seconds, pairs per second both ways and the seconds to the first result; the
speed-up of 2 actors over 1 both ways (the goal is judged on the steady state); the overhead per unit (1 actor −
in process, steady state, per unit); and the round trip of an empty actor call.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from survey.catalog import Warehouse
from survey.config import parse_config
from survey.runtime.executors import make_executor
from survey.runtime.survey import STAGES, run_survey
from survey.stages import RunInfo

BEFORE = ("stimuli", "networks", "sessions", "activations")
GOAL = 1.7


def survey(architectures: int, tile_size: int, stimuli: int, executor: dict) -> dict:
    return {
        "name": "ray-scaling",
        "executor": executor,
        "stimuli": [{"name": "natural", "kind": "natural", "n": stimuli, "size": 32, "seed": 0}],
        "zoo": {"n_architectures": architectures, "objectives": ["untrained"]},
        "sessions": {"synthetic": {"n": 2, "subjects": 2, "units_per_area": 40, "repeats": 2,
                                   "stimuli": ["natural"]}},
        "activations": {"stimuli": ["natural"]},
        "distances": {"stimuli": ["natural"], "tile_size": tile_size,
                      "metrics": [{"metric": "linear", "alpha": 0.5}, {"metric": "linear", "alpha": 1.0}]},
    }


def timed_distances(config: dict, warehouse: Warehouse) -> dict:
    """Run every planned distances unit on the config's executor; whole and steady-state timings."""
    survey_config = parse_config(config)
    stage, info = STAGES["distances"](survey_config), RunInfo(run_id="ray-scaling")
    units = stage.plan(warehouse, info)
    executor = make_executor(survey_config.executor)
    arrivals = []  # (seconds since start, pairs) per finished unit
    try:
        start = time.perf_counter()
        for result in executor.map(stage, units, warehouse, info):
            arrivals.append((time.perf_counter() - start, result.get(stage.table, 0)))
    finally:
        executor.close()
    pairs = sum(count for _, count in arrivals)
    seconds, first = arrivals[-1][0], arrivals[0][0]
    steady_pairs = pairs - arrivals[0][1]
    return {"units": len(units), "pairs": pairs, "seconds": round(seconds, 2),
            "pairs_per_second": round(pairs / seconds, 2), "first_result_s": round(first, 2),
            "steady_pairs_per_second": round(steady_pairs / (seconds - first), 2)}


def round_trip(calls: int = 200) -> float:
    """Seconds per call of an empty method of a Ray actor (submit, run, return), on the cluster already joined."""
    import ray

    from survey.runtime.executors import StageWorker

    actor = ray.remote(StageWorker).options(num_cpus=1).remote()
    ray.get(actor.__ray_ready__.remote())
    start = time.perf_counter()
    for _ in range(calls):
        ray.get(actor.__ray_ready__.remote())
    seconds = (time.perf_counter() - start) / calls
    ray.kill(actor)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", type=int, default=8)
    parser.add_argument("--tile-size", type=int, default=8)
    parser.add_argument("--stimuli", type=int, default=1000)
    args = parser.parse_args()
    import ray

    executors = {"in_process": {"kind": "local"},
                 "ray_1_actor": {"kind": "ray", "num_workers": 1, "num_cpus_per_worker": 1},
                 "ray_2_actors": {"kind": "ray", "num_workers": 2, "num_cpus_per_worker": 1}}
    sizes = (args.architectures, args.tile_size, args.stimuli)
    results = {}
    with tempfile.TemporaryDirectory(prefix="ray-scaling-") as scratch:
        base = Path(scratch) / "base"
        run_survey(parse_config(survey(*sizes, {"kind": "local"})), Warehouse(str(base)), stages=BEFORE,
                   progress=False)
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        try:
            for name, executor in executors.items():
                copy = Path(scratch) / name
                shutil.copytree(base, copy)
                results[name] = timed_distances(survey(*sizes, executor), Warehouse(str(copy)))
            empty_call = round_trip()
        finally:
            ray.shutdown()
    one, two = results["ray_1_actor"], results["ray_2_actors"]
    steady = two["steady_pairs_per_second"] / one["steady_pairs_per_second"]
    per_unit = {name: run["pairs"] / run["steady_pairs_per_second"] / run["units"] for name, run in results.items()}
    print(json.dumps({
        **results,
        "speedup_2_over_1": round(steady, 2),
        "speedup_2_over_1_whole": round(two["pairs_per_second"] / one["pairs_per_second"], 2),
        "goal": GOAL, "goal_met": steady >= GOAL,
        "overhead_per_unit_s": round(per_unit["ray_1_actor"] - per_unit["in_process"], 4),
        "empty_actor_call_s": round(empty_call, 5),
    }, indent=1))


if __name__ == "__main__":
    main()
