"""Read recorded sessions from NWB files (https://nwb-schema.readthedocs.io), as the Allen Brain Observatory
and DANDI publish them: spike times of sorted units, and a table of stimulus presentations.

A session becomes, per stimulus set, an n_stimuli × n_repeats × n_units array of spike rates in a fixed window
after each presentation's onset.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hdmf.build.errors import BuildError, ConstructError
from hdmf.common import DynamicTable, VectorIndex
from pynwb import NWBHDF5IO, NWBFile

from survey.errors import SurveyError

UNKNOWN_AREA = "unknown"
# What h5py and hdmf raise for a file that is missing parts, truncated, not HDF5, or HDF5 but not NWB.
_READ_ERRORS = (OSError, TypeError, ValueError, KeyError, ConstructError, BuildError)


@dataclass(frozen=True)
class RecordedSession:
    """Binned responses of one session: `responses[name]` is n_stimuli × n_repeats × n_units float32 (Hz)."""

    session_id: str
    subject: str
    areas: tuple[str, ...]
    unit_areas: np.ndarray
    responses: dict[str, np.ndarray]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ragged(column: VectorIndex) -> tuple[np.ndarray, np.ndarray]:
    """A ragged column's flat values and each row's start (length n_rows + 1)."""
    ends = np.asarray(column.data[:], dtype=np.int64)
    return np.asarray(column.target.data[:]), np.concatenate([[0], ends])


def _spike_trains(units: DynamicTable) -> list[np.ndarray]:
    """Each unit's spike times, sorted."""
    times, starts = _ragged(units["spike_times"])
    times = times.astype(np.float64)
    return [np.sort(times[a:b]) for a, b in itertools.pairwise(starts)]


def _unit_areas(nwbfile: NWBFile, units: DynamicTable) -> np.ndarray:
    """Each unit's area: the units `location` column, else the `location` of its (first) electrode — via
    the `electrodes` region or, as in Allen Brain Observatory files, `peak_channel_id` — else its electrode
    group's location; "unknown" where none is given."""
    n = len(units)
    areas = np.full(n, "", dtype=object)
    if "location" in units.colnames:
        areas[:] = [_text(v).strip() for v in units["location"].data[:]]
    electrodes = nwbfile.electrodes
    if electrodes is not None and "location" in electrodes.colnames:
        locations = np.array([_text(v).strip() for v in electrodes["location"].data[:]], dtype=object)
        rows = np.full(n, -1)
        if "electrodes" in units.colnames:
            region = units["electrodes"]
            if isinstance(region, VectorIndex):
                flat, starts = _ragged(region)
                present = starts[1:] > starts[:-1]
                rows[present] = flat[starts[:-1][present]]
            else:
                rows[:] = region.data[:]
        elif "peak_channel_id" in units.colnames:
            position = {int(i): row for row, i in enumerate(electrodes.id.data[:])}
            rows[:] = [position.get(int(i), -1) for i in units["peak_channel_id"].data[:]]
        missing = (areas == "") & (rows >= 0)
        areas[missing] = locations[rows[missing]]
    if "electrode_group" in units.colnames:
        for unit in np.flatnonzero(areas == ""):
            areas[unit] = (units["electrode_group"].data[unit].location or "").strip()
    areas[areas == ""] = UNKNOWN_AREA
    return areas.astype(str)


def _interval_tables(nwbfile: NWBFile) -> dict[str, DynamicTable]:
    """All intervals tables by name; pynwb < 4 keeps `trials` and `epochs` apart from `intervals`."""
    tables = dict(nwbfile.intervals or {})
    for name in ("trials", "epochs"):
        table = getattr(nwbfile, name, None)
        if table is not None:
            tables.setdefault(name, table)
    return tables


def _presentation_table(nwbfile: NWBFile, path: Path, name: str | None, index_column: str) -> DynamicTable:
    tables = _interval_tables(nwbfile)
    if name is not None:
        if name not in tables:
            raise SurveyError(
                f"NWB file {path}: has no intervals table {name!r} (it has: {', '.join(tables) or 'none'}); "
                "set the session's presentation_table: to one of those"
            )
        table = tables[name]
        if index_column not in table.colnames:
            raise SurveyError(
                f"NWB file {path}: presentation table {name!r} has no column {index_column!r} "
                f"(columns: {', '.join(table.colnames)}); set the session's index_column: to the stimulus index column"
            )
        return table
    for table in tables.values():
        if index_column in table.colnames:
            return table
    found = "; ".join(f"{name}: {', '.join(table.colnames)}" for name, table in tables.items()) or "none"
    raise SurveyError(
        f"NWB file {path}: has no stimulus presentation table: no intervals table with column {index_column!r} "
        f"(tables and columns: {found}); name them with the session's presentation_table: and index_column:"
    )


def _presentations(
    table: DynamicTable, path: Path, index_column: str, stimset_column: str, default_stimset: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Onset, stimulus-set name and stimulus index of each presentation, in presentation order.

    Rows whose index is negative or missing (blank presentations, as in Allen Brain Observatory tables) are
    skipped.
    """
    start = np.asarray(table["start_time"].data[:], dtype=np.float64)
    try:
        index = np.asarray(table[index_column].data[:], dtype=np.float64)
    except ValueError:
        raise SurveyError(
            f"NWB file {path}: column {index_column!r} of table {table.name!r} is not numeric; "
            "set the session's index_column: to the column holding stimulus indices"
        ) from None
    if stimset_column in table.colnames:
        stimset = np.array([_text(v) for v in table[stimset_column].data[:]], dtype=object)
    elif default_stimset is not None:
        stimset = np.full(len(start), default_stimset, dtype=object)
    else:
        raise SurveyError(
            f"NWB file {path}: table {table.name!r} has no column {stimset_column!r} naming the stimulus set "
            f"(columns: {', '.join(table.colnames)}); set the session's `stimset:` (read_session's default_stimset=) "
            "to the one set it shows, or `stimset_column:` to the column naming it"
        )
    keep = np.isfinite(index) & (index >= 0)
    if np.any(index[keep] != np.round(index[keep])):
        raise SurveyError(
            f"NWB file {path}: column {index_column!r} of table {table.name!r} holds non-integer values; "
            "set the session's index_column: to the column holding stimulus indices"
        )
    order = np.argsort(start[keep], kind="stable")
    return start[keep][order], stimset[keep][order], index[keep][order].astype(np.int64)


def _bin_rates(trains: list[np.ndarray], onsets: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Spike count / duration of each unit in [onset + window[0], onset + window[1]], P × units."""
    lo, hi = onsets + window[0], onsets + window[1]
    rates = np.empty((len(onsets), len(trains)), np.float32)
    for unit, train in enumerate(trains):
        counts = np.searchsorted(train, hi, side="right") - np.searchsorted(train, lo, side="left")
        rates[:, unit] = counts / (window[1] - window[0])
    return rates


def _arrange(rates: np.ndarray, index: np.ndarray, path: Path, name: str) -> np.ndarray:
    """Presentations of one stimulus set (in order) → n_stimuli × n_repeats × n_units, the first n_repeats of
    each stimulus, n_repeats being the fewest any stimulus got."""
    n_stimuli = int(index.max()) + 1
    counts = np.bincount(index, minlength=n_stimuli)
    never = np.flatnonzero(counts == 0)
    if len(never):
        shown = ", ".join(map(str, never[:10])) + (", …" if len(never) > 10 else "")
        raise SurveyError(
            f"NWB file {path}: stimulus set {name!r} never presents stimuli {shown} of 0..{n_stimuli - 1}; "
            "every index up to the largest must appear — check the index column or the table"
        )
    n_repeats = int(counts.min())
    order = np.argsort(index, kind="stable")
    repeat = np.arange(len(index)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = repeat < n_repeats
    out = np.empty((n_stimuli, n_repeats, rates.shape[1]), np.float32)
    out[index[order][keep], repeat[keep]] = rates[order][keep]
    return out


def _unreadable(path: Path, err: Exception) -> SurveyError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return SurveyError(
        f"NWB file {path}: cannot be read as NWB ({reason}); it may be truncated or not an NWB file — "
        "re-download or re-export it"
    )


def read_session(
    path: str | os.PathLike,
    *,
    presentation_table: str | None = None,
    index_column: str = "stimulus_index",
    stimset_column: str = "stimulus_set",
    default_stimset: str | None = None,
    window: tuple[float, float] = (0.05, 0.25),
) -> RecordedSession:
    """Read an NWB session: each unit's spike rate (Hz) in `window` (s after onset) of every presentation.

    Units come from the NWB `units` table (`spike_times`); presentations from the intervals table
    `presentation_table` (or the first one with `index_column`), one row per presentation with its onset
    (`start_time`), its stimulus index, and its stimulus set in `stimset_column` (or `default_stimset` for
    all rows). Every stimulus set gets n_stimuli = largest index + 1 and n_repeats = fewest presentations of
    any stimulus (later extra repeats are dropped).
    """
    path = Path(path)
    if path.is_dir():
        raise SurveyError(f"NWB file {path}: is a directory; give the path of the .nwb file in it")
    if not path.is_file():
        raise SurveyError(f"NWB file {path}: no such file; check the path")
    if not window[0] < window[1]:
        raise SurveyError(f"response window {window} is empty; pass window=(start, stop) with start < stop")
    try:
        io = NWBHDF5IO(str(path), "r")
    except _READ_ERRORS as err:
        raise _unreadable(path, err) from None
    with io:
        try:
            nwbfile = io.read()
        except _READ_ERRORS as err:
            raise _unreadable(path, err) from None
        units = nwbfile.units
        if units is None or len(units) == 0 or "spike_times" not in units.colnames:
            raise SurveyError(f"NWB file {path}: has no units with spike_times; add the sorted units to it")
        try:
            trains = _spike_trains(units)
            unit_areas = _unit_areas(nwbfile, units)
            table = _presentation_table(nwbfile, path, presentation_table, index_column)
            onsets, stimsets, index = _presentations(
                table, path, index_column, stimset_column, default_stimset
            )
        except OSError as err:
            raise _unreadable(path, err) from None
        session_id = nwbfile.session_id or nwbfile.identifier
        subject = nwbfile.subject.subject_id if nwbfile.subject is not None else None
    if len(onsets) == 0:
        raise SurveyError(
            f"NWB file {path}: table {table.name!r} lists no presentations with a stimulus index; "
            "set the session's presentation_table: and index_column: to the right ones"
        )
    rates = _bin_rates(trains, onsets, window)
    responses = {
        str(name): _arrange(rates[stimsets == name], index[stimsets == name], path, str(name))
        for name in dict.fromkeys(stimsets)
    }
    return RecordedSession(
        session_id=str(session_id), subject=str(subject or "unknown"),
        areas=tuple(map(str, dict.fromkeys(unit_areas))), unit_areas=unit_areas, responses=responses,
    )
