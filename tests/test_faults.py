"""Faults on a multi-node Ray cluster on one machine (a head and two worker raylets), while a stage runs: a worker
node killed (distances), an actor killed (activations, distances, capacity; mei, with its MLflow runs), the driver
killed under `ray job submit` (capacity), a unit failing with a user error (capacity). After each, the catalog equals
an uninterrupted local run's: no row lost, none twice (DESIGN.md §3: a unit's rows land in one commit keyed by its
unit_key; a re-run resumes)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from survey.catalog import Warehouse, connect
from survey.catalog.tracking import KEY_TAG, Tracker, default_tracking_uri
from survey.config import parse_config
from survey.errors import SurveyError
from survey.runtime.survey import STAGE_ORDER, STAGES, run_survey
from survey.stages import RunInfo
from survey.stages.activations import ActivationsStage
from survey.stages.capacity import CapacityStage
from survey.stages.distances import DistancesStage
from survey.stages.mei import MeiStage

from .conftest import TINY, free_port, with_tracking_store
from .test_survey import catalog_fingerprint, table_counts

pytestmark = pytest.mark.ray
LOCAL = "127.0.0.1"
FAULT_STAGE = "capacity"  # 20 units of ~1 s each in TINY: long enough to hit mid-flight
HOLD_S = 0.4  # activations (8 units) and distances (37) take ~30 ms a unit in TINY: held, a fault lands mid-stage


class Held:
    """A stage whose every unit waits HOLD_S before it runs (same units, same rows), so a fault lands mid-stage."""

    def run(self, unit, warehouse, info):
        time.sleep(HOLD_S)
        return super().run(unit, warehouse, info)


class HeldActivations(Held, ActivationsStage):
    pass


class HeldDistances(Held, DistancesStage):
    pass


class HeldMei(Held, MeiStage):
    pass


@pytest.fixture
def held(monkeypatch) -> None:
    """Run the activations and distances stages held (see Held)."""
    monkeypatch.setitem(STAGES, "activations", HeldActivations)
    monkeypatch.setitem(STAGES, "distances", HeldDistances)


@pytest.fixture(scope="module")
def reference(tiny_surveyed) -> Warehouse:
    """The catalog of an uninterrupted run of TINY with the local executor."""
    return tiny_surveyed


@pytest.fixture(scope="module")
def ray_token() -> Iterator[None]:
    """Ray 2.60 token authentication for every process of the module's clusters (they inherit the environment).
    This process caches the auth mode and token once read: reload them after setting, and after restoring."""
    from ray._private.authentication_test_utils import reset_auth_token_state

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "token")
        patch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
        reset_auth_token_state()
        yield
    reset_auth_token_state()


@pytest.fixture
def cluster(ray_token, monkeypatch) -> Iterator:
    """A head (no CPUs: no actor lands there) and two worker nodes of 1 CPU, each its own raylet, all on 127.0.0.1.
    The driver is left unconnected: the RayExecutor under test joins through `ExecutorConfig.address`."""
    import ray
    import ray._private.services as services
    from ray.cluster_utils import Cluster

    # ray.init turns 127.0.0.1 into the machine's outward address, where nothing of ours listens; keep it local
    monkeypatch.setattr(services, "resolve_ip_for_localhost", lambda host: host)
    # the head runs the dashboard, whose state API (ray.util.state) the tests read the actors from
    cluster = Cluster(initialize_head=True, shutdown_at_exit=True,
                      head_node_args={"num_cpus": 0, "node_ip_address": LOCAL, "include_dashboard": True,
                                      "dashboard_host": LOCAL, "dashboard_port": free_port()})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, node_ip_address=LOCAL)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def _ray_config(cluster, sections: dict | None = None):
    """TINY (plus `sections`) on two single-CPU actors of `cluster`."""
    return parse_config({**TINY, **(sections or {}), "executor": {
        "kind": "ray", "address": cluster.address, "num_workers": 2, "num_cpus_per_worker": 1,
        "restart_timeout_s": 20}})


def _stage_workers(state: str | None = None) -> list:
    """The StageWorker actors of the cluster this process is connected to (in `state`), from Ray's state API."""
    from ray.util.state import list_actors

    filters = [("class_name", "=", "StageWorker")] + ([("state", "=", state)] if state else [])
    return list_actors(filters=filters, detail=True, raise_on_missing_output=False)


def _when_committed(warehouse: Warehouse, table: str, fault: Callable[[], None], reference: Warehouse,
                    units: int = 2) -> Callable[[], None]:
    """Run `fault` from a thread once `units` units of `table` are committed; returns a check that it ran while the
    stage still had units to run (fewer committed than the uninterrupted `reference` holds)."""
    errors: list[BaseException] = []
    fired_at: list[int] = []

    def watch() -> None:
        deadline = time.monotonic() + 300
        try:
            while time.monotonic() < deadline:
                if (done := len(warehouse.done_keys(table))) >= units:
                    fault()
                    fired_at.append(done)
                    return
                time.sleep(0.1)
        except BaseException as err:  # reported by the check, in the test's thread
            errors.append(err)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()

    def check() -> None:
        thread.join(timeout=60)
        assert not errors, errors
        assert fired_at, f"the fault never fired: {table} did not reach {units} units"
        total = len(reference.done_keys(table))
        assert fired_at[0] < total, f"the fault fired after the stage: {fired_at[0]} of {total} {table} units done"

    return check


def _assert_same_catalog(warehouse: Warehouse, reference: Warehouse) -> None:
    assert table_counts(warehouse) == table_counts(reference)
    fingerprint = catalog_fingerprint(warehouse)
    for table, rows in fingerprint.items():
        assert len(rows) == len({repr(row) for row in rows}), f"{table} holds a row twice"
    assert fingerprint == catalog_fingerprint(reference)


@pytest.mark.slow
def test_worker_node_killed_mid_stage(cluster, reference, held, tmp_path):
    """SIGKILL a worker node's raylet and workers while the distances tiles run: its actor cannot be placed again
    (the other node's CPU is taken), so the executor replaces it after `restart_timeout_s`, its unit runs on the
    surviving actor, and the later stages run there too."""
    warehouse = Warehouse(tmp_path / "wh")
    victim = next(iter(cluster.worker_nodes))
    check = _when_committed(warehouse, DistancesStage.table, lambda: cluster.remove_node(victim, allow_graceful=False),
                           reference)
    reports = run_survey(_ray_config(cluster), warehouse, progress=False)
    check()
    assert all(report.units_run == report.units_total for report in reports)
    assert len(cluster.list_all_nodes()) == 2  # the head and one worker
    assert len(_stage_workers()) == 3, "the killed node's actor should have been replaced"
    _assert_same_catalog(warehouse, reference)


def _actor_killer(killed: list[str]) -> Callable[[], None]:
    """A fault: SIGKILL the process of the live actor killed least so far (so that none runs out of restarts);
    its id goes to `killed`."""

    def kill() -> None:
        actor = min(_stage_workers("ALIVE"), key=lambda actor: killed.count(actor.actor_id))
        os.kill(actor.pid, signal.SIGKILL)
        killed.append(actor.actor_id)

    return kill


def _assert_restarted_in_place(killed: list[str]) -> None:
    by_id = {actor.actor_id: actor for actor in _stage_workers()}
    assert len(by_id) == 2, "a killed actor should be restarted in place, not replaced"
    assert {actor: int(by_id[actor].num_restarts) for actor in killed} == {actor: killed.count(actor)
                                                                          for actor in killed}


@pytest.mark.slow
def test_actor_process_killed_in_each_stage(cluster, reference, held, tmp_path):
    """SIGKILL an actor's process mid-unit in the activations, distances and capacity stages: Ray restarts the actor
    in place (max_restarts) and re-runs its unit (max_task_retries); run_unit skips a unit that had already
    committed."""
    warehouse = Warehouse(tmp_path / "wh")
    killed: list[str] = []
    checks = [_when_committed(warehouse, STAGES[stage].table, _actor_killer(killed), reference)
              for stage in ("activations", "distances", FAULT_STAGE)]
    reports = run_survey(_ray_config(cluster), warehouse, progress=False)
    for check in checks:
        check()
    assert all(report.units_run == report.units_total for report in reports)
    _assert_restarted_in_place(killed)
    _assert_same_catalog(warehouse, reference)


@pytest.mark.slow
def test_actor_process_killed_in_the_mei_stage(cluster, reference, migrated_database, tmp_path, monkeypatch):
    """SIGKILL an actor mid-unit while MEIs are optimised and logged to MLflow: the restarted actor re-runs its unit,
    which finds its MLflow runs by key. The rows equal an uninterrupted local run's, with one MLflow run each."""
    network = next(row for row in reference.rows("networks") if row["name"] == "zoo000-supervised")
    mei = {"mei": {"stimuli": "natural", "seeds": [0, 1], "steps": 30, "natural_patches": 200, "evaluate": False,
                   "targets": [{"network": network["name"], "layer": network["layers"][-2], "units": [unit]}
                               for unit in range(4)]}}  # a unit of work each
    local, faulted = (with_tracking_store(Warehouse(shutil.copytree(reference.root, tmp_path / name)),
                                          migrated_database) for name in ("local", "ray"))
    run_survey(parse_config({**TINY, **mei}), local, stages=("mei",), progress=False)
    monkeypatch.setitem(STAGES, "mei", HeldMei)
    killed: list[str] = []
    check = _when_committed(faulted, MeiStage.table, _actor_killer(killed), local, units=1)
    (report,) = run_survey(_ray_config(cluster, mei), faulted, stages=("mei",), progress=False)
    check()
    assert report.units_run == report.units_total == 4
    _assert_restarted_in_place(killed)
    assert table_counts(faulted) == table_counts(local)
    query = """SELECT network_id, layer, target, method, seed, is_best, round(activation, 9),
                      regexp_extract(image_uri, '[^/]+$') AS image_file FROM mei_runs"""  # content-addressed
    rows = sorted(connect(faulted).execute(query).fetchall())
    assert rows == sorted(connect(local).execute(query).fetchall()) and len(set(rows)) == len(rows) == 4 * 2
    tracker = Tracker(default_tracking_uri(faulted))
    children = [run for run in tracker.client.search_runs([tracker.experiment_id])
                if "mlflow.parentRunId" in run.data.tags]
    run_ids = sorted(row["mlflow_run_id"] for row in faulted.rows("mei_runs"))
    assert sorted(run.info.run_id for run in children) == run_ids
    assert len({run.data.tags[KEY_TAG] for run in children}) == len(children)


class FailingCapacity(CapacityStage):
    """The capacity stage with one unit that fails with a user error."""

    def __init__(self, config, fail_key: str) -> None:
        super().__init__(config)
        self.fail_key = fail_key

    def run(self, unit, warehouse, info):
        if unit.key == self.fail_key:
            raise SurveyError(f"unit {unit.key} has a bad input")
        return super().run(unit, warehouse, info)


@pytest.mark.slow
def test_unit_user_error_commits_nothing_and_resumes(cluster, reference, tmp_path, monkeypatch):
    """A unit raising SurveyError stops the stage with a one-line message; it commits nothing, and the next run
    runs it (and only what is missing)."""
    config = _ray_config(cluster)
    warehouse = Warehouse(tmp_path / "wh")
    before = STAGE_ORDER[:STAGE_ORDER.index(FAULT_STAGE)]
    run_survey(config, warehouse, stages=before, progress=False)
    keys = [unit.key for unit in CapacityStage(config).plan(warehouse, RunInfo(run_id="plan", threads=1))]
    fail_key = keys[len(keys) // 2]
    monkeypatch.setitem(STAGES, FAULT_STAGE, lambda config: FailingCapacity(config, fail_key))
    with pytest.raises(SurveyError) as failure:
        run_survey(config, warehouse, progress=False)
    message = str(failure.value)
    assert fail_key in message and "\n" not in message
    done = warehouse.done_keys(FAULT_STAGE)
    assert fail_key not in done and 0 < len(done) < len(keys)
    assert not warehouse.committed("alignment", fail_key)

    monkeypatch.setitem(STAGES, FAULT_STAGE, CapacityStage)
    reports = {report.stage: report for report in run_survey(config, warehouse, progress=False)}
    assert reports[FAULT_STAGE].units_run == len(keys) - len(done)
    assert all(reports[stage].units_run == 0 for stage in before)
    _assert_same_catalog(warehouse, reference)


@pytest.mark.slow
def test_job_driver_killed_then_resubmitted(ray_token, reference, tmp_path):
    """SIGKILL the survey's driver under `ray job submit` mid-stage; submitting the job again resumes, and the
    catalog equals an uninterrupted run's."""
    from .test_ray import job_head, job_path, ray_job_submit

    env = {**os.environ, "PATH": job_path()}
    with job_head(tmp_path, env) as (ray, address, work):
        warehouse = Warehouse(tmp_path / "wh")
        submit = [ray, "job", "submit", "--address", address, "--working-dir", str(work),
                  "--", "python", "-m", "jobs.run_survey", "--config", "survey.yaml", "--warehouse", warehouse.uri]

        def kill_driver() -> None:  # the job's entrypoint process: ours, found by its unique warehouse path
            drivers = []
            for proc in Path("/proc").iterdir():
                try:
                    argv = (proc / "cmdline").read_bytes().decode().split("\0")
                except (OSError, ValueError):
                    continue
                if "jobs.run_survey" in argv and warehouse.uri in argv and "submit" not in argv:
                    drivers.append(int(proc.name))
            assert len(drivers) == 1, drivers
            os.kill(drivers[0], signal.SIGKILL)

        check = _when_committed(warehouse, FAULT_STAGE, kill_driver, reference)
        first = ray_job_submit(submit, env, work)
        try:
            check()
        except AssertionError as failure:
            raise AssertionError(f"{failure}; the job said: {first.stdout[-2000:]}{first.stderr[-2000:]}") from None
        assert first.returncode != 0, "the killed job should fail"
        assert 0 < len(warehouse.done_keys(FAULT_STAGE)) < 20
        _wait_until_idle(address)
        second = ray_job_submit(submit, env, work)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        _assert_same_catalog(warehouse, reference)


def _wait_until_idle(address: str, timeout: float = 180) -> None:
    """Until the cluster at `address` runs no job and no StageWorker is alive: the killed driver's actors are reaped
    asynchronously, and a job resubmitted before would wait for their CPUs."""
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    client, deadline = JobSubmissionClient(address), time.monotonic() + timeout
    while True:
        busy = [job.submission_id for job in client.list_jobs() if job.status in (JobStatus.PENDING,
                                                                                  JobStatus.RUNNING)]
        alive = list_actors(address=address, filters=[("state", "=", "ALIVE"), ("class_name", "=", "StageWorker")])
        if not busy and not alive:
            return
        assert time.monotonic() < deadline, f"the cluster is still busy: jobs {busy}, {len(alive)} actors alive"
        time.sleep(1)
