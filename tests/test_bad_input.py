"""Bad input: a one-line error naming the input and the fix, exit status 2, and an untouched catalog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from survey.catalog import Warehouse
from survey.config import parse_config
from survey.runtime.survey import run_survey
from survey.sources.synthetic import write_session

from .conftest import TINY, survey_cli
from .nets import small_cnn

REPO = Path(__file__).resolve().parents[1]


def snapshot(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def stimuli_warehouse(tmp_path_factory) -> Path:
    """A warehouse holding the tiny config's stimulus sets (what a survey has written before it fails)."""
    root = tmp_path_factory.mktemp("populated") / "wh"
    run_survey(parse_config(TINY), Warehouse(root), stages=("stimuli",), progress=False)
    return root


def fails_cleanly(config: dict, warehouse: Path, tmp_path: Path, *expected: str) -> str:
    """Run `config` through the CLI; assert exit 2, one line naming `expected`, and no change to `warehouse`."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    before = snapshot(warehouse) if warehouse.exists() else None
    result = survey_cli("run", str(path), "-w", str(warehouse), cwd=REPO)
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()[-1]  # progress bars may stand above it
    assert message.startswith("error: ") and result.stderr.count("error: ") == 1, result.stderr
    for text in expected:
        assert text in message, message
    assert (snapshot(warehouse) if warehouse.exists() else None) == before
    return message


def _nwb_config(path: Path) -> dict:
    return {**TINY, "sessions": {"nwb": [{"path": str(path), "stimset": "natural"}]}, "stages": ["stimuli", "sessions"]}


def test_truncated_nwb(tmp_path, stimuli_warehouse):
    path = tmp_path / "session.nwb"
    images = np.random.default_rng(0).random((24, 3, 32, 32), dtype=np.float32)
    write_session(path, {"natural": images}, session_id="s", subject="a", seed=0, units_per_area=2, repeats=2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    fails_cleanly(_nwb_config(path), stimuli_warehouse, tmp_path, str(path))


def test_nwb_without_presentation_table(tmp_path, stimuli_warehouse):
    from datetime import UTC, datetime

    import pynwb

    path = tmp_path / "no-presentations.nwb"
    nwbfile = pynwb.NWBFile("units only", "no-presentations", datetime(2024, 1, 1, tzinfo=UTC))
    nwbfile.add_unit(spike_times=[0.1, 0.2, 0.3])
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    message = fails_cleanly(_nwb_config(path), stimuli_warehouse, tmp_path, str(path))
    assert "presentation" in message


def test_unknown_layer_name(tmp_path):
    config = {**TINY, "zoo": {**TINY["zoo"], "layers": ["stem", "stack9.cell0"]}}
    warehouse = tmp_path / "wh"
    fails_cleanly(config, warehouse, tmp_path, "stack9.cell0")
    assert not warehouse.exists()
    config = {**TINY, "zoo": None, "networks": [
        {"name": "mine", "kind": "callable", "target": "tests.nets:small_cnn", "layers": ["1", "fc9"]}]}
    fails_cleanly(config, warehouse, tmp_path, "'fc9'", "mine")


def test_stimulus_set_with_nans(tmp_path, stimuli_warehouse):
    images = np.random.default_rng(0).random((8, 3, 16, 16)).astype(np.float32)
    images[3, 1, 2, 2] = np.nan
    np.save(tmp_path / "stimuli.npy", images)
    mine = {"name": "mine", "kind": "array", "path": str(tmp_path / "stimuli.npy")}
    config = {**TINY, "stimuli": [*TINY["stimuli"], mine], "stages": ["stimuli"]}
    message = fails_cleanly(config, stimuli_warehouse, tmp_path, "stimuli.npy", "mine")
    assert "NaN" in message


def test_checkpoint_that_is_not_a_state_dict(tmp_path):
    torch.save(small_cnn(), tmp_path / "whole-module.pt")  # a pickled module, not a state dict
    config = {**TINY, "zoo": None, "networks": [{
        "name": "mine", "kind": "callable", "target": "tests.nets:small_cnn",
        "weights": str(tmp_path / "whole-module.pt"), "layers": ["1"]}]}
    warehouse = tmp_path / "wh"
    message = fails_cleanly(config, warehouse, tmp_path, "whole-module.pt")
    assert "state dict" in message and not warehouse.exists()


def test_unreadable_warehouse(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("not a warehouse")
    for args in (["sql", "SELECT 1"], ["demo"]):
        result = survey_cli(*args, "-w", str(a_file))
        assert result.returncode == 2
        assert result.stderr.strip().count("\n") == 0 and str(a_file) in result.stderr, result.stderr
        assert "--warehouse" in result.stderr
    assert a_file.read_text() == "not a warehouse"


def test_config_errors_name_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**TINY, "zoo": {**TINY["zoo"], "n_architecture": 3}}))
    result = survey_cli("run", str(path), "-w", str(tmp_path / "wh"))
    assert result.returncode == 2 and "zoo.n_architecture" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "wh").exists()
