"""`ray job submit` of a survey: the client side of jobs/run_survey.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

from survey.catalog import Warehouse
from survey.errors import SurveyError, one_line

# What the job's working directory upload leaves out: environments, data and caches.
UPLOAD_EXCLUDES = [".venv/", ".git/", "catalogs/warehouse/", "**/__pycache__/", "*.nwb", ".pytest_cache/"]
FINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")


def submit_survey(
    config: Path, warehouse: str, address: str, *, follow: bool = True, working_dir: Path | None = None,
    timeout_s: float = 3600.0,
) -> str:
    """Submit `python -m jobs.run_survey` for `config` to the Ray cluster at `address`; returns the job status.

    The working directory (the project root by default) is uploaded with the job; `config` must lie inside
    it. Ray 2.60 clusters use token authentication: the client needs RAY_AUTH_MODE=token and the cluster's
    token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token).
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
    entrypoint = (f"python -m jobs.run_survey --config {config.relative_to(working_dir)} "
                  f"--warehouse {store.uri}")
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env={"working_dir": str(working_dir), "excludes": UPLOAD_EXCLUDES},
    )
    print(f"submitted Ray job {job_id}: {entrypoint}")
    if not follow:
        return str(client.get_job_status(job_id))
    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(job_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.monotonic() < deadline:
        time.sleep(1.0)
        status = client.get_job_status(job_id)
    print(client.get_job_logs(job_id)[-4000:])
    return str(status.value if hasattr(status, "value") else status)
