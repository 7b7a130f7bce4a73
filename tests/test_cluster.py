"""cluster.yaml passes Ray's own cluster-launcher schema validation."""

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))


def test_cluster_yaml_is_a_valid_ray_cluster_config():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    _validate(config)
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["node_config"]["InstanceType"].startswith(("g", "p"))  # GPU instances
    assert all("RAY_AUTH_MODE=token" in command for command in config["head_start_ray_commands"])


def test_validation_catches_a_broken_config():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["available_node_types"]["gpu_worker"]["min_wrkers"] = 1
    with pytest.raises(Exception, match="min_wrkers"):
        _validate(config)
