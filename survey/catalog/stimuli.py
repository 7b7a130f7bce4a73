"""Stimulus sets in the catalog: their content keys, their rows by config name or by set name, and their stored
images and labels (cached per process)."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from survey.catalog.warehouse import Warehouse
from survey.errors import SurveyError
from survey.hashing import content_key, file_hash

if TYPE_CHECKING:
    from survey.config import SurveyConfig
    from survey.stimuli import StimulusSpec

STIMULI_VERSION = 1  # the stimuli stage's version: in every set's key


def stimset_id(spec: StimulusSpec, version: int = STIMULI_VERSION) -> str:
    """Content key of a stimulus set made by the stimuli stage's `version`: its spec (and, for a user's array file,
    the file's bytes)."""
    parts: list[Any] = [spec.model_dump(mode="json"), version]
    if spec.kind == "array":
        try:
            parts.append(file_hash(spec.path))
        except OSError as err:
            raise SurveyError(
                f"stimulus set {spec.name!r}: cannot read {spec.path} ({err.strerror}); fix `path`"
            ) from None
    return content_key("stim", *parts)


def stimset_rows(config: SurveyConfig, warehouse: Warehouse, names: tuple[str, ...]) -> dict[str, dict]:
    """Catalog rows of the named stimulus sets of `config`; they must have been generated already."""
    ids = {spec.name: stimset_id(spec) for spec in config.stimuli if spec.name in names}
    rows = {row["stimset_id"]: row for row in warehouse.rows("stimulus_sets")}
    missing = [name for name in names if ids[name] not in rows]
    if missing:
        raise SurveyError(
            f"stimulus sets {missing} are not in warehouse {warehouse.uri}; run the `stimuli` stage first "
            "(survey run CONFIG --stages stimuli)"
        )
    return {name: rows[ids[name]] for name in names}


def catalog_stimulus_sets(
    warehouse: Warehouse, names: tuple[str, ...] | None, option: str, kind: str | None = None,
) -> dict[str, dict]:
    """Catalog rows, by stimset_id, of the stimulus sets `names` (None: every set) of `kind` (None: any kind).

    `option` names the config field the names came from, for the error when one is not in the catalog.
    """
    rows = warehouse.rows("stimulus_sets")
    chosen = {row["stimset_id"]: row for row in rows
              if (names is None or row["name"] in names) and (kind is None or row["kind"] == kind)}
    missing = sorted(set(names or ()) - {row["name"] for row in chosen.values()})
    if missing:
        available = sorted(row["name"] for row in rows if kind is None or row["kind"] == kind)
        raise SurveyError(f"{option} {missing} are not {kind or 'stimulus'} sets in warehouse {warehouse.uri} "
                          f"(it has {available}); fix {option} or run the stimuli stage first")
    return chosen


@lru_cache(maxsize=4)
def load_images(warehouse: Warehouse, uri: str) -> np.ndarray:
    """The N × 3 × H × W float32 images of a stored stimulus set (cached per process)."""
    return warehouse.load_npz(uri)["images"]


@lru_cache(maxsize=4)
def load_labels(warehouse: Warehouse, uri: str) -> np.ndarray:
    """The N int64 labels of a stored stimulus set (object id, source image, grid index), cached per process."""
    return warehouse.load_npz(uri)["labels"]
