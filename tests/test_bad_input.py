"""Bad input: a one-line error naming the input and the fix, exit status 2, and an untouched catalog."""

from __future__ import annotations

import json
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


# ---- preflight: every input of a full run is checked before any stage writes -----------------------------------

BAD_ARRAYS = {
    "wrong dims": np.zeros((4, 8), np.float32),
    "5 channels": np.zeros((4, 5, 8, 8), np.float32),
    "empty": np.zeros((0, 3, 8, 8), np.float32),
    "values of 255": np.full((4, 3, 8, 8), 255.0, np.float32),
}


@pytest.fixture(params=["fresh", "existing"])
def warehouse_of(request, tmp_path, stimuli_warehouse) -> Path:
    """A warehouse that does not exist yet, or one a survey has written to already."""
    return tmp_path / "fresh" if request.param == "fresh" else stimuli_warehouse


def _with_array(path: Path) -> dict:
    """The tiny config, all stages, with one more stimulus set from the array file at `path`."""
    return {**TINY, "stimuli": [*TINY["stimuli"], {"name": "mine", "kind": "array", "path": str(path)}]}


@pytest.mark.parametrize("problem", sorted(BAD_ARRAYS))
def test_a_bad_stimulus_array_stops_a_full_run_before_anything_is_written(problem, tmp_path, warehouse_of):
    np.save(tmp_path / "mine.npy", BAD_ARRAYS[problem])
    fails_cleanly(_with_array(tmp_path / "mine.npy"), warehouse_of, tmp_path, "mine.npy")


def test_a_missing_array_file_leaves_no_warehouse_behind(tmp_path, warehouse_of):
    fails_cleanly(_with_array(tmp_path / "no.npy"), warehouse_of, tmp_path, "no.npy", "does not exist")


def _full_nwb_config(path: Path, **session: object) -> dict:
    return {**TINY, "sessions": {"nwb": [{"path": str(path), "stimset": "natural", **session}]}}


def test_random_bytes_as_nwb_stop_a_full_run_before_any_network_trains(tmp_path, warehouse_of):
    path = tmp_path / "random.nwb"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    fails_cleanly(_full_nwb_config(path), warehouse_of, tmp_path, str(path), "cannot be read as NWB")


def test_a_directory_as_nwb_path_is_called_a_directory(tmp_path, warehouse_of):
    fails_cleanly(_full_nwb_config(tmp_path), warehouse_of, tmp_path, "is a directory")


def _presentations_without_stimset_column(path: Path) -> None:
    from datetime import UTC, datetime

    import pynwb

    nwbfile = pynwb.NWBFile("presentations", "no-stimset-column", datetime(2024, 1, 1, tzinfo=UTC))
    nwbfile.add_unit(spike_times=[0.1, 0.2, 0.3])
    table = pynwb.epoch.TimeIntervals(name="stimulus_presentations", description="shown")
    table.add_column("stimulus_index", "index of the image")
    for i in range(3):
        table.add_interval(start_time=float(i), stop_time=i + 0.5, stimulus_index=i)
    nwbfile.add_time_intervals(table)
    with pynwb.NWBHDF5IO(str(path), "w") as nwb_io:
        nwb_io.write(nwbfile)


def test_nwb_errors_name_the_config_fields_and_what_the_file_has(tmp_path, warehouse_of):
    path = tmp_path / "no-stimset-column.nwb"
    _presentations_without_stimset_column(path)
    message = fails_cleanly(_full_nwb_config(path, stimset=None), warehouse_of, tmp_path, str(path))
    assert "`stimset:`" in message and "stimulus_index" in message and "default_stimset=" in message
    message = fails_cleanly(_full_nwb_config(path, index_column="image"), warehouse_of, tmp_path, str(path))
    assert "stimulus_presentations: start_time, stop_time, stimulus_index" in message
    assert "index_column:" in message


# ---- command-line values: one `error:` line, exit 2, the warehouse unchanged ------------------------------------

def command_fails_cleanly(warehouse: Path, *args: str, expected: tuple[str, ...] = (), stdin: str | None = None) -> str:
    """Run `survey ARGS`; assert exit 2, one `error:` line naming `expected`, and no change under `warehouse`."""
    before = snapshot(warehouse) if warehouse.exists() else None
    result = survey_cli(*args, cwd=REPO, stdin=stdin)
    assert result.returncode == 2, (args, result.stdout[-500:], result.stderr[-2000:])
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    for text in expected:
        assert text in message, message
    assert (snapshot(warehouse) if warehouse.exists() else None) == before
    return message


def test_report_out_naming_a_file(tiny_surveyed, tmp_path):
    a_file = tmp_path / "report.html"
    a_file.write_text("mine")
    root = Path(tiny_surveyed.root)
    command_fails_cleanly(root, "report", "--out", str(a_file), "-w", str(root), expected=(str(a_file), "folder"))
    assert a_file.read_text() == "mine"


def test_a_folder_that_is_not_a_warehouse(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8")
    for args in (("sql", "SELECT count(*) FROM representations"), ("report",), ("compact",), ("index", "ls"),
                 ("search", "rep-0"), ("migrate",), ("layers", "zoo000-supervised")):
        command_fails_cleanly(folder, *args, "-w", str(folder), expected=(str(folder), "not a warehouse"))


def test_search_in_a_missing_warehouse_names_the_warehouse(tmp_path):
    missing = tmp_path / "missing"
    message = command_fails_cleanly(missing, "search", "rep-0", "-w", str(missing), expected=(str(missing),))
    assert "does not exist" in message and "rep-0" not in message


@pytest.mark.parametrize("k", ["0", "-1", "1001"])
def test_search_k_out_of_bounds(tiny_surveyed, k):
    root = Path(tiny_surveyed.root)
    rep = tiny_surveyed.rows("embeddings", ["rep_id"])[0]["rep_id"]
    command_fails_cleanly(root, "search", rep, "-k", k, "-w", str(root), expected=(f"-k {k}", "1 to 1000"))


@pytest.mark.parametrize("units", ["-1", "0,99999"])
def test_mei_unit_out_of_range_writes_nothing(tiny_surveyed, units):
    root = Path(tiny_surveyed.root)
    command_fails_cleanly(root, "mei", "--network", "zoo000-supervised", "--layer", "pool", f"--units={units}",
                          "--steps", "2", "--method", "ga", "-w", str(root), expected=("pick indices from 0 to",))


def test_sql_query_file_and_standard_input(tiny_surveyed, tmp_path):
    """A query longer than the shell's argument limit goes through --file (or --file - for standard input)."""
    names = ", ".join(f"'stimulus-set-{i}'" for i in range(150_000))  # about 3 MB
    query = f"SELECT count(*) AS n FROM stimulus_sets WHERE name IN ('natural', {names})"
    path = tmp_path / "query.sql"
    path.write_text(query)
    from_file = survey_cli("sql", "--file", str(path), "-f", "json", "-w", tiny_surveyed.uri)
    assert from_file.returncode == 0 and '"n": 1' in from_file.stdout, from_file.stderr
    from_stdin = survey_cli("sql", "--file", "-", "-f", "json", "-w", tiny_surveyed.uri, stdin=query)
    assert from_stdin.returncode == 0 and from_stdin.stdout == from_file.stdout, from_stdin.stderr
    root = Path(tiny_surveyed.root)
    command_fails_cleanly(root, "sql", "--file", str(tmp_path / "none.sql"), "-w", str(root),
                          expected=("none.sql", "cannot be read"))
    command_fails_cleanly(root, "sql", "SELECT 1", "--file", str(path), "-w", str(root),
                          expected=("both a query and --file",))
    command_fails_cleanly(root, "sql", "-w", str(root), expected=("no query",))


def test_ids_print_whole_at_80_columns(tiny_surveyed):
    """Tables grow past an 80-column terminal rather than cut an id short (they are copied into the next command)."""
    rep = sorted(row["rep_id"] for row in tiny_surveyed.rows("embeddings", ["rep_id"]))[0]
    for args in (("search", rep, "-k", "5"), ("index", "ls"),
                 ("sql", "SELECT rep_id, array_uri, spatial_uri, preprocessing FROM representations LIMIT 5")):
        result = survey_cli(*args, "-w", tiny_surveyed.uri, env={"COLUMNS": "80"})
        assert result.returncode == 0, result.stderr
        assert "…" not in result.stdout, result.stdout
    spaces = survey_cli("index", "ls", "-f", "json", "-w", tiny_surveyed.uri)
    space_id = json.loads(spaces.stdout)[0]["space_id"]
    assert space_id in survey_cli("index", "ls", "-w", tiny_surveyed.uri, env={"COLUMNS": "80"}).stdout
    found = json.loads(survey_cli("search", rep, "-k", "5", "-f", "json", "-w", tiny_surveyed.uri).stdout)
    assert len(found) == 5 and all(row["rep_id"].startswith("rep-") for row in found)
    as_csv = survey_cli("search", rep, "-k", "5", "-f", "csv", "-w", tiny_surveyed.uri).stdout.splitlines()
    assert as_csv[0].split(",")[:3] == ['"rank"', '"rep_id"', '"distance"'] and len(as_csv) == 6
