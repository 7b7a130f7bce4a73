"""Ray scaling of the all-pairs distances stage: throughput (pairs/s) in this process, on 1 and on 2 single-CPU Ray
actors, and Ray's overhead per unit of work, all in one run on the same catalog (goal: 2 actors ≥ 1.7 × 1 actor on
2 cores).

    python -m benchmarks.ray_scaling [--architectures 6] [--tile-size 6] [--stimuli 300]

A survey of untrained zoo networks and synthetic sessions is built once up to its activations; then a copy of it runs
the `distances` stage (linear metric, alpha 0.5 and 1; torch at one thread per worker) with each executor. The Ray
runs join a local cluster started beforehand, so its start-up is not counted; the actors' own start (a process that
imports torch) is. Prints JSON: pairs, units, seconds and pairs per second of each run, the speed-up of 2 actors over
1, the overhead per unit ((1 actor − in process) / units), and the round-trip of an empty actor call.
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
from survey.runtime.survey import run_survey

BEFORE = ("stimuli", "networks", "sessions", "activations")


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
    parser.add_argument("--architectures", type=int, default=6)
    parser.add_argument("--tile-size", type=int, default=6)
    parser.add_argument("--stimuli", type=int, default=300)
    args = parser.parse_args()
    import ray

    executors = {"in_process": {"kind": "local"},
                 "ray_1_actor": {"kind": "ray", "num_workers": 1, "num_cpus_per_worker": 1},
                 "ray_2_actors": {"kind": "ray", "num_workers": 2, "num_cpus_per_worker": 1}}
    results = {}
    with tempfile.TemporaryDirectory(prefix="ray-scaling-") as scratch:
        base = Path(scratch) / "base"
        run_survey(parse_config(survey(args.architectures, args.tile_size, args.stimuli, {"kind": "local"})),
                   Warehouse(str(base)), stages=BEFORE, progress=False)
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        try:
            for name, executor in executors.items():
                copy = Path(scratch) / name
                shutil.copytree(base, copy)
                config = parse_config(survey(args.architectures, args.tile_size, args.stimuli, executor))
                (report,) = run_survey(config, Warehouse(str(copy)), stages=("distances",), progress=False)
                pairs = report.rows.get("shape_distances", 0)
                results[name] = {"units": report.units_run, "pairs": pairs, "seconds": round(report.seconds, 2),
                                 "pairs_per_second": round(pairs / report.seconds, 2)}
            empty_call = round_trip()
        finally:
            ray.shutdown()
    one, two, local = results["ray_1_actor"], results["ray_2_actors"], results["in_process"]
    speedup = two["pairs_per_second"] / one["pairs_per_second"]
    print(json.dumps({
        **results, "speedup_2_over_1": round(speedup, 2), "goal": 1.7, "goal_met": speedup >= 1.7,
        "overhead_per_unit_s": round((one["seconds"] - local["seconds"]) / one["units"], 3),
        "empty_actor_call_s": round(empty_call, 5),
    }, indent=1))


if __name__ == "__main__":
    main()
