"""Stage `distances`: shape distances per stimulus set and metric configuration → `shape_distances`.

Representations are grouped into stable blocks (`distance_blocks`): each planning round puts the representations that
no block holds yet into new blocks of `tile_size`, and a block never changes afterwards. With ``pairs: all`` a unit of
work is a tile, the pairs between two blocks, so a survey that grows computes only the tiles of its new blocks (new ×
old and new × new pairs) and every pair lies in exactly one tile. With ``pairs: landmarks`` a unit is one landmark's
distances to one block; landmarks are picked round by round (maxmin: the first by a seeded draw, each next one the
representation farthest from those before) and frozen in `distance_landmarks`, so a survey too big for all pairs still
gets a space and search (DESIGN §5.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from survey.catalog import Warehouse
from survey.catalog.distances import FrozenLandmarks, landmark_sequence, metric_filter
from survey.catalog.prepared import REP_COLUMNS, eligible, load_prepared
from survey.catalog.stimuli import catalog_stimulus_sets
from survey.config import DistanceMetric
from survey.embedding import fold_nearest
from survey.errors import SurveyError
from survey.hashing import canonical_json, content_key
from survey.metrics.shape import all_pairs
from survey.stages import RunInfo, Stage, WorkUnit, torch_threads

FIRST_LANDMARK_SEED = 0


@dataclass(frozen=True)
class Block:
    """A fixed group of representations of one stimulus set: the side of a tile."""

    block_id: str
    rep_ids: tuple[str, ...]


def stable_blocks(warehouse: Warehouse, stimset_id: str, rep_ids: list[str], size: int, info: RunInfo) -> list[Block]:
    """The blocks of `stimset_id`, after a new round has put every representation of `rep_ids` that no block holds
    into blocks of at most `size` (sorted ids). A round is committed with its number as the unit key, so two runs
    planning at once agree: the second finds the round taken, reads it and makes the next one if still needed."""
    while True:
        rows = warehouse.dataset("distance_blocks").to_table(filter=pc.field("stimset_id") == stimset_id).to_pylist()
        blocks = [Block(row["block_id"], tuple(row["rep_ids"]))  # in the order made: a tile's key names its
                  for row in sorted(rows, key=lambda row: (row["round"], row["rep_ids"][0]))]  # blocks in this order
        held = {rep for block in blocks for rep in block.rep_ids}
        new = sorted(rep for rep in rep_ids if rep not in held)
        if not new:
            return blocks
        round_ = max((row["round"] for row in rows), default=0) + 1
        chunks = [tuple(new[start:start + size]) for start in range(0, len(new), size)]
        fresh = [Block(content_key("block", stimset_id, chunk), chunk) for chunk in chunks]
        written = warehouse.append_unit("distance_blocks", f"blocks-{stimset_id}-{round_}", [
            {"stimset_id": stimset_id, "block_id": block.block_id, "round": round_, "rep_ids": list(block.rep_ids),
             **info.provenance()} for block in fresh])
        if written:
            return blocks + fresh


@dataclass
class LandmarkSelection:
    """One landmark selection as this process has followed it: the frozen landmarks, the row units of each (planned
    once), how many of those rounds are known committed, each candidate's distance to its nearest landmark, and the
    data files of `shape_distances` folded into it. A new process rebuilds it once from the stored rows."""

    candidates: list[str]
    members: dict[str, dict]  # the representation rows the units carry, shared by every round's units
    landmarks: FrozenLandmarks
    rounds: list[list[WorkUnit]] = field(default_factory=list)
    committed: int = 0
    distance_files: set[str] = field(default_factory=set)
    nearest: np.ndarray = field(init=False)  # each candidate's distance to its nearest landmark (−inf: a landmark)

    def __post_init__(self) -> None:
        self.nearest = np.full(len(self.candidates), np.inf)
        self._ids = pa.array(self.candidates, pa.string())

    def items(self, rep_ids: pa.Array | pa.ChunkedArray | list[str]) -> np.ndarray:
        """Indices of `rep_ids` among the candidates, −1 where not one."""
        return pc.fill_null(pc.index_in(rep_ids, value_set=self._ids), -1).to_numpy()


class DistancesStage(Stage):
    name = "distances"
    section = "distances"
    table = "shape_distances"
    writes_also = ("distance_blocks", "distance_landmarks")
    reads = ("representations", "stimulus_sets")
    version = 2

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._selections: dict[tuple, LandmarkSelection] = {}  # landmarks mode, by configuration and candidates

    def __getstate__(self) -> dict:
        """What a worker gets: it runs units and plans nothing, so the landmark selections stay with the planner."""
        return {**self.__dict__, "_selections": {}}

    @property
    def iterative(self) -> bool:
        """Landmarks mode plans round by round: each landmark is chosen from the rows of the ones before."""
        return self.options is not None and self.options.pairs == "landmarks"

    def plan(self, warehouse: Warehouse, info: RunInfo) -> list[WorkUnit]:
        settings = self.options
        sets = catalog_stimulus_sets(warehouse, settings.stimuli or self.config.activations.stimuli,
                                     "distances.stimuli")
        reps = warehouse.rows("representations", REP_COLUMNS)
        units = []
        for stimset in sorted(sets.values(), key=lambda row: row["name"]):
            members = {rep["rep_id"]: rep for rep in reps if rep["stimset_id"] == stimset["stimset_id"]}
            if len(members) < 2:
                continue
            blocks = stable_blocks(warehouse, stimset["stimset_id"], list(members), settings.tile_size, info)
            for metric in settings.metrics:
                if settings.pairs == "all":
                    self._check_mode(warehouse, metric, stimset, landmark_sequence(warehouse, metric,
                                                                                   stimset["stimset_id"]))
                    units += self._tiles(metric, stimset, blocks, members)
                else:
                    units += self._landmark_rows(warehouse, metric, stimset, blocks, members, info)
        return units

    def recipe(self, metric: DistanceMetric) -> dict:
        """Everything a distance depends on besides the two arrays."""
        return {**metric.model_dump(), "conv_size": metric.pooling(self.options.conv_size)}

    def _tiles(self, metric: DistanceMetric, stimset: dict, blocks: list[Block], members: dict) -> list[WorkUnit]:
        """One unit per pair of blocks (i ≤ j) with something to compare, the diagonal tiles (i, i) first: workers
        running them at once prepare different blocks, and every later tile reads stored factors."""
        recipe, units = self.recipe(metric), []
        sides = [[members[rep] for rep in block.rep_ids if eligible(metric.metric, members[rep])] for block in blocks]
        for offset in range(len(sides)):
            for i in range(len(sides) - offset):
                j, rows = i + offset, sides[i]
                cols = sides[j] if j > i else None
                if len(rows) < (2 if cols is None else 1) or cols == []:
                    continue
                parts = [recipe, stimset["stimset_id"], blocks[i].block_id, blocks[j].block_id]
                units.append(self.unit("dist", parts, f"{metric.label} · {stimset['name']} · tile {i},{j}", {
                    "metric": metric, "stimset_id": stimset["stimset_id"], "rows": rows, "cols": cols},
                    affinity=i))
        return units

    def _landmark_rows(self, warehouse: Warehouse, metric: DistanceMetric, stimset: dict, blocks: list[Block],
                       members: dict, info: RunInfo) -> list[WorkUnit]:
        """The row units of every frozen landmark; once they are all committed, the next landmark and its row.

        A round costs the same however many came before: rows already planned are reused, committed rounds are not
        checked again, and the nearest-landmark distances fold in only the data files stored since (DESIGN §5.4)."""
        settings, stimset_id = self.options, stimset["stimset_id"]
        candidates = sorted(rep for rep in members if eligible(metric.metric, members[rep]))
        state_key = (canonical_json(self.recipe(metric)), stimset_id, tuple(candidates),
                     tuple(block.block_id for block in blocks))
        selection = self._selections.setdefault(state_key, LandmarkSelection(candidates, members,
                                                                             FrozenLandmarks(metric, stimset_id)))

        def planned(sequence: list[str]) -> list[WorkUnit]:
            while len(selection.rounds) < len(sequence):  # the sequence is frozen: a planned round never changes
                selection.rounds.append(self._row_units(metric, stimset, blocks, selection.members, sequence,
                                                        len(selection.rounds)))
            return [unit for round_units in selection.rounds for unit in round_units]

        sequence = selection.landmarks.read(warehouse)
        self._check_mode(warehouse, metric, stimset, sequence)
        units = planned(sequence)
        if len(sequence) >= min(settings.landmarks, len(candidates)):
            return units
        done = warehouse.done_keys(self.table)
        while selection.committed < len(sequence) and all(unit.key in done
                                                          for unit in selection.rounds[selection.committed]):
            selection.committed += 1
        if selection.committed < len(sequence):
            return units
        if sequence:
            stored = warehouse.read_new_files(self.table, selection.distance_files, ["rep_a", "rep_b", "distance"],
                                              metric_filter(metric, stimset_id))
            fold_nearest(selection.nearest, selection.items(stored["rep_a"]), selection.items(stored["rep_b"]),
                         stored["distance"].to_numpy())
            landmarks = selection.items(sequence)
            selection.nearest[landmarks[landmarks >= 0]] = -np.inf
            pick = candidates[int(np.argmax(selection.nearest))]
        else:
            pick = candidates[int(np.random.default_rng(FIRST_LANDMARK_SEED).integers(len(candidates)))]
        round_ = len(sequence) + 1
        key = content_key("landmark", self.recipe(metric), stimset_id, round_)
        warehouse.append_unit("distance_landmarks", key, [{
            "stimset_id": stimset_id, **metric.columns(), "round": round_, "rep_id": pick, **info.provenance()}])
        return planned(selection.landmarks.read(warehouse))  # ours, or a concurrent planner's pick

    def _row_units(self, metric: DistanceMetric, stimset: dict, blocks: list[Block], members: dict,
                   sequence: list[str], r: int) -> list[WorkUnit]:
        """Landmark `sequence[r]` against every block, leaving out itself and the landmarks before it (their rows
        hold those pairs already), so every pair is computed once."""
        recipe, landmark, units = self.recipe(metric), sequence[r], []
        earlier = set(sequence[:r + 1])
        for index, block in enumerate(blocks):
            cols = [members[rep] for rep in block.rep_ids if rep not in earlier and eligible(metric.metric,
                                                                                              members[rep])]
            if cols:
                units.append(self.unit("dist-landmark", [recipe, stimset["stimset_id"], r, landmark, block.block_id,
                                                         [rep["rep_id"] for rep in cols]],
                                       f"{metric.label} · {stimset['name']} · landmark {r + 1}", {
                    "metric": metric, "stimset_id": stimset["stimset_id"], "rows": [members[landmark]],
                    "cols": cols, "round": r}, affinity=index))
        return units

    def _check_mode(self, warehouse: Warehouse, metric: DistanceMetric, stimset: dict, sequence: list[str]) -> None:
        """One metric configuration is computed in one mode: tiles after landmark rows (or landmark rows after
        tiles) would store some pairs twice."""
        mode = self.options.pairs
        if mode == "all" and sequence:
            raise SurveyError(f"{metric.label} on {stimset['name']} was computed with distances.pairs: landmarks; "
                              "keep that mode for it, or survey all pairs into a new warehouse")
        if mode == "landmarks" and not sequence and warehouse.dataset(self.table).head(
                1, filter=metric_filter(metric, stimset["stimset_id"])).num_rows:
            raise SurveyError(f"{metric.label} on {stimset['name']} was computed with distances.pairs: all; its "
                              "space needs no landmark rows: keep pairs: all for it")

    def run(self, unit: WorkUnit, warehouse: Warehouse, info: RunInfo) -> dict[str, int]:
        metric: DistanceMetric = unit.payload["metric"]
        conv_size = metric.pooling(self.options.conv_size)
        rows_meta, cols_meta = unit.payload["rows"], unit.payload["cols"]
        with torch_threads(info.threads):
            engine = metric.engine(self.options.device)
            rows = [load_prepared(engine, warehouse, rep, conv_size) for rep in rows_meta]
            if cols_meta is None:
                cols, cols_meta, pairs = rows, rows_meta, np.triu_indices(len(rows), k=1)
            else:
                cols = [load_prepared(engine, warehouse, rep, conv_size) for rep in cols_meta]
                pairs = all_pairs(len(rows), len(cols))
            values = engine.distances(rows, cols, pairs)
        out = []
        for i, j, value in zip(*pairs, values, strict=True):
            rep_a, rep_b = sorted((rows_meta[i]["rep_id"], cols_meta[j]["rep_id"]))
            out.append({
                "rep_a": rep_a, "rep_b": rep_b, "stimset_id": unit.payload["stimset_id"], **metric.columns(),
                "distance": float(value), **info.provenance(),
            })
        return {self.table: self.commit(warehouse, self.table, unit, out)}
