"""A whole (tiny) survey: row counts, stored arrays, resume without duplicates, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from survey.activations import extract
from survey.catalog import TABLES, Warehouse, connect
from survey.catalog.networks import load_network
from survey.catalog.provenance import RunInfo
from survey.catalog.stimuli import load_images
from survey.config import parse_config
from survey.runtime.survey import STAGE_ORDER, STAGES, run_survey

from .conftest import survey_cli


def _count(warehouse: Warehouse, query: str) -> list[tuple]:
    return connect(warehouse).execute(query).fetchall()


def table_counts(warehouse: Warehouse) -> dict[str, int]:
    return {table: _count(warehouse, f"SELECT count(*) FROM {table}")[0][0] for table in TABLES}


def catalog_fingerprint(warehouse: Warehouse) -> dict[str, list]:
    """Everything that must not depend on when or how often the survey ran: ids and content hashes."""
    queries = {
        "stimulus_sets": "SELECT stimset_id, content_hash FROM stimulus_sets",
        "networks": "SELECT network_id, content_hash, test_accuracy FROM networks",
        "sessions": "SELECT session_id, content_hash FROM sessions",
        "representations": "SELECT rep_id, content_hash, n_stimuli, n_units FROM representations",
        "shape_distances": "SELECT rep_a, rep_b, metric, alpha, score_method, round(distance, 9) FROM shape_distances",
        "topology": "SELECT rep_id, unit, n_loop, n_line, betti0, betti1 FROM topology",
        "capacity": "SELECT rep_id, round(capacity, 9), K, status FROM capacity",
        "predictivity": "SELECT network_rep_id, session_rep_id, round(median_corrected, 9), status FROM predictivity",
    }
    return {table: sorted(_count(warehouse, query)) for table, query in queries.items()}


def test_tiny_survey_fills_every_table_and_resumes_without_duplicates(tmp_path, tiny_config):
    warehouse = Warehouse(tmp_path / "wh")
    first = run_survey(tiny_config, warehouse, progress=False)
    configured = [name for name in STAGE_ORDER if STAGES[name](tiny_config).configured]
    # every stage but prior and mei, which log to MLflow (tests/test_mei_stage.py and the demo cover them)
    assert [r.stage for r in first] == configured
    assert configured == [s for s in STAGE_ORDER if s not in ("prior", "mei")]
    assert [r.units_run for r in first] == [r.units_total for r in first]
    counts = table_counts(warehouse)
    layers = _count(warehouse, "SELECT sum(len(layers)) FROM networks")[0][0]
    assert counts["stimulus_sets"] == 2
    assert counts["networks"] == 4
    assert counts["sessions"] == 2
    # every network layer × 2 stimulus sets, plus 2 sessions × 3 areas × 2 stimulus sets
    assert counts["representations"] == 2 * layers + 2 * 3 * 2
    assert counts["runs"] == len(configured)
    assert counts["spaces"] == 1 and counts["embeddings"] == counts["representations"] // 2  # the natural set
    by_kind = dict(_count(warehouse, "SELECT source_kind, count(*) FROM representations GROUP BY 1"))
    assert by_kind == {"network": 2 * layers, "session": 12}

    second = run_survey(tiny_config, warehouse, progress=False)
    assert [r.units_run for r in second] == [0] * len(configured)
    assert table_counts(warehouse) == counts  # not even a `runs` row


def _table_versions(warehouse: Warehouse) -> dict[str, int | None]:
    """Each table's Delta version (None: never committed)."""
    return {table: snapshot.version() if (snapshot := warehouse.delta(table)) else None for table in TABLES}


def test_a_stage_version_bump_rebuilds_exactly_the_tables_of_that_stage(tmp_path, tiny_config, tiny_surveyed,
                                                                         monkeypatch):
    warehouse = Warehouse(shutil.copytree(tiny_surveyed.root, tmp_path / "wh"))
    stage = STAGES["capacity"]
    owned = (stage.table, *stage.writes_also)
    before = catalog_fingerprint(warehouse)
    versions = _table_versions(warehouse)
    old_keys = {row["unit_key"] for row in warehouse.rows(stage.table, ["unit_key"])}

    monkeypatch.setattr(stage, "version", stage.version + 1)
    info = RunInfo(run_id="plan", threads=1)
    planned = {unit.key: unit for unit in stage(tiny_config).plan(warehouse, info)}
    assert all(set(unit.supersedes) & old_keys for unit in planned.values())  # each unit's old key is superseded
    [report] = run_survey(tiny_config, warehouse, stages=("capacity",), progress=False)
    assert report.units_run == report.units_total == len(planned) == len(old_keys)

    for table in owned:  # one row per unit and per natural key, every one of the new version
        rows = warehouse.rows(table, ["unit_key", "rep_id", "manifold_set"])
        assert sorted(row["unit_key"] for row in rows) == sorted(planned)
        assert len({(row["rep_id"], row["manifold_set"]) for row in rows}) == len(rows)
    assert catalog_fingerprint(warehouse) == before  # the same computation, row for row
    changed = {table for table, version in _table_versions(warehouse).items() if version != versions[table]}
    assert changed == {*owned, "runs"}  # the other stages' tables got no commit at all
    assert run_survey(tiny_config, warehouse, stages=("capacity",), progress=False)[0].units_run == 0


def test_stored_arrays_match_a_direct_extraction(tmp_path, tiny_config):
    warehouse = Warehouse(tmp_path / "wh")
    run_survey(tiny_config, warehouse, progress=False)
    rows = warehouse.rows("representations")
    networks = {row["network_id"]: row for row in warehouse.rows("networks")}
    stimsets = {row["stimset_id"]: row for row in warehouse.rows("stimulus_sets")}
    for rep in rows:
        array = warehouse.load_array(rep["array_uri"])
        assert array.shape == (rep["n_stimuli"], rep["n_units"]) and array.dtype == np.float32
        assert np.isfinite(array).all()
        if rep["source_kind"] == "session":
            repeats = warehouse.load_array(rep["repeats_uri"])
            assert repeats.shape == (rep["n_stimuli"], rep["n_repeats"], rep["n_units"])
            np.testing.assert_allclose(repeats.mean(axis=1), array, rtol=1e-6)
            assert rep["depth"] in (0.0, 0.5, 1.0)
    network_rep = next(r for r in rows if r["source_kind"] == "network" and r["spatial_uri"])
    network = networks[network_rep["source_id"]]
    module, preprocessing = load_network(network, warehouse)
    images = load_images(warehouse, stimsets[network_rep["stimset_id"]]["uri"])
    direct = extract(module, images, [network_rep["layer_or_area"]], **preprocessing)[network_rep["layer_or_area"]]
    np.testing.assert_array_equal(warehouse.load_array(network_rep["array_uri"]), direct.flat)
    np.testing.assert_array_equal(warehouse.load_array(network_rep["spatial_uri"]), direct.spatial)
    assert json.loads(network_rep["preprocessing"])["spatial_pool"] == 4


def _survey_process(config: Path, warehouse: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "from survey.cli import main; main()", "run", str(config), "-w", str(warehouse)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def test_sigkill_mid_stage_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_dict):
    tiny_dict["zoo"]["train"]["steps"] = 30  # long enough to be killed inside the networks stage
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_dict))
    killed = tmp_path / "killed"
    process = _survey_process(config, killed)
    deadline = time.monotonic() + 300
    while not list((killed / "networks").glob("part-*.parquet")) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert len(list((killed / "networks").glob("part-*.parquet"))) < 4, "the run finished before it was killed"
    assert not (killed / "representations").exists()
    table_counts(Warehouse(killed))  # the interrupted catalog is queryable as it stands

    assert survey_cli("run", str(config), "-w", str(killed)).returncode == 0
    clean = tmp_path / "clean"
    assert survey_cli("run", str(config), "-w", str(clean)).returncode == 0
    assert catalog_fingerprint(Warehouse(killed)) == catalog_fingerprint(Warehouse(clean))
    assert table_counts(Warehouse(killed)) == table_counts(Warehouse(clean))


def test_user_network_with_local_weights_is_surveyed(tmp_path, tiny_dict):
    import torch
    from safetensors.torch import save_file

    from .nets import small_cnn

    torch.manual_seed(7)
    trained = small_cnn()
    save_file(trained.state_dict(), tmp_path / "mine.safetensors")
    tiny_dict.update(zoo=None, sessions=None, networks=[
        {"name": "mine", "kind": "callable", "target": "tests.nets:small_cnn",
         "weights": str(tmp_path / "mine.safetensors"), "layers": ["1", "4"]},
        {"name": "random", "kind": "callable", "target": "tests.nets:small_cnn", "layers": ["4"], "seed": 3},
    ])
    warehouse = Warehouse(tmp_path / "wh")
    run_survey(parse_config(tiny_dict), warehouse, progress=False)
    reps = {(r["source_name"], r["layer_or_area"], r["stimset_id"]): r for r in warehouse.rows("representations")}
    assert len(reps) == 3 * 2  # (mine: 2 layers, random: 1 layer) × 2 stimulus sets
    natural = next(r for r in warehouse.rows("stimulus_sets") if r["name"] == "natural")
    images = torch.from_numpy(load_images(warehouse, natural["uri"]))
    with torch.no_grad():
        conv = trained[1](trained[0](images))
        logits = trained(images)
    conv_rep = reps[("mine", "1", natural["stimset_id"])]
    np.testing.assert_allclose(warehouse.load_array(conv_rep["spatial_uri"]), conv.numpy(), rtol=1e-5, atol=1e-6)
    assert conv_rep["n_units"] == 4 * 4 * 4  # 4 channels pooled to 4 × 4 positions
    head = reps[("mine", "4", natural["stimset_id"])]
    np.testing.assert_allclose(warehouse.load_array(head["array_uri"]), logits.numpy(), rtol=1e-5, atol=1e-6)
    assert head["spatial_uri"] is None

    again = Warehouse(tmp_path / "again")
    run_survey(parse_config(tiny_dict), again, progress=False)
    assert catalog_fingerprint(again) == catalog_fingerprint(warehouse)  # seeded random init is reproducible


def test_two_concurrent_runs_leave_no_unreferenced_session_file(tmp_path, tiny_dict):
    """Synthetic NWB files are named by their recipe (HDF5 stamps creation times into the bytes), so two runs of the
    same sessions at once write one file each, not two that only one row references."""
    tiny_dict.update(zoo=None, stages=["stimuli", "sessions"])
    config = tmp_path / "sessions.yaml"
    config.write_text(yaml.safe_dump(tiny_dict))
    runs = [_survey_process(config, tmp_path / "wh") for _ in range(2)]
    for run in runs:
        assert run.wait(timeout=600) == 0, run.stderr.read()
    warehouse = Warehouse(tmp_path / "wh")
    referenced = {row["source_uri"] for row in warehouse.rows("sessions")}
    written = {str(path.relative_to(tmp_path / "wh")) for path in (tmp_path / "wh" / "arrays").glob("*.nwb")}
    assert len(referenced) == 2 and written == referenced
    assert table_counts(warehouse)["sessions"] == 2
