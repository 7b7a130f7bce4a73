"""A warehouse in an S3 bucket (a local S3 server on 127.0.0.1): the same survey, the same SQL."""

from __future__ import annotations

from survey.catalog import Warehouse, connect
from survey.config import parse_config
from survey.runtime.survey import run_survey

from .conftest import TINY
from .test_survey import catalog_fingerprint


def test_survey_into_an_s3_bucket_equals_a_local_one(s3_endpoint, tmp_path):
    config = parse_config(TINY)
    remote = Warehouse(f"s3://survey-bucket/warehouse?{s3_endpoint}")
    remote.fs.create_dir("survey-bucket")
    run_survey(config, remote, progress=False)
    local = Warehouse(tmp_path / "wh")
    run_survey(config, local, progress=False)
    assert catalog_fingerprint(remote) == catalog_fingerprint(local)
    rows = connect(remote).execute("SELECT array_uri FROM representations LIMIT 1").fetchall()
    assert rows[0][0].startswith("arrays/")  # relative to the warehouse root: the bucket's copy would stand alone
    assert not any(r.units_run for r in run_survey(config, remote, progress=False))
