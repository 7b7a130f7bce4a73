"""MEI runs in a real MLflow tracking store: SQLite in the warehouse, and a real `mlflow server` on 127.0.0.1."""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from survey.catalog import Warehouse
from survey.catalog.tracking import KEY_TAG, Tracker, default_tracking_uri
from survey.errors import SurveyError

from .conftest import free_port, with_tracking_store

HISTORY = np.linspace(0.0, 3.0, 1500)  # more steps than one log_batch takes
IMAGE = np.random.default_rng(0).standard_normal((3, 8, 8)).astype(np.float32)


@pytest.fixture
def warehouse(tmp_path, migrated_database) -> Warehouse:
    return with_tracking_store(Warehouse(tmp_path / "wh"), migrated_database)


def log(tracker: Tracker, parent: str, key: str) -> str:
    return tracker.log_mei(parent, key, f"mei {key}", {"network": "net-a", "layer": "stack0.cell1", "target": "7"},
                             {"method": "ga", "seed": 0, "lr": 10.0}, {"steps": 1500}, HISTORY, IMAGE)


def test_children_are_nested_logged_whole_and_found_by_key(warehouse, monkeypatch):
    import mlflow

    tracker = Tracker(default_tracking_uri(warehouse))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracker.tracking_uri)  # what a user's mlflow.search_runs reads
    assert tracker.tracking_uri == f"sqlite:///{warehouse.root}/mlflow/mlflow.db"
    parent = tracker.parent("stage-run-1", "mei run-1", {"stage": "mei"})
    child = log(tracker, parent, "unit-1")
    runs = mlflow.search_runs([tracker.experiment_id], filter_string=f"tags.`{KEY_TAG}` = 'unit-1'",
                              output_format="list")
    assert [run.info.run_id for run in runs] == [child]
    run = runs[0]
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["layer"] == "stack0.cell1"
    assert run.data.params == {"method": "ga", "seed": "0", "lr": "10.0"}
    history = tracker.client.get_metric_history(child, "activation")
    assert [m.step for m in history] == list(range(1500))
    np.testing.assert_allclose([m.value for m in sorted(history, key=lambda m: m.step)], HISTORY)
    assert sorted(a.path for a in tracker.client.list_artifacts(child)) == ["config.json", "mei.npy", "mei.png"]
    stored = np.load(tracker.client.download_artifacts(child, "mei.npy", str(warehouse.root)))
    np.testing.assert_array_equal(stored, IMAGE)
    assert (Path(warehouse.root) / "mlflow" / "artifacts").is_dir()  # artifacts beside the database


def test_a_rerun_reuses_finished_runs_and_replaces_unfinished_ones(warehouse):
    tracker = Tracker(default_tracking_uri(warehouse))
    parent = tracker.parent("stage-run-2", "mei run-2", {})
    assert tracker.parent("stage-run-2", "mei run-2", {}) == parent
    finished = log(tracker, parent, "unit-a")
    assert log(tracker, parent, "unit-a") == finished
    killed = tracker.client.create_run(tracker.experiment_id, tags={KEY_TAG: "unit-b"}).info.run_id  # never finished
    replaced = log(tracker, parent, "unit-b")
    assert replaced != killed and tracker.find("unit-b").info.run_id == replaced
    keys = [run.data.tags[KEY_TAG] for run in tracker.client.search_runs([tracker.experiment_id])]
    assert sorted(keys) == ["stage-run-2", "unit-a", "unit-b"]  # one active run per key


def test_a_remote_warehouse_needs_an_explicit_tracking_uri():
    with pytest.raises(SurveyError, match="pass --mlflow-uri") as error:
        default_tracking_uri(Warehouse("mock:///bucket/survey"))  # any non-local filesystem
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_a_real_mlflow_server_on_loopback(tmp_path, migrated_database):
    shutil.copy(migrated_database, tmp_path / "mlflow.db")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--artifacts-destination", (tmp_path / "artifacts").as_uri()],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        tracker = Tracker(uri, experiment="served")
        parent = tracker.parent("stage-run-3", "mei run-3", {})
        child = log(tracker, parent, "unit-served")
        assert log(tracker, parent, "unit-served") == child
        assert sorted(a.path for a in tracker.client.list_artifacts(child)) == ["config.json", "mei.npy", "mei.png"]
        assert len(tracker.client.get_metric_history(child, "activation")) == 1500
        assert list((tmp_path / "artifacts").rglob("mei.png"))  # the server stored them where it was told
    finally:
        server.terminate()
        server.wait(timeout=30)
