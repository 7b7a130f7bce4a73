"""Catalog latency at survey scale: `survey sql` over a table of many unit commits, before and after compaction.

    python benchmarks/catalog_scale.py [--reps 20000] [--pair-reps 2001] [--rows-per-commit 100] [--writers 2]
        [--uncompacted-commits 2000] [--repeats 3] [--workdir DIR]

1. `survey`: a synthetic warehouse of `--reps` representation rows (in commits of 100) and all pairs of the first
   `--pair-reps` of them as `shape_distances` rows (2,001,000 by default), each commit `--rows-per-commit` rows,
   written through `Warehouse.append_unit` by `--writers` spawned processes at once (≥ 20,000 unit commits racing for
   versions, as actors do), with the stages' rolling compaction (writer 0 compacts every `compact_after` of its
   commits, while the others keep committing). Times, end to end as a user runs them (`survey sql` in a fresh
   process, median of `--repeats`, peak RSS), a count and a group-by over `shape_distances`, and the resume scan
   (`done_keys`): as written, then after `survey compact --retention-hours 0`. Goal: ≤ 1 s per query after.
2. `uncompacted`: the same measurements over `--uncompacted-commits` unit commits written without any compaction
   (one file each), before and after `survey compact`: what the rolling compaction spares every reader (a commit's
   cost also grows with the live files, so a table of 20,000 uncompacted commits takes hours to write).
Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime

import numpy as np

from survey.catalog import Warehouse
from survey.config import CatalogConfig

QUERIES = {
    "count": "SELECT count(*) FROM shape_distances",
    "group_by": "SELECT metric, alpha, count(*) AS pairs, avg(distance) AS mean FROM shape_distances GROUP BY ALL",
}
PROVENANCE = {"run_id": "catalog-scale", "code_version": "bench"}


def log(message: str) -> None:
    print(f"[catalog_scale] {message}", file=sys.stderr, flush=True)


def rep_id(i: int) -> str:
    return f"rep-{i:016x}"


def write_representations(root: str, n: int) -> None:
    warehouse = Warehouse(root)
    for start in range(0, n, 100):
        warehouse.append_unit("representations", f"reps-{start:08d}", [{
            "rep_id": rep_id(i), "source_kind": "network", "source_id": f"net-{i // 10:08d}",
            "source_name": f"net{i // 10}", "layer_or_area": f"layer{i % 10}", "layer_index": i % 10,
            "depth": (i % 10) / 9, "stimset_id": "stim-bench", "n_stimuli": 200, "n_units": 16,
            "array_uri": f"{root}/arrays/{i:016x}.npy", "spatial_uri": None, "repeats_uri": None, "n_repeats": None,
            "preprocessing": "{}", "content_hash": f"{i:064x}", **PROVENANCE}
            for i in range(start, min(n, start + 100))])


def write_distances(root: str, pair_reps: int, per_commit: int, writer: int, writers: int, compacting: bool,
                    commits: int | None = None) -> int:
    """This writer's share of the commits: commit c holds pairs [c·per_commit, (c+1)·per_commit) of the triangle.
    With `compacting`, writer 0 applies the stages' upkeep every `compact_after` of its commits."""
    warehouse, upkeep = Warehouse(root), CatalogConfig()
    rows, cols = np.triu_indices(pair_reps, k=1)
    values = np.random.default_rng(writer).uniform(0.1, 1.5, len(rows))
    mine = range(writer, commits or -(-len(rows) // per_commit), writers)
    for done, commit in enumerate(mine, start=1):
        chunk = slice(commit * per_commit, (commit + 1) * per_commit)
        warehouse.append_unit("shape_distances", f"dist-{commit:08d}", [
            {"rep_a": rep_id(a), "rep_b": rep_id(b), "stimset_id": "stim-bench", "metric": "linear", "alpha": 1.0,
             "score_method": "angular", "center": True, "distance": float(d), **PROVENANCE}
            for a, b, d in zip(rows[chunk], cols[chunk], values[chunk], strict=True)])
        if compacting and writer == 0 and done % upkeep.compact_after == 0 and warehouse.mergeable_files(
                "shape_distances", upkeep.small_file_bytes) >= upkeep.compact_after:  # as a stage's Compactor does
            warehouse.compact("shape_distances", upkeep.vacuum_hours, upkeep.small_file_bytes)
        if writer == 0 and done % 1000 == 0:
            log(f"writer 0: {done}/{len(mine)} commits")
    return len(mine)


def write_all(root: str, args: argparse.Namespace, compacting: bool, commits: int | None = None) -> tuple[int, float]:
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(args.writers) as pool:  # delta-rs does not survive fork
        done = sum(pool.starmap(write_distances, [
            (root, args.pair_reps, args.rows_per_commit, w, args.writers, compacting, commits)
            for w in range(args.writers)]))
    return done, time.perf_counter() - start


def survey_command(*args: str, code: str = "from survey.cli import main; main()") -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MiB) of `survey ARGS` in a fresh process, and its stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak RSS
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode:
            raise RuntimeError(f"survey {' '.join(args)} failed: {err.read()[-2000:]}")
        return seconds, usage.ru_maxrss / 1024, out.read()


def measure(root: str, repeats: int) -> dict:
    """`survey sql` per query, end to end, and the same less the command's start-up (a fresh process importing
    the command line and exiting, measured in the same run): the part the catalog's layout decides."""
    warehouse = Warehouse(root)
    out: dict = {"data_files": len(warehouse.delta("shape_distances").file_uris())}
    startup = float(np.median([survey_command(code="from survey.cli import main")[0] for _ in range(repeats)]))
    out["command_startup_s"] = round(startup, 3)
    for name, query in QUERIES.items():
        runs = [survey_command("sql", query, "-w", root, "--format", "json") for _ in range(repeats)]
        seconds = float(np.median([r[0] for r in runs]))
        out[name] = {"survey_sql_s": round(seconds, 3), "less_startup_s": round(seconds - startup, 3),
                     "peak_rss_mib": round(max(r[1] for r in runs)), "answer": json.loads(runs[0][2])}
    start = time.perf_counter()
    keys = warehouse.done_keys("shape_distances")
    out["done_keys_s"], out["done_keys"] = round(time.perf_counter() - start, 3), len(keys)
    return out


def before_and_after(root: str, repeats: int) -> dict:
    before = measure(root, repeats)
    log("survey compact")
    compact_s, _, _ = survey_command("compact", "--table", "shape_distances", "--retention-hours", "0", "-w", root)
    after = measure(root, repeats)
    return {"before_compaction": before, "compact_s": round(compact_s, 2), "after_compaction": after,
            "before_over_after": {name: round(before[name]["survey_sql_s"] / after[name]["survey_sql_s"], 1)
                                  for name in QUERIES},
            "goal_after_le_1s_end_to_end": all(after[name]["survey_sql_s"] <= 1.0 for name in QUERIES),
            "goal_after_le_1s_less_startup": all(after[name]["less_startup_s"] <= 1.0 for name in QUERIES)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20_000)
    parser.add_argument("--pair-reps", type=int, default=2001)
    parser.add_argument("--rows-per-commit", type=int, default=100)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--uncompacted-commits", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="catalog-scale-")
    root, bare = f"{workdir}/survey", f"{workdir}/uncompacted"
    started = datetime.now(UTC)
    log(f"warehouse {root}: {args.reps} representations")
    write_representations(root, args.reps)
    n_rows = args.pair_reps * (args.pair_reps - 1) // 2
    log(f"{n_rows:,} distance rows in commits of {args.rows_per_commit} by {args.writers} writers")
    commits, write_s = write_all(root, args, compacting=True)
    survey = {"representations": args.reps, "distance_rows": n_rows, "unit_commits": commits,
              "write_s": round(write_s, 1), "commits_per_s": round(commits / write_s, 1),
              **before_and_after(root, args.repeats)}
    log(f"{args.uncompacted_commits} commits without compaction")
    commits, write_s = write_all(bare, args, compacting=False, commits=args.uncompacted_commits)
    uncompacted = {"unit_commits": commits, "distance_rows": commits * args.rows_per_commit,
                   "write_s": round(write_s, 1), "commits_per_s": round(commits / write_s, 1),
                   **before_and_after(bare, args.repeats)}
    print(json.dumps({"started": started.isoformat(), "cpus": len(os.sched_getaffinity(0)), "writers": args.writers,
                      "survey": survey, "uncompacted": uncompacted}, indent=1, default=str))


if __name__ == "__main__":
    main()
