"""The demo, as a user runs it (`survey demo --small`: every stage of the full demo on a smaller survey; CI runs the
full `make demo` after the tests): every table filled, with the row counts the design promises."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

from survey.catalog import Warehouse, connect
from survey.config import SMALL_DEMO_CONFIG, load_config
from survey.hashing import file_hash

from .conftest import survey_cli


@pytest.mark.slow
@pytest.mark.ray  # the demo runs on a local Ray cluster
@pytest.mark.timeout(1200)
def test_demo_fills_every_table_with_complete_results(tmp_path):
    result = survey_cli("demo", "--small", "-w", str(tmp_path / "wh"), timeout=1000)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "five networks nearest to IT" in result.stdout
    connection = connect(Warehouse(tmp_path / "wh"))

    configs = connection.execute("""
        SELECT d.metric, d.alpha, d.score_method, d.stimset_id, count(*), count(DISTINCT (rep_a, rep_b))
        FROM shape_distances d GROUP BY ALL ORDER BY ALL""").fetchall()
    assert [(metric, alpha) for metric, alpha, *_ in configs] == [
        ("cka", 1.0), ("linear", 0.0), ("linear", 0.5), ("linear", 1.0), ("permutation", 1.0)]
    for *_, stimset_id, rows, distinct in configs:
        n, kinds = connection.execute(f"""SELECT count(*), count(DISTINCT source_kind) FROM representations
                                          WHERE stimset_id = '{stimset_id}'""").fetchone()
        assert kinds == 2  # networks and sessions together
        assert rows == distinct == n * (n - 1) // 2

    objects = connection.execute("""SELECT count(*) FROM representations r JOIN stimulus_sets s USING (stimset_id)
                                    WHERE s.kind = 'object_manifolds'""").fetchone()[0]
    assert connection.execute("SELECT count(*) FROM capacity").fetchone()[0] == objects
    assert connection.execute("SELECT count(*) FROM alignment").fetchone()[0] == objects
    grid_reps = connection.execute("""SELECT count(*) FROM representations r JOIN stimulus_sets s USING (stimset_id)
                                      WHERE s.kind = 'tuning_grid'""").fetchone()[0]
    assert connection.execute("SELECT count(DISTINCT rep_id) FROM topology").fetchone()[0] == grid_reps
    n_items, embedded, natural = connection.execute("""
        SELECT s.n_items, count(e.rep_id), (SELECT count(*) FROM representations r WHERE r.stimset_id = s.stimset_id)
        FROM spaces s JOIN embeddings e USING (space_id) GROUP BY ALL""").fetchone()
    assert n_items == embedded == natural

    layers, areas = connection.execute("""
        SELECT count(*) FILTER (WHERE r.source_kind = 'network'), count(*) FILTER (WHERE r.source_kind = 'session')
        FROM representations r JOIN stimulus_sets s USING (stimset_id) WHERE s.name = 'natural'""").fetchone()
    assert connection.execute("SELECT count(*) FROM predictivity").fetchone()[0] == layers * areas

    # MEIs: 2 units and 2 IT neurons × 2 methods × 2 seeds, each its own MLflow run, each scored on another seed
    # of its architecture and on another architecture; GA's best seeds beat natural patches
    runs, distinct_runs, kinds, scored = connection.execute("""
        SELECT count(*), count(DISTINCT mlflow_run_id), list(DISTINCT target_kind ORDER BY target_kind),
               count(*) FILTER (WHERE family_activation IS NOT NULL AND cross_activation IS NOT NULL)
        FROM mei_runs""").fetchone()
    assert runs == distinct_runs == scored == 16 and kinds == ["neuron", "unit"]
    beaten, best = connection.execute("""SELECT count(*) FILTER (WHERE activation > natural_max), count(*)
                                         FROM mei_runs WHERE is_best AND method = 'ga'""").fetchone()
    assert best == 4 and beaten >= 0.75 * best
    from survey.mei.comparison import compare_methods

    comparison = compare_methods(connection)
    assert [(row["baseline"], row["n"]) for row in comparison] == [("ga", 4)] * 4
    assert "EGG against GA, paired by target" in result.stdout
    # the prior is the one the package ships for this recipe: registered, its weights those shipped, not trained
    from survey.priors import shipped_prior

    size, channels, sample_slope, patch_slope, content_hash = connection.execute(
        "SELECT size, channels, sample_slope, patch_slope, content_hash FROM priors").fetchone()
    assert (size, channels) == (32, 3) and abs(sample_slope - patch_slope) <= 0.3
    shipped, weights = shipped_prior(load_config(SMALL_DEMO_CONFIG).prior.recipe(), 32)
    assert content_hash == file_hash(weights) and sample_slope == shipped.sample_slope
    assert "mlflow ui --backend-store-uri sqlite:///" in result.stdout
    # every MLflow run has ended, the MEI stage's parent included, with the run's settings and a summary
    with contextlib.closing(sqlite3.connect(tmp_path / "wh" / "mlflow" / "mlflow.db")) as store:
        statuses = store.execute("SELECT status, count(*) FROM runs GROUP BY 1").fetchall()
        parent_params = store.execute("""SELECT count(*) FROM params p JOIN runs r USING (run_uuid)
                                         WHERE r.name LIKE 'mei · %'""").fetchone()[0]
    assert statuses == [("FINISHED", 1 + 1 + 16)] and parent_params > 0  # the prior, the parent, the MEIs
    # the demo ends with the report: every figure drawn, the findings printed, the page's path last
    report = tmp_path / "wh" / "report" / "index.html"
    assert str(report) in result.stdout.replace("\n", "")
    from survey.report.html import SECTIONS

    assert all((report.parent / f"{section.name}.png").exists() for section in SECTIONS)
    assert "findings of the seed papers on this survey" in result.stdout
