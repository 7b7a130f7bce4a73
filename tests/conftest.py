"""Shared fixtures: a tiny survey config that exercises every stage in seconds (all but `mei`, whose MLflow store
tests/test_mei_stage.py sets up itself)."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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
    from survey.catalog.tracking import Tracker

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


def survey_cli(*args: str, cwd: Path | None = None, timeout: float = 600, stdin: str | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the installed `survey` command line (the entry point users run) in a subprocess (`env`: variables set
    on top of this process's)."""
    return subprocess.run(
        [sys.executable, "-c", "from survey.cli import main; main()", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, input=stdin,
        env={**os.environ, **env} if env else None,
    )


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (held together while picked)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in sockets]


def free_port() -> int:
    return free_ports(1)[0]


@contextlib.contextmanager
def survey_serve(warehouse: str, timeout: float = 120) -> Iterator[str]:
    """`survey serve -w warehouse` on a free loopback port, answering /health; yields its base URL."""
    import httpx

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", "from survey.cli import main; main()", "serve", "-w", warehouse,
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "survey serve did not answer"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3_endpoint(monkeypatch) -> Iterator[str]:
    """A local S3 server (moto) on 127.0.0.1; yields the pyarrow URI query that reaches it."""
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    assert server is not None, "moto[server] is in the test extras: install them (make test)"
    port = free_port()
    process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert process.poll() is None and time.monotonic() < deadline, "the S3 server did not start"
            time.sleep(0.2)
        for name, value in S3_CREDENTIALS.items():
            monkeypatch.setenv(name, value)
        yield f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1&allow_bucket_creation=true"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
