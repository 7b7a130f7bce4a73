"""Stages: each plans content-keyed units of work from the config and the catalogs, and runs one unit.

A unit writes its arrays first, then one commit per table carrying the unit's key, its stage's primary table last:
a unit is done exactly when that commit exists, so a re-run skips it and never duplicates a row. Each stage declares
the tables it reads and writes; the order stages run in follows from them.

Every unit key ends in its stage's `version` (`Stage.unit`). Bumping the version gives every unit a new key, so the
stage runs again, and each unit's commits replace, in the same transaction, the rows its keys of the older versions
wrote (`WorkUnit.supersedes`): the stage's tables keep one row per natural key, all of the newest version, and a
killed rebuild leaves each unit's old rows or its new ones, never both.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from survey.catalog import Warehouse
from survey.catalog.provenance import RunInfo
from survey.config import SurveyConfig
from survey.hashing import content_key


@dataclass(frozen=True)
class WorkUnit:
    """One content-keyed piece of work; `payload` is small (configs and URIs, never big arrays). `supersedes`: the
    keys the same work had at the stage's older versions, whose rows this unit's commits replace. `affinity`: units
    that share it read the same inputs (e.g. block i of the representations, whose prepared factors they load), so
    an executor with a pool of n workers runs them on worker `affinity mod n`, whose caches then hold them."""

    key: str
    label: str
    payload: dict[str, Any] = field(default_factory=dict)
    supersedes: tuple[str, ...] = ()
    affinity: int | None = None


class Stage(ABC):
    """A survey stage; subclasses set `name`, the primary `table` whose commits mark units done, the other tables
    they write and the tables they read."""

    name: ClassVar[str]
    table: ClassVar[str]
    writes_also: ClassVar[tuple[str, ...]] = ()
    reads: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[int] = 1  # bump when a stage's output changes for the same inputs: its units run again and
    # replace their rows of the older versions (see the module's docstring)
    iterative: bool = False  # True: plan again after the units run, until nothing is pending (rounds)

    def __init__(self, config: SurveyConfig) -> None:
        self.config = config

    def check(self) -> None:  # noqa: B027 - most stages have nothing to check before the run
        """Validate the config before any stage writes (no catalog access); raises SurveyError."""

    @abstractmethod
    def plan(self, warehouse: Warehouse, info: RunInfo) -> list[WorkUnit]:
        """All units this config asks for (done or not); validates inputs before anything is written."""

    @abstractmethod
    def run(self, unit: WorkUnit, warehouse: Warehouse, info: RunInfo) -> dict[str, int]:
        """Do one unit; returns rows written per table."""

    def finish(self, warehouse: Warehouse, info: RunInfo, error: BaseException | None) -> None:  # noqa: B027
        """Called once the stage's units have run (`error` None) or the stage stopped on `error`: close what
        planning opened (e.g. an MLflow parent run). Most stages open nothing."""

    def unit(self, prefix: str, parts: Sequence[Any], label: str, payload: dict[str, Any],
             affinity: int | None = None) -> WorkUnit:
        """The unit of work `parts` (everything its result depends on), keyed ``content_key(prefix, *parts,
        version)``."""
        return self.versioned_unit(lambda version: content_key(prefix, *parts, version), label, payload, affinity)

    def versioned_unit(self, key_at: Callable[[int], str], label: str, payload: dict[str, Any],
                       affinity: int | None = None) -> WorkUnit:
        """A unit whose key at stage version v is `key_at(v)` (for keys other tables look up, such as a stimulus
        set's id); it supersedes its keys at versions 1 … version − 1."""
        return WorkUnit(key_at(self.version), label, payload,
                        tuple(key_at(version) for version in range(1, self.version)), affinity)

    def commit(self, warehouse: Warehouse, table: str, unit: WorkUnit, rows: list[dict]) -> int:
        """Append `unit`'s `rows` to `table` in one atomic commit that also removes the rows of the keys it
        supersedes; returns the rows written (0 when the unit was committed already)."""
        return warehouse.append_unit(table, unit.key, rows, replacing=unit.supersedes)

    section: ClassVar[str | None] = None  # the SurveyConfig field holding this stage's options, if one does

    @property
    def options(self) -> Any:
        """This stage's section of the config (None when the survey leaves the stage unconfigured)."""
        return getattr(self.config, self.section) if self.section else None

    @property
    def configured(self) -> bool:
        """False when the survey leaves this stage's section out: the runner then skips the stage."""
        return self.section is None or self.options is not None

    def settings(self) -> dict[str, Any]:
        """The part of the config this stage reads (recorded in `runs`)."""
        return self.options.model_dump(mode="json") if self.options is not None else {}


def finite_or_none(value: float) -> float | None:
    """A float for the catalog: NaN and ±inf become NULL."""
    return float(value) if math.isfinite(value) else None


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with `n` torch intra-op threads (fixed so results are reproducible), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
