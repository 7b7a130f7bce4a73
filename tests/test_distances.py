"""The `distances` stage: all pairs per stimulus set and metric in tiles of stable blocks, growing incrementally,
resumable and safe under concurrent runs, equal to `pairwise`; landmarks mode."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from survey.catalog import Warehouse, connect
from survey.catalog.prepared import load_prepared, prepared_path
from survey.catalog.synthetic import write_representations
from survey.config import SurveyConfig, parse_config
from survey.embedding import fold_nearest, maxmin_landmarks
from survey.errors import SurveyError
from survey.metrics.shape import ShapeMetric, pairwise
from survey.runtime.executors import next_unit
from survey.runtime.survey import run_survey
from survey.sources.families import Synthetic
from survey.stages import RunInfo, WorkUnit
from survey.stages.distances import DistancesStage

from .conftest import survey_cli


def _rows(warehouse: Warehouse, query: str) -> list[tuple]:
    return connect(warehouse).execute(query).fetchall()


@pytest.fixture(scope="module")
def surveyed(tiny_surveyed, tmp_path_factory) -> Warehouse:
    """A copy of the session's tiny survey (the CLI test adds distances to it)."""
    return Warehouse(shutil.copytree(tiny_surveyed.root, tmp_path_factory.mktemp("distances") / "wh"))


ELIGIBLE = {"stochastic": "repeats_uri IS NOT NULL", "conv": "spatial_uri IS NOT NULL"}


def test_every_metric_holds_exactly_one_row_per_unordered_pair(surveyed):
    configs = _rows(surveyed, """
        SELECT metric, alpha, score_method, stimset_id, count(*), count(DISTINCT (rep_a, rep_b)),
               bool_and(rep_a < rep_b) FROM shape_distances GROUP BY ALL""")
    assert {row[0] for row in configs} == {"linear", "permutation", "stochastic", "conv"}
    for metric, _, _, stimset_id, rows, distinct, ordered in configs:
        n = _rows(surveyed, f"""SELECT count(*) FROM representations WHERE stimset_id = '{stimset_id}'
                                AND {ELIGIBLE.get(metric, 'true')}""")[0][0]
        assert n >= 6
        assert rows == distinct == n * (n - 1) // 2
        assert ordered


def test_stage_distances_equal_pairwise_on_the_stored_arrays(surveyed):
    reps = _rows(surveyed, """SELECT rep_id, array_uri FROM representations WHERE stimset_id IN
                              (SELECT stimset_id FROM stimulus_sets WHERE name = 'natural') ORDER BY rep_id""")
    expected = pairwise([surveyed.load_array(uri) for _, uri in reps], "linear", alpha=0.5)
    index = {rep_id: i for i, (rep_id, _) in enumerate(reps)}
    stored = _rows(surveyed, "SELECT rep_a, rep_b, distance FROM shape_distances WHERE metric = 'linear'")
    got = np.array([distance for _, _, distance in stored])
    want = np.array([expected[index[a], index[b]] for a, b, _ in stored])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


# ---- growth, resume and concurrency on synthetic representations ------------------------------------------------

METRIC = {"metric": "linear", "alpha": 1.0}


def grow(synthetic: Synthetic, n: int, *warehouses: Warehouse) -> None:
    """Add `n` new members of the synthetic families to each catalog (one commit, as an activations unit would)."""
    members = [synthetic.member(synthetic.families[i % 4], (i % 7 + 1) / 7) for i in range(n)]
    for warehouse in warehouses:
        write_representations(warehouse, synthetic, members, RunInfo("grow"))


def distances_config(catalog: dict | None = None, **settings: object) -> SurveyConfig:
    base = {"metrics": [METRIC], "stimuli": ["synthetic"], "tile_size": 8}
    return parse_config({"name": "grow", "distances": {**base, **settings}, "stages": ["distances"],
                         "catalog": catalog or {}})


def stored(warehouse: Warehouse) -> dict[tuple[str, str], float]:
    """Every stored pair's distance; asserts the natural key (metric config, stimulus set, pair) is unique."""
    rows = _rows(warehouse, "SELECT rep_a, rep_b, distance, metric, alpha, score_method, stimset_id "
                            "FROM shape_distances")
    assert len({row[:2] + row[3:] for row in rows}) == len(rows), "a natural key repeats"
    return {(a, b): d for a, b, d, *_ in rows}


def test_growth_in_three_rounds_computes_only_new_pairs_and_equals_a_one_shot_run(tmp_path):
    synthetic = Synthetic(n_families=4, n_stimuli=30, units=6, seed=1)
    grown, one_shot = Warehouse(tmp_path / "grown"), Warehouse(tmp_path / "one-shot")
    n = 0
    for added in (21, 5, 12):  # block size 8: each round leaves a partly filled block behind
        grow(synthetic, added, grown)
        report = run_survey(distances_config(), grown, progress=False)[0]
        assert report.rows["shape_distances"] == added * n + added * (added - 1) // 2  # new × old + new × new
        n += added
        count, distinct, ordered = _rows(grown, """SELECT count(*), count(DISTINCT (rep_a, rep_b)),
                                                   bool_and(rep_a < rep_b) FROM shape_distances""")[0]
        assert count == distinct == n * (n - 1) // 2 and ordered
    assert run_survey(distances_config(), grown, progress=False)[0].units_run == 0
    rounds = _rows(grown, "SELECT round, count(*), sum(len(rep_ids)) FROM distance_blocks GROUP BY 1 ORDER BY 1")
    assert rounds == [(1, 3, 21), (2, 1, 5), (3, 2, 12)]

    reps = grown.rows("representations")
    write_representations(one_shot, synthetic, [(grown.load_array(r["array_uri"]), {
        "family": r["source_id"], "level": r["depth"]}) for r in reps], RunInfo("one-shot"))
    run_survey(distances_config(), one_shot, progress=False)
    by_content = {r["content_hash"]: r["rep_id"] for r in one_shot.rows("representations")}
    rename = {r["rep_id"]: by_content[r["content_hash"]] for r in reps}
    expected = stored(one_shot)
    got = {tuple(sorted((rename[a], rename[b]))): d for (a, b), d in stored(grown).items()}
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[pair] for pair in expected], list(expected.values()), rtol=0, atol=1e-12)


def test_a_stage_compacts_what_it_wrote_once_small_files_pile_up(tmp_path):
    warehouse = Warehouse(tmp_path / "wh")
    grow(Synthetic(n_families=4, n_stimuli=30, units=6, seed=5), 30, warehouse)
    report = run_survey(distances_config(catalog={"compact_after": 4}), warehouse, progress=False)[0]
    assert report.units_run == 10  # 4 blocks of ≤ 8
    # one partition (metric=linear), checked every 4 units: at unit 4 compaction would fold away 3 files (below
    # the bar of 4), at unit 8 seven, so the 8 files became one; units 9 and 10 add two, and at the end one would go
    snapshot = warehouse.delta("shape_distances")
    assert [c["operation"] for c in reversed(snapshot.history())] == (
        ["CREATE TABLE"] + ["WRITE"] * 8 + ["OPTIMIZE"] + ["WRITE"] * 2)
    assert len(snapshot.file_uris()) == 3
    assert len(warehouse.done_keys("shape_distances")) == 10 and len(stored(warehouse)) == 30 * 29 // 2


def test_each_representation_is_prepared_once_and_later_tiles_and_runs_read_its_stored_factors(tmp_path):
    warehouse = Warehouse(tmp_path / "wh")
    grow(Synthetic(n_families=4, n_stimuli=30, units=6, seed=6), 30, warehouse)
    config = distances_config()
    run_survey(config, warehouse, progress=False)
    units = DistancesStage(config).plan(warehouse, RunInfo("plan"))
    assert [unit.payload["cols"] is None for unit in units] == [True] * 4 + [False] * 6  # 4 blocks, diagonals first
    assert len(list((tmp_path / "wh" / "arrays" / "prepared").iterdir())) == 30  # one per representation

    engine = ShapeMetric(METRIC["metric"], METRIC["alpha"])
    first, second, third = warehouse.rows("representations")[:3]
    fresh = engine.prepare(warehouse.load_array(first["array_uri"]))
    stored_factors = warehouse.load_npz(warehouse.stored(prepared_path(engine, first["array_uri"], None)))
    np.testing.assert_array_equal(stored_factors["data0"], fresh.data.numpy())
    # A copy of the warehouse (no process has it cached) whose stored factors are doubled: those are what is used.
    shutil.copytree(tmp_path / "wh", tmp_path / "copy")
    copy = Warehouse(tmp_path / "copy")
    copy.put_npz(prepared_path(engine, first["array_uri"], None),
                 {"data0": 2 * stored_factors["data0"], "norm": 2 * stored_factors["norm"]})
    np.testing.assert_array_equal(load_prepared(engine, copy, first, None).data.numpy(), 2 * fresh.data.numpy())
    # Without `store` (the search service) a missing factor is prepared and not written; with it, written.
    missing = [tmp_path / "copy" / prepared_path(engine, rep["array_uri"], None) for rep in (second, third)]
    for path in missing:
        path.unlink()
    load_prepared(engine, copy, second, None, store=False)
    load_prepared(engine, copy, third, None)
    assert [path.exists() for path in missing] == [False, True]


def test_an_interrupted_stage_resumes_with_only_its_missing_tiles(tmp_path, monkeypatch):
    warehouse = Warehouse(tmp_path / "wh")
    grow(Synthetic(n_families=4, n_stimuli=30, units=6, seed=2), 40, warehouse)
    calls = {"n": 0}
    original = DistancesStage.run

    def failing(self, unit, warehouse, info):
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("killed")
        return original(self, unit, warehouse, info)

    monkeypatch.setattr(DistancesStage, "run", failing)
    with pytest.raises(RuntimeError, match="killed"):
        run_survey(distances_config(), warehouse, progress=False)
    committed = len(warehouse.done_keys("shape_distances"))
    assert committed == 6
    monkeypatch.setattr(DistancesStage, "run", original)
    report = run_survey(distances_config(), warehouse, progress=False)[0]
    assert report.units_run == report.units_total - committed == 15 - committed  # 5 blocks of 8: 15 tiles
    assert len(stored(warehouse)) == 40 * 39 // 2


def _distances_process(warehouse: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from survey.cli import main; main()", "distances", "-m",
                             "linear:1", "--stimset", "synthetic", "--tile-size", "6", "--executor", "local",
                             "-w", str(warehouse), *options],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_two_concurrent_runs_and_a_sigkill_leave_every_pair_once(tmp_path):
    warehouse = Warehouse(tmp_path / "wh")
    n = 48
    grow(Synthetic(n_families=4, n_stimuli=30, units=6, seed=3), n, warehouse)
    killed = _distances_process(tmp_path / "wh")
    deadline = time.monotonic() + 120
    while len(warehouse.done_keys("shape_distances")) < 3 and time.monotonic() < deadline:
        assert killed.poll() is None, killed.stderr.read()
        time.sleep(0.05)
    killed.kill()
    killed.wait()
    assert 3 <= len(warehouse.done_keys("shape_distances")) < 36, "the run finished before it was killed"
    stored(warehouse)  # the killed catalog is queryable, with no pair twice
    racers = [_distances_process(tmp_path / "wh") for _ in range(2)]
    for racer in racers:
        assert racer.wait(timeout=300) == 0, racer.stderr.read()
    assert len(stored(warehouse)) == n * (n - 1) // 2
    assert _rows(warehouse, "SELECT count(*) FROM distance_blocks") == [(8,)]  # one planning round, not two


def test_landmarks_mode_computes_maxmin_rows_once_and_a_metric_keeps_its_mode(tmp_path):
    warehouse, full = Warehouse(tmp_path / "landmarks"), Warehouse(tmp_path / "all")
    resumed = Warehouse(tmp_path / "resumed")
    grow(Synthetic(n_families=4, n_stimuli=30, units=6, seed=4), 30, warehouse, full, resumed)
    run_survey(distances_config(pairs="landmarks", landmarks=6), warehouse, progress=False)
    # a selection stopped after 3 landmarks, its rows compacted, then resumed by a new run: same landmarks
    run_survey(distances_config(pairs="landmarks", landmarks=3), resumed, progress=False)
    resumed.compact("shape_distances", vacuum_hours=0)
    run_survey(distances_config(pairs="landmarks", landmarks=6), resumed, progress=False)
    run_survey(distances_config(), full, progress=False)
    ids = sorted(r["rep_id"] for r in full.rows("representations"))
    matrix = np.zeros((30, 30))
    for (a, b), d in stored(full).items():
        matrix[ids.index(a), ids.index(b)] = matrix[ids.index(b), ids.index(a)] = d
    sequence = [rep for _, rep in sorted(_rows(warehouse, "SELECT round, rep_id FROM distance_landmarks"))]
    assert sequence == [ids[i] for i in maxmin_landmarks(matrix, 6, seed=0)]
    assert [rep for _, rep in sorted(_rows(resumed, "SELECT round, rep_id FROM distance_landmarks"))] == sequence
    assert stored(resumed) == stored(warehouse)
    rows = stored(warehouse)
    assert len(rows) == 6 * 30 - 6 * 7 // 2  # each landmark's row, pairs of two landmarks once
    for (a, b), d in rows.items():
        assert a in sequence or b in sequence
        assert d == pytest.approx(matrix[ids.index(a), ids.index(b)], abs=1e-12)
    with pytest.raises(SurveyError, match="pairs: landmarks"):
        run_survey(distances_config(), warehouse, progress=False)
    with pytest.raises(SurveyError, match="pairs: all"):
        run_survey(distances_config(pairs="landmarks", landmarks=6), full, progress=False)


def test_the_nearest_landmark_fold_of_stored_pairs_equals_a_fold_of_whole_rows():
    rng = np.random.default_rng(3)
    points = rng.standard_normal((40, 3))
    matrix = np.linalg.norm(points[:, None] - points[None], axis=-1)
    landmarks = [5, 17, 30, 2]
    pairs = [(a, b) for r, a in enumerate(landmarks) for b in range(40) if b not in landmarks[:r + 1]]
    rows = np.array([(min(a, b), max(a, b)) for a, b in pairs])  # stored as rep_a < rep_b
    from_rows = np.min(matrix[landmarks], axis=0)
    for chunks in (1, 3, 7):  # incrementally, in any order, with a chunk folded twice
        nearest = np.full(40, np.inf)
        order = rng.permutation(len(rows))
        for chunk in [*np.array_split(order, chunks), order[:5]]:
            fold_nearest(nearest, rows[chunk, 0], rows[chunk, 1], matrix[rows[chunk, 0], rows[chunk, 1]])
        others = np.setdiff1d(np.arange(40), landmarks)
        np.testing.assert_array_equal(nearest[others], from_rows[others])
    outside = np.full(40, np.inf)
    fold_nearest(outside, np.array([-1, 3]), np.array([4, -1]), np.array([1.0, 2.0]))  # −1: not a candidate
    assert outside[4] == 1.0 and outside[3] == 2.0 and np.isinf(np.delete(outside, [3, 4])).all()


def test_non_finite_representation_is_named_and_its_tiles_are_not_written(tmp_path, tiny_dict):
    warehouse = Warehouse(tmp_path / "wh")
    tiny_dict["distances"] = {"stimuli": ["natural"], "tile_size": 50, "metrics": [{"metric": "linear"}]}
    config = parse_config(tiny_dict)
    run_survey(config, warehouse, stages=("stimuli", "networks", "sessions", "activations"), progress=False)
    natural = next(r["stimset_id"] for r in warehouse.rows("stimulus_sets") if r["name"] == "natural")
    row = next(r for r in warehouse.rows("representations") if r["stimset_id"] == natural)
    broken = warehouse.load_array(row["array_uri"]).copy()
    broken[3, 0] = np.nan
    uri, digest = warehouse.put_array(broken)
    warehouse.append_unit("representations", "zz-broken", [{**row, "rep_id": "rep-broken", "array_uri": uri,
                                                           "content_hash": digest}])
    with pytest.raises(SurveyError, match="representation rep-broken has 1 non-finite values") as err:
        run_survey(config, warehouse, stages=("distances",), progress=False)
    assert "\n" not in str(err.value)
    assert not warehouse.done_keys("shape_distances")
    assert _rows(warehouse, "SELECT count(*) FROM shape_distances") == [(0,)]


def test_cli_distances_runs_over_an_existing_catalog(surveyed):
    result = survey_cli("distances", "-m", "cka:euclidean", "--stimset", "natural", "-w", surveyed.uri,
                        "--executor", "local")
    assert result.returncode == 0, result.stderr
    rows = _rows(surveyed, "SELECT count(*), min(distance), max(distance) FROM shape_distances WHERE metric = 'cka'")
    n = _rows(surveyed, """SELECT count(*) FROM representations WHERE stimset_id IN
                           (SELECT stimset_id FROM stimulus_sets WHERE name = 'natural')""")[0][0]
    assert rows[0][0] == n * (n - 1) // 2
    assert 0 < rows[0][1] <= rows[0][2] <= 2 ** 0.5  # chordal distance between unit-norm Gram matrices
    bad = survey_cli("distances", "-m", "permutation:0.5", "-w", surveyed.uri)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: --metric: Value error, the permutation metric has no alpha; leave alpha at 1"


def test_units_of_one_block_go_to_one_worker_and_an_idle_worker_takes_any():
    """RayExecutor hands a free actor the next unit whose affinity (a block) falls to its slot, so each actor's
    factor cache holds its own blocks; one with nothing of its own left takes the next unit of another's."""
    units = [WorkUnit(f"u{i:02d}", "", affinity=i % 5) for i in range(15)] + [WorkUnit("u15", "")]
    queue, taken = list(reversed(units)), {0: [], 1: []}
    while queue:
        for slot in (0, 1):
            if queue:
                taken[slot].append(next_unit(queue, slot, 2))

    assert sorted(unit.key for mine in taken.values() for unit in mine) == [unit.key for unit in units]
    for slot, mine in taken.items():
        own = [unit.key for unit in mine if unit.affinity is not None and unit.affinity % 2 == slot]
        assert [unit.key for unit in mine[:len(own)]] == own == sorted(own)  # its own first, in planned order
