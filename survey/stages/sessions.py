"""Stage `sessions`: write synthetic NWB sessions, read NWB files, bin them into representations per area."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from survey.catalog import Warehouse
from survey.catalog.stimuli import load_images, stimset_rows
from survey.config import NWBSession
from survey.errors import SurveyError
from survey.hashing import content_key, file_hash, stable_hash
from survey.sources.nwb import RecordedSession, read_session
from survey.sources.synthetic import write_session
from survey.stages import RunInfo, Stage, WorkUnit

# Relative depth of the areas of the primate ventral stream, so that areas and layers share an axis.
AREA_DEPTH = {"V1": 0.0, "V2": 0.25, "V4": 0.5, "IT": 1.0}


class SessionsStage(Stage):
    name = "sessions"
    section = "sessions"
    table = "sessions"
    writes_also = ("representations",)
    reads = ("stimulus_sets",)

    def check(self) -> None:
        """Read every NWB session the way the stage will (units, presentation table, columns, stimulus indices) and
        match its stimulus sets to the config's, before anything is written."""
        defined = {spec.name for spec in self.config.stimuli}
        for nwb in self.config.sessions.nwb if self.config.sessions else ():
            recorded = _read(nwb)
            unknown = sorted(set(recorded.responses) - defined)
            if unknown:
                raise SurveyError(f"NWB file {nwb.path}: presents stimulus sets {unknown} that the config does not "
                                  f"define; add them under `stimuli:` (defined: {sorted(defined)})")

    def plan(self, warehouse: Warehouse, info: RunInfo) -> list[WorkUnit]:
        sessions = self.options
        units = []
        if sessions.synthetic:
            synthetic = sessions.synthetic
            sets = stimset_rows(self.config, warehouse, synthetic.stimuli)
            stimset_ids = {name: row["stimset_id"] for name, row in sets.items()}
            for index in range(synthetic.n):
                subject = f"subject{index % synthetic.subjects:02d}"
                name = f"synth-{subject}-{index:03d}"
                units.append(self.unit("ses", [synthetic.model_dump(mode="json", exclude={"n", "stimuli"}),
                                               stimset_ids, index],
                                       name, {"synthetic": index, "subject": subject, "stimsets": sets}))
        if sessions.nwb:
            sets = stimset_rows(self.config, warehouse, tuple(spec.name for spec in self.config.stimuli))
            units += [self._nwb_unit(nwb, sets) for nwb in sessions.nwb]
        return units

    def _nwb_unit(self, nwb: NWBSession, sets: dict[str, dict]) -> WorkUnit:
        path = Path(nwb.path)
        reader = nwb.model_dump(mode="json", exclude={"path", "name"})
        return self.unit("ses", [_file_hash(path), reader, {n: r["stimset_id"] for n, r in sets.items()}],
                         nwb.name or path.stem, {"nwb": nwb, "stimsets": sets})

    def run(self, unit: WorkUnit, warehouse: Warehouse, info: RunInfo) -> dict[str, int]:
        sets: dict[str, dict] = unit.payload["stimsets"]
        if "nwb" in unit.payload:
            nwb: NWBSession = unit.payload["nwb"]
            recorded = _read(nwb)
            return self._ingest(unit, recorded, sets, str(Path(nwb.path).absolute()), False, warehouse, info)
        synthetic = self.config.sessions.synthetic
        images = {name: load_images(warehouse, row["uri"]) for name, row in sets.items()}
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, f"{unit.label}.nwb")
            write_session(
                path, images, session_id=unit.label, subject=unit.payload["subject"],
                seed=synthetic.seed * 100_003 + unit.payload["synthetic"], units_per_area=synthetic.units_per_area,
                repeats=synthetic.repeats,
            )
            recorded = read_session(path)
            # named by the recipe, not the bytes (HDF5 stamps creation times): a rerun or a concurrent run of the
            # same session finds the file in place instead of leaving a second copy that no row references
            source_uri = warehouse.put_file(path, stable_hash("synthetic-nwb", unit.key), ".nwb")
        return self._ingest(unit, recorded, sets, source_uri, True, warehouse, info)

    def _ingest(
        self, unit: WorkUnit, recorded: RecordedSession, sets: dict[str, dict], source_uri: str, synthetic: bool,
        warehouse: Warehouse, info: RunInfo,
    ) -> dict[str, int]:
        unknown = sorted(set(recorded.responses) - set(sets))
        if unknown:
            raise SurveyError(
                f"session {unit.label}: presents stimulus sets {unknown} that the config does not define; "
                f"add them under `stimuli:` (defined: {sorted(sets)})"
            )
        reps, hashes = [], []
        for stimset_name, responses in sorted(recorded.responses.items()):
            row_set = sets[stimset_name]
            if responses.shape[0] != row_set["n_images"]:
                raise SurveyError(
                    f"session {unit.label}: stimulus set {stimset_name!r} has {row_set['n_images']} images but "
                    f"the NWB presents {responses.shape[0]}; check the stimulus index column"
                )
            for index, area in enumerate(recorded.areas):
                area_repeats = np.ascontiguousarray(responses[:, :, recorded.unit_areas == area], np.float32)
                mean_uri, digest = warehouse.put_array(area_repeats.mean(axis=1))
                repeats_uri, _ = warehouse.put_array(area_repeats)
                hashes.append(digest)
                reps.append({
                    "rep_id": content_key("rep", unit.key, area, row_set["stimset_id"]),
                    "source_kind": "session", "source_id": unit.key, "source_name": unit.label,
                    "layer_or_area": area, "layer_index": index, "depth": AREA_DEPTH.get(area),
                    "stimset_id": row_set["stimset_id"], "n_stimuli": area_repeats.shape[0],
                    "n_units": area_repeats.shape[2], "array_uri": mean_uri, "spatial_uri": None,
                    "repeats_uri": repeats_uri, "n_repeats": area_repeats.shape[1], "preprocessing": "{}",
                    "content_hash": digest, **info.provenance(),
                })
        session = {
            "session_id": unit.key, "name": unit.label, "subject": recorded.subject, "areas": list(recorded.areas),
            "n_units": len(recorded.unit_areas),
            "stimsets": [sets[name]["stimset_id"] for name in sorted(recorded.responses)],
            "n_stimuli": sum(r.shape[0] for r in recorded.responses.values()),
            "n_repeats": min(r.shape[1] for r in recorded.responses.values()), "synthetic": synthetic,
            "source_uri": source_uri, "content_hash": stable_hash(hashes), **info.provenance(),
        }
        written = {"representations": self.commit(warehouse, "representations", unit, reps)}
        written[self.table] = self.commit(warehouse, self.table, unit, [session])
        return written


def _read(nwb: NWBSession) -> RecordedSession:
    return read_session(nwb.path, presentation_table=nwb.presentation_table, index_column=nwb.index_column,
                        stimset_column=nwb.stimset_column, default_stimset=nwb.stimset, window=nwb.window)


def _file_hash(path: Path) -> str:
    try:
        return file_hash(path)
    except OSError as err:
        raise SurveyError(f"NWB file {path}: cannot read it ({err.strerror}); fix the path or permissions") from None
