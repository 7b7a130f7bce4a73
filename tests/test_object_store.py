"""A warehouse in an S3 bucket (a local S3 server on 127.0.0.1): the same survey, the same SQL."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from survey.catalog import Warehouse, connect
from survey.config import parse_config
from survey.runtime.survey import run_survey

from .conftest import TINY
from .test_survey import catalog_fingerprint

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3_endpoint(monkeypatch):
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    if server is None:
        pytest.skip("moto[server] is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert process.poll() is None and time.monotonic() < deadline, "the S3 server did not start"
            time.sleep(0.2)
        for name, value in CREDENTIALS.items():
            monkeypatch.setenv(name, value)
        yield f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1&allow_bucket_creation=true"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_survey_into_an_s3_bucket_equals_a_local_one(s3_endpoint, tmp_path):
    config = parse_config(TINY)
    remote = Warehouse(f"s3://survey-bucket/warehouse?{s3_endpoint}")
    remote.fs.create_dir("survey-bucket")
    run_survey(config, remote, progress=False)
    local = Warehouse(tmp_path / "wh")
    run_survey(config, local, progress=False)
    assert catalog_fingerprint(remote) == catalog_fingerprint(local)
    rows = connect(remote).execute("SELECT array_uri FROM representations LIMIT 1").fetchall()
    assert rows[0][0].startswith("s3://survey-bucket/warehouse/arrays/")
    assert not any(r.units_run for r in run_survey(config, remote, progress=False))
