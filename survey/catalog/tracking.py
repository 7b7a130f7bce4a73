"""MEI runs in MLflow (DESIGN §5.5): one parent run per MEI stage run, one nested child per (target, method, seed),
and one run per trained diffusion prior, logged through one `MlflowClient` with explicit run ids (the fluent API is
not thread-safe).

Every run carries the key of what it logs in the tag `neurosurvey.key`; a key is looked up before a run is created,
so a stage re-run after a kill reuses the finished runs and replaces the unfinished ones: one active run per key.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from survey.catalog.warehouse import Warehouse
from survey.errors import SurveyError
from survey.images import png_bytes

KEY_TAG = "neurosurvey.key"
EXPERIMENT = "neurosurvey-mei"


def default_tracking_uri(warehouse: Warehouse) -> str:
    """SQLite inside a local warehouse: ``sqlite:///<warehouse>/mlflow/mlflow.db`` (its folder made here), its
    artifacts in ``<warehouse>/mlflow/artifacts``. A store copied or moved with its warehouse still records the
    artifact locations of the original: they are re-pointed here first, so nothing is read from or written to it."""
    database = warehouse_store(warehouse)
    database.parent.mkdir(parents=True, exist_ok=True)
    repoint_artifacts(warehouse)
    return f"sqlite:///{database}"


def warehouse_store(warehouse: Warehouse) -> Path:
    """Where a local warehouse keeps its default MLflow store (the SQLite database; artifacts beside it)."""
    if not warehouse.is_local:
        raise SurveyError(f"warehouse {warehouse.uri} is not a local folder, so it cannot hold MLflow's default SQLite "
                          "store; pass --mlflow-uri (e.g. http://127.0.0.1:5000 or sqlite:////path/mlflow.db)")
    return Path(warehouse.root) / "mlflow" / "mlflow.db"


def repoint_artifacts(warehouse: Warehouse) -> int:
    """Point every experiment of the warehouse's default tracking store whose artifact location lies outside its
    ``mlflow/artifacts`` folder at that folder, and its runs' artifact URIs with it, in one transaction; returns the
    experiments re-pointed (0 for a store that is already in place, or not created)."""
    database = warehouse_store(warehouse)
    artifacts = database.parent / "artifacts"
    if not database.exists():
        return 0
    target = artifacts.as_uri()
    with contextlib.closing(sqlite3.connect(database, timeout=60)) as db:
        try:
            experiments = db.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall()
        except sqlite3.OperationalError:  # MLflow has not created its tables yet
            return 0
        moved = [(experiment, old) for experiment, old in experiments if not _inside(old, artifacts)]
        with db:
            for experiment, old in moved:
                db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (target, experiment))
                if old:
                    db.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                               "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                               (target, len(old) + 1, experiment, len(old), old))
    return len(moved)


def _inside(location: str | None, folder: Path) -> bool:
    if not location:
        return False
    parsed = urlparse(location)
    if parsed.scheme not in ("", "file"):
        return False
    return Path(unquote(parsed.path)).is_relative_to(folder)


class Tracker:
    """Get-or-create MLflow runs by key; log a finished run's params, metric histories and files."""

    def __init__(self, tracking_uri: str, experiment: str = EXPERIMENT, artifact_location: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            if artifact_location is None and tracking_uri.startswith("sqlite:///"):
                artifact_location = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
            self.experiment_id = self._create_experiment(experiment, artifact_location)
        else:
            self.experiment_id = found.experiment_id

    def _create_experiment(self, name: str, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:  # another process created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def find(self, key: str) -> object | None:
        """The active run tagged with `key`, if any."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'",
                                       max_results=2)
        return runs[0] if runs else None

    def parent(self, key: str, name: str, tags: dict[str, str]) -> str:
        """The parent run of a stage run (created once per key)."""
        found = self.find(key)
        if found is not None:
            return found.info.run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={KEY_TAG: key, **tags})
        return run.info.run_id

    def finish(self, run_id: str) -> None:
        self.client.set_terminated(run_id, status="FINISHED")

    def end_parent(self, run_id: str, status: str, params: dict[str, object], summary: dict[str, float],
                   error: str | None = None) -> None:
        """End a stage run's parent with `status` (FINISHED, FAILED or KILLED), its settings as params, `summary`
        as metrics and, for a failure, the error as the tag ``neurosurvey.error``."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(name, float(value), now, 0) for name, value in summary.items()],
                              params=[Param(key, str(value)) for key, value in params.items()],
                              tags=[RunTag("neurosurvey.error", error)] if error else [])
        self.client.set_terminated(run_id, status=status)

    def log_run(self, key: str, name: str, tags: dict[str, str], params: dict[str, object], config: dict,
                metrics: dict[str, np.ndarray], files: dict[str, bytes], parent_id: str | None = None) -> str:
        """The finished run of `key` (nested under `parent_id` if given): reused when one exists, else created with
        the params, the config as config.json, each metric's history (one value per step) and the files as
        artifacts, and finished last (an unfinished one, left by a kill, is deleted and logged again)."""
        from mlflow.entities import Metric, Param, RunStatus

        found = self.find(key)
        if found is not None:
            if found.info.status == RunStatus.to_string(RunStatus.FINISHED):
                return found.info.run_id
            self.client.delete_run(found.info.run_id)
        nested = {"mlflow.parentRunId": parent_id} if parent_id else {}
        run = self.client.create_run(self.experiment_id, run_name=name, tags={KEY_TAG: key, **nested, **tags})
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        entries = [Metric(metric, float(value), now, step)
                   for metric, history in metrics.items() for step, value in enumerate(history)]
        batches = range(0, max(len(entries), 1), 1000)  # the tracking API takes at most 1,000 metrics a batch
        for start in batches:
            self.client.log_batch(run_id, metrics=entries[start:start + 1000],
                                  params=[Param(k, str(v)) for k, v in params.items()] if start == 0 else [])
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
            for filename, data in files.items():
                (Path(folder) / filename).write_bytes(data)
            self.client.log_artifacts(run_id, folder)
        self.finish(run_id)
        return run_id

    def log_mei(self, parent_id: str, key: str, name: str, tags: dict[str, str], params: dict[str, object],
                config: dict, history: np.ndarray, image: np.ndarray,
                scores: dict[str, float | None] | None = None) -> str:
        """One MEI's child run: `history` (activation per step) as the metric ``activation``, each of `scores` that
        is not None as a one-value metric (its activation on other models), the image as PNG and .npy."""
        buffer = io.BytesIO()
        np.save(buffer, image)
        metrics = {"activation": history, **{name: [value] for name, value in (scores or {}).items()
                                            if value is not None}}
        return self.log_run(key, name, tags, params, config, metrics,
                            {"mei.png": png_bytes(image), "mei.npy": buffer.getvalue()}, parent_id)
