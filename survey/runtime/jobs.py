"""`ray job submit` of a survey: the client side of jobs/run_survey.py."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from survey.catalog import Warehouse
from survey.errors import SurveyError, one_line

# What the job's working directory upload leaves out: environments, data and caches.
UPLOAD_EXCLUDES = [".venv/", ".git/", "catalogs/warehouse/", "**/__pycache__/", "*.nwb", ".pytest_cache/"]
AGENT_WAIT_S = 180.0  # how long a just-started head's job agent is waited for (minutes on a loaded machine)


def submit_survey(
    config: Path, warehouse: str, address: str, *, follow: bool = True, working_dir: Path | None = None,
    python: str | None = None, timeout_s: float = 3600.0,
) -> str:
    """Submit `python -m jobs.run_survey` for `config` to the Ray cluster at `address`; returns the job status.

    The working directory (the project root by default) is uploaded with the job; `config` must lie inside
    it. The job runs under `python` (a path on the head, for the entrypoint and Ray's workers alike), by default
    the first `python` on the head's PATH. Ray 2.60 clusters use token authentication: the client needs
    RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token). A job
    that ends FAILED with an `error:` line (a bad input, or an interpreter without the project) raises it.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    working_dir = (working_dir or Path.cwd()).absolute()
    config = config.absolute()
    if not config.is_relative_to(working_dir):
        raise SurveyError(f"config {config} is outside the working directory {working_dir}; move it inside")
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise SurveyError(f"cannot reach the Ray cluster at {address} ({one_line(err)}); "
                          "check --address and RAY_AUTH_MODE=token / the cluster's token") from None
    store = Warehouse(warehouse)
    entrypoint = (f"{shlex.quote(python or 'python')} -m jobs.run_survey --config "
                  f"{shlex.quote(str(config.relative_to(working_dir)))} --warehouse {shlex.quote(store.uri)}")
    runtime_env = {"working_dir": str(working_dir), "excludes": UPLOAD_EXCLUDES}
    if python:
        runtime_env["py_executable"] = python
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except RuntimeError as err:  # a head that has just started: its job agent is not up yet
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise SurveyError(f"the Ray cluster at {address} refused the job ({one_line(err, 300)})") from None
            time.sleep(1.0)
    print(f"submitted Ray job {job_id}: {entrypoint}")
    if not follow:
        return str(client.get_job_status(job_id))
    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(job_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.monotonic() < deadline:
        time.sleep(1.0)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    print(logs[-4000:])
    status = str(status.value if hasattr(status, "value") else status)
    if status == "FAILED":
        errors = [line for line in logs.splitlines() if line.startswith("error: ")]
        last = next((line for line in reversed(logs.splitlines()) if line.strip()), "no output")
        raise SurveyError(errors[-1].removeprefix("error: ") + f" (Ray job {job_id})" if errors else
                          f"Ray job {job_id} ended FAILED; its last line: {one_line(last, 300)}; read its logs with "
                          f"`ray job logs {job_id} --address {address}`")
    return status
