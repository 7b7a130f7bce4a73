"""Synthetic NWB sessions and the NWB reader: round trip, binning, hierarchy, Allen-style files, errors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pynwb
import pytest

from survey.errors import SurveyError
from survey.sources.nwb import read_session
from survey.sources.synthetic import AREAS, default_model, session_neurons, write_session

SEED = 7
UNITS = 8
REPEATS = 6


def textures(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Grayscale 1/f-noise images, n × size × size, mean 0.5."""
    f = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
    noise = np.fft.ifft2(np.exp(2j * np.pi * rng.random((n, size, size))) / np.maximum(f, 1 / size)).real
    noise /= noise.std(axis=(1, 2), keepdims=True)
    return np.clip(0.5 + 0.2 * noise, 0, 1)


def objects(rng: np.random.Generator, n: int, size: int = 32, shift: int = 0) -> np.ndarray:
    """Textured discs on mid-gray (n × 3 × size × size), moved right by `shift` pixels (at most size / 8)."""
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size))
    for k, texture in enumerate(textures(rng, n, size)):
        radius = rng.uniform(0.19, 0.31) * size
        cy, cx = rng.uniform(0.4, 0.6) * size, rng.uniform(0.4, 0.5) * size
        disc = np.clip(radius - np.hypot(yy - cy, xx - cx), 0, 1)
        out[k] = np.roll(texture * disc + 0.5 * (1 - disc), shift, axis=1)
    return np.repeat(out[:, None], 3, axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def stimulus_sets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"objects": objects(rng, 40), "noise": rng.random((20, 3, 32, 32), dtype=np.float32)}


@pytest.fixture(scope="module")
def session(tmp_path_factory, stimulus_sets) -> Path:
    path = tmp_path_factory.mktemp("nwb") / "session.nwb"
    write_session(path, stimulus_sets, session_id="s7", subject="monkeyA", seed=SEED, units_per_area=UNITS)
    return path


def test_round_trip_shapes_and_metadata(session, stimulus_sets):
    recorded = read_session(session)
    assert recorded.session_id == "s7" and recorded.subject == "monkeyA"
    assert recorded.areas == AREAS
    assert list(recorded.unit_areas) == [area for area in AREAS for _ in range(UNITS)]
    assert {name: r.shape for name, r in recorded.responses.items()} == {
        name: (len(images), REPEATS, UNITS * len(AREAS)) for name, images in stimulus_sets.items()
    }
    assert all(r.dtype == np.float32 for r in recorded.responses.values())
    assert not list(session.parent.glob(".*.tmp"))  # the atomic write left no temporary file


def test_binned_rates_follow_the_model(session, stimulus_sets):
    recorded = read_session(session)
    model = default_model()
    populations = session_neurons(SEED, units_per_area=UNITS)
    expected, observed = [], []
    for name, images in stimulus_sets.items():
        rates = np.concatenate([model.rates(images, p.area, p) for p in populations], axis=1)
        expected.append(rates.ravel())
        observed.append(recorded.responses[name].mean(axis=1).ravel())
    expected, observed = np.concatenate(expected), np.concatenate(observed)
    assert np.corrcoef(expected, observed)[0, 1] > 0.85
    assert abs(observed.mean() / expected.mean() - 1) < 0.1


def test_driven_units_are_reliable_across_repeats(session, stimulus_sets):
    responses = read_session(session).responses["objects"]
    halves = responses[:, 0::2].mean(axis=1), responses[:, 1::2].mean(axis=1)
    driven = responses.mean(axis=1).std(axis=0) > 5.0
    assert driven.sum() >= len(AREAS) * UNITS // 2
    split_half = [np.corrcoef(halves[0][:, u], halves[1][:, u])[0, 1] for u in np.flatnonzero(driven)]
    reliability = 2 * np.median(split_half) / (1 + np.median(split_half))  # Spearman–Brown to 6 repeats
    assert reliability > 0.75


def test_spike_counts_match_a_plain_loop(session):
    recorded = read_session(session)
    with pynwb.NWBHDF5IO(str(session), "r") as io:
        nwbfile = io.read()
        table = nwbfile.intervals["stimulus_presentations"]
        rows = list(zip(table["start_time"].data[:], table["stimulus_set"].data[:],
                        table["stimulus_index"].data[:], strict=True))
        units = [0, UNITS + 3, 2 * UNITS + 5]
        trains = {u: list(nwbfile.units["spike_times"][u]) for u in units}
    seen: dict[tuple[str, int], int] = {}
    for start, name, index in sorted(rows, key=lambda row: row[0])[:120]:
        repeat = seen.get((name, index), 0)
        seen[(name, index)] = repeat + 1
        for u in units:
            count = sum(1 for t in trains[u] if start + 0.05 <= t <= start + 0.25)
            assert recorded.responses[name][index, repeat, u] == pytest.approx(count / 0.2)


def test_same_seed_same_data(tmp_path, stimulus_sets, session):
    again = tmp_path / "again.nwb"
    write_session(again, stimulus_sets, session_id="s7", subject="monkeyA", seed=SEED, units_per_area=UNITS)
    first, second = read_session(session), read_session(again)
    for name in stimulus_sets:
        np.testing.assert_array_equal(first.responses[name], second.responses[name])


def test_invariance_grows_from_v1_to_it():
    """Shifting objects by 4 pixels decorrelates V1 responses but hardly changes IT's."""
    model = default_model()
    images = objects(np.random.default_rng(1), 150)
    shifted = objects(np.random.default_rng(1), 150, shift=4)
    rng = np.random.default_rng(2)
    invariance = {}
    for area in AREAS:
        neurons = model.sample_neurons(area, 20, rng)
        a, b = model.rates(images, area, neurons), model.rates(shifted, area, neurons)
        driven = a.std(axis=0) > 1e-3
        invariance[area] = np.median([np.corrcoef(a[:, u], b[:, u])[0, 1] for u in np.flatnonzero(driven)])
    assert invariance["V1"] < 0.3
    assert invariance["V1"] + 0.2 < invariance["V4"] < invariance["IT"]
    assert invariance["IT"] > 0.75


def test_model_rates_are_in_range_and_deterministic():
    model = default_model()
    images = objects(np.random.default_rng(3), 30, size=24)
    for area in AREAS:
        neurons = model.sample_neurons(area, 10, np.random.default_rng(4))
        rates = model.rates(images, area, neurons)
        assert rates.shape == (30, 10) and rates.dtype == np.float32
        assert rates.min() >= 2.0 and rates.max() <= 60.0
        np.testing.assert_array_equal(rates, model.rates(images, area, neurons))


def allen_style(path: Path, frames: list[float], link: str = "electrodes") -> Path:
    """An NWB file as the Allen Brain Observatory writes one: areas only in the electrodes table,
    presentations in `trials` with a `frame` column (-1 = blank). Unit u fires u + 1 + trial spikes inside
    [0.05, 0.25] s of each trial, plus one spike before and one after that window."""
    nwbfile = pynwb.NWBFile("allen style", "allen-1", datetime(2024, 1, 1, tzinfo=UTC), session_id="allen")
    probe = nwbfile.create_electrode_group("probeA", "neuropixels", "", nwbfile.create_device("probeA"))
    for location in ("VISp", "VISl", "VISp"):
        nwbfile.add_electrode(group=probe, location=location)
    nwbfile.add_trial_column("frame", "natural scene shown, -1 for blank")
    for trial, frame in enumerate(frames):
        nwbfile.add_trial(start_time=float(trial), stop_time=trial + 0.25, frame=frame)
    if link == "peak_channel_id":
        nwbfile.add_unit_column("peak_channel_id", "electrode id of the unit's largest waveform")
    for unit in range(3):
        spikes = [t + 0.01 for t in range(len(frames))] + [t + 0.3 for t in range(len(frames))]
        spikes += [t + 0.06 + 0.01 * k for t in range(len(frames)) for k in range(unit + 1 + t)]
        link_value = {"electrodes": [unit]} if link == "electrodes" else {"peak_channel_id": unit}
        nwbfile.add_unit(spike_times=sorted(spikes), **link_value)
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path


@pytest.mark.parametrize("link", ["electrodes", "peak_channel_id"])
def test_allen_style_file(tmp_path, link):
    frames = [0.0, 1.0, 2.0, -1.0, 2.0, 1.0, 0.0, 2.0]  # frame 2 is shown three times: the last is dropped
    path = allen_style(tmp_path / "allen.nwb", frames, link)
    recorded = read_session(path, index_column="frame", default_stimset="natural")
    assert recorded.areas == ("VISp", "VISl") and list(recorded.unit_areas) == ["VISp", "VISl", "VISp"]
    assert recorded.session_id == "allen" and recorded.subject == "unknown"
    responses = recorded.responses["natural"]
    assert responses.shape == (3, 2, 3)
    trials = {0: [0, 6], 1: [1, 5], 2: [2, 4]}
    for frame, (first, second) in trials.items():
        for unit in range(3):
            assert responses[frame, :, unit].tolist() == pytest.approx([(unit + 1 + first) / 0.2,
                                                                        (unit + 1 + second) / 0.2])


def units_only(path: Path) -> Path:
    nwbfile = pynwb.NWBFile("units only", "no-presentations", datetime(2024, 1, 1, tzinfo=UTC))
    nwbfile.add_unit(spike_times=[0.1, 0.2, 0.3])
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path


def truncated(path: Path) -> Path:
    images = np.random.default_rng(0).random((8, 3, 16, 16), dtype=np.float32)
    write_session(path, {"natural": images}, session_id="t", subject="a", seed=0, units_per_area=2, repeats=2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def not_hdf5(path: Path) -> Path:
    path.write_text("spike times, but as text\n" * 50)
    return path


@pytest.mark.parametrize(("make", "kwargs", "expected"), [
    (lambda p: p, {}, "no such file"),
    (truncated, {}, "cannot be read as NWB"),
    (not_hdf5, {}, "cannot be read as NWB"),
    (units_only, {}, "no stimulus presentation table"),
    (lambda p: allen_style(p, [0.0, 2.0, 0.0, 2.0]), {"index_column": "frame", "default_stimset": "natural"},
     "never presents stimuli 1"),
    (lambda p: allen_style(p, [0.0, 1.0]), {"index_column": "frame"}, "default_stimset"),
    (lambda p: allen_style(p, [0.0, 1.0]), {"presentation_table": "flashes"}, "no intervals table 'flashes'"),
])
def test_reader_errors_are_one_line_and_name_the_file(tmp_path, make, kwargs, expected):
    path = make(tmp_path / "bad.nwb")
    with pytest.raises(SurveyError) as caught:
        read_session(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and expected in message, message
