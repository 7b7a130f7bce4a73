"""Shared fixtures: a tiny survey config that exercises every stage in seconds (all but `mei`, whose MLflow store
tests/test_mei_stage.py sets up itself)."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from survey.catalog import Warehouse
from survey.config import SurveyConfig, parse_config

TINY = {
    "name": "tiny",
    "executor": {"kind": "local"},
    "stimuli": [
        {"name": "natural", "kind": "natural", "n": 24, "size": 32, "seed": 3},
        {"name": "grid", "kind": "tuning_grid", "n_angles": 5, "size": 32, "seed": 3},
    ],
    "zoo": {
        "n_architectures": 2,
        "objectives": ["supervised", "untrained"],
        "train": {"steps": 8, "batch_size": 16, "probe_steps": 5, "n_train_per_class": 8, "n_test_per_class": 4},
    },
    "sessions": {
        "synthetic": {"n": 2, "subjects": 2, "units_per_area": 4, "repeats": 3, "stimuli": ["natural", "grid"]},
    },
    "activations": {"stimuli": ["natural", "grid"], "batch_size": 16},
    "distances": {
        "stimuli": ["natural"], "tile_size": 5,
        "metrics": [{"metric": "linear", "alpha": 0.5}, {"metric": "permutation", "score": "euclidean"},
                    {"metric": "stochastic"}, {"metric": "conv"}],
    },
    "capacity": {"stimuli": ["natural"], "n_t": 50, "n_reps": 2},
    "topology": {"n_levels": 11, "n_splits": 4},
    "predictivity": {"stimuli": ["natural"]},
    "spaces": {"build": [{"metric": {"metric": "linear", "alpha": 0.5}, "stimuli": "natural"}]},
}


@pytest.fixture(scope="session")
def tiny_surveyed(tmp_path_factory) -> Warehouse:
    """TINY surveyed once per session with the local executor, every table filled. Tests only read it; one that
    writes takes a copy of its root."""
    from survey.runtime.survey import run_survey

    warehouse = Warehouse(tmp_path_factory.mktemp("tiny") / "wh")
    run_survey(parse_config(copy.deepcopy(TINY)), warehouse, progress=False)
    return warehouse


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory) -> Path:
    """One MLflow SQLite store migrated once per session (the first connection runs MLflow's migrations, seconds)."""
    from survey.mei.tracking import Tracker

    folder = tmp_path_factory.mktemp("mlflow-template")
    Tracker(f"sqlite:///{folder / 'mlflow.db'}", experiment="template")
    return folder / "mlflow.db"


def with_tracking_store(warehouse: Warehouse, migrated_database: Path) -> Warehouse:
    """`warehouse` with a copy of the migrated store where the MEI stage logs by default (<warehouse>/mlflow/)."""
    Path(warehouse.root, "mlflow").mkdir(parents=True, exist_ok=True)
    shutil.copy(migrated_database, Path(warehouse.root, "mlflow", "mlflow.db"))
    return warehouse


@pytest.fixture
def tiny_dict() -> dict:
    return copy.deepcopy(TINY)


@pytest.fixture
def tiny_config() -> SurveyConfig:
    return parse_config(copy.deepcopy(TINY))


def survey_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed `survey` command line (the entry point users run) in a subprocess."""
    return subprocess.run(
        [sys.executable, "-c", "from survey.cli import main; main()", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )
