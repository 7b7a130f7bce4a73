"""Ray execution: actors on a local cluster give the same catalog; `ray job submit` to a head we start."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from survey.catalog import Warehouse, connect
from survey.config import parse_config
from survey.runtime.survey import run_survey

from .conftest import TINY, free_ports, survey_cli
from .test_survey import catalog_fingerprint, table_counts

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]


def test_ray_executor_equals_local_executor(tiny_surveyed, tmp_path):
    local, on_ray = tiny_surveyed, Warehouse(tmp_path / "ray")
    ray_config = parse_config({**TINY, "executor": {"kind": "ray", "num_workers": 2, "num_cpus_per_worker": 1}})
    reports = run_survey(ray_config, on_ray, progress=False)
    assert all(report.units_run == report.units_total for report in reports)
    assert catalog_fingerprint(on_ray) == catalog_fingerprint(local)
    assert connect(on_ray).execute("SELECT DISTINCT executor FROM runs").fetchall() == [("ray",)]


def _wait_for_dashboard(port: int, head: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert head.poll() is None, "the Ray head exited while starting"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"Ray dashboard did not open port {port}")


@contextlib.contextmanager
def job_head(tmp_path: Path, env: dict, ray_path: str | None = None,
             without: tuple[str, ...] = ()) -> Iterator[tuple[str, str, Path]]:
    """Our own Ray head on 127.0.0.1 (stopped by its process group, never `ray stop`, which would stop every cluster
    on the machine) and a job working directory holding jobs/ and survey.yaml (TINY less the sections `without`, on 2
    single-CPU actors): yields
    the `ray` command (found on `ray_path`, default the head's PATH), the dashboard address and that directory."""
    ray = shutil.which("ray", path=ray_path or env["PATH"])
    # the agents' ports too: their fixed defaults may still be held by the previous test's head as it exits
    gcs_port, dashboard_port, *agent_ports = free_ports(6)
    agents = [f"--{option}={port}" for option, port in zip(
        ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port"),
        agent_ports, strict=True)]
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=2",
         "--disable-usage-stats", "--include-dashboard=true", *agents],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        _wait_for_dashboard(dashboard_port, head)
        work = tmp_path / "work"
        shutil.copytree(REPO / "jobs", work / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
        config = {**{key: value for key, value in TINY.items() if key not in without},
                  "executor": {"kind": "ray", "num_workers": 2, "num_cpus_per_worker": 1}}
        (work / "survey.yaml").write_text(yaml.safe_dump(config))
        yield ray, f"http://127.0.0.1:{dashboard_port}", work
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def ray_job_submit(command: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """`ray job submit …`, submitted again while the head's job agent is not up yet (a head just started; `survey
    submit` waits the same way)."""
    deadline = time.monotonic() + 180
    while True:
        try:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
        except subprocess.TimeoutExpired as timeout:  # say what the job was doing
            address = command[command.index("--address") + 1]
            jobs = subprocess.run([command[0], "job", "list", "--address", address], env=env, capture_output=True,
                                  text=True, timeout=60)
            said = "".join(part.decode() if isinstance(part, bytes) else part or ""
                           for part in (timeout.stdout, timeout.stderr))
            raise AssertionError(f"ray job submit ran past 300 s; it said: {said[-4000:]}\n"
                                 f"jobs: {jobs.stdout[-3000:]}") from None
        if "No available agent" not in result.stdout + result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(2)


def job_path() -> str:
    """PATH with this interpreter's folder first: the job's `python` and the `ray` command."""
    return os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


def test_ray_job_submit_to_our_own_head(tmp_path):
    """Start a token-authenticated Ray head on 127.0.0.1, submit the survey as a job, check the catalog by SQL,
    and stop that head by its own PID."""
    env = {**os.environ, "PATH": job_path(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    # the submission is what is tested: the stages that only compute (capacity, topology, predictivity) run on Ray
    # in test_ray_executor_equals_local_executor
    with job_head(tmp_path, env, without=("capacity", "topology", "predictivity")) as (ray, address, work):
        submissions = {
            "ray": [ray, "job", "submit", "--address", address, "--working-dir", str(work), "--",
                    "python", "-m", "jobs.run_survey", "--config", "survey.yaml", "--warehouse", str(tmp_path / "ray")],
            "survey": [sys.executable, "-c", "from survey.cli import main; main()", "submit", "survey.yaml",
                       "--address", address, "-w", str(tmp_path / "survey"), "--working-dir", str(work)],
        }
        for name, command in submissions.items():
            result = ray_job_submit(command, env, work)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            warehouse = tmp_path / name
            sql = survey_cli("sql", "SELECT source_kind, count(*) AS n FROM representations GROUP BY 1 ORDER BY 1",
                             "-w", str(warehouse), "--format", "csv")
            assert sql.returncode == 0, sql.stderr
            rows = dict(line.split(",") for line in sql.stdout.strip().splitlines()[1:])
            # 2 sessions × 3 areas × 2 stimulus sets
            assert set(rows) == {'"network"', '"session"'} and int(rows['"session"']) == 12
            assert table_counts(Warehouse(warehouse))["networks"] == 4
        assert catalog_fingerprint(Warehouse(tmp_path / "ray")) == catalog_fingerprint(Warehouse(tmp_path / "survey"))


def test_a_head_started_outside_the_environment_gets_a_one_line_diagnosis(tmp_path):
    """A head whose PATH leads to a `python` without the project's packages (the system interpreter): `survey submit`
    ends with the job's one `error:` line, naming that interpreter and the fix, and exit status 2."""
    system = tmp_path / "system-bin"
    system.mkdir()
    (system / "python").symlink_to(Path(sys.base_prefix) / "bin" / "python3")  # what the venv was made from
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    head_env = {**os.environ, **token, "PATH": os.pathsep.join([str(system), "/usr/bin", "/bin"])}
    with job_head(tmp_path, head_env, ray_path=job_path()) as (_, address, work):
        result = subprocess.run([sys.executable, "-c", "from survey.cli import main; main()", "submit", "survey.yaml",
                                 "--address", address, "-w", str(tmp_path / "wh"), "--working-dir", str(work)],
                                env={**os.environ, **token}, capture_output=True, text=True, timeout=600, cwd=work)
    message = result.stderr.strip().splitlines()[-1]  # Ray's client logs its upload above it
    assert result.returncode == 2 and message.startswith("error: "), result.stderr[-3000:]
    assert result.stderr.count("error: ") == 1 and "Traceback" not in result.stderr
    assert f"the job runs under {system / 'python'}" in message and "No module named" in message, message
    assert "start the Ray head from the project's environment" in message and "--python" in message
    assert not (tmp_path / "wh").exists()


def test_actors_take_the_gpus_they_ask_for_and_compute_on_the_cpu_without_cuda(tmp_path):
    """On a cluster with a (fake) GPU resource, each actor gets its own GPU; its units compute on that GPU where CUDA
    is present and on the CPU where it is not, and the catalog equals a local run's. A local cluster on a machine
    without GPUs refuses `num_gpus_per_worker` in one line, before anything is written."""
    import ray
    import torch

    from survey.config import ExecutorConfig
    from survey.errors import SurveyError
    from survey.runtime.executors import RayExecutor

    stages = ("stimuli", "networks", "sessions", "activations")
    gpu_executor = {"kind": "ray", "num_workers": 2, "num_cpus_per_worker": 1, "num_gpus_per_worker": 1}
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        executor = RayExecutor(ExecutorConfig(**gpu_executor))
        placements = ray.get([actor.placement.remote() for actor in executor._pool()])
        executor.close()
        assert sorted(gpus for gpus, _ in placements) == [["0"], ["1"]]
        assert {device for _, device in placements} == {"cuda" if torch.cuda.is_available() else "cpu"}
        on_gpus = Warehouse(tmp_path / "gpus")
        run_survey(parse_config({**TINY, "executor": gpu_executor}), on_gpus, stages=stages, progress=False)
    finally:
        ray.shutdown()
    local = Warehouse(tmp_path / "local")
    run_survey(parse_config(TINY), local, stages=stages, progress=False)
    assert catalog_fingerprint(on_gpus) == catalog_fingerprint(local)
    if not torch.cuda.is_available():
        with pytest.raises(SurveyError, match=r"executor.num_gpus_per_worker=1 but this machine has 0 GPUs"):
            run_survey(parse_config({**TINY, "executor": gpu_executor}), Warehouse(tmp_path / "none"), progress=False)
        assert not (tmp_path / "none").exists()
