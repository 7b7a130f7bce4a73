"""Stages: each plans content-keyed units of work from the config and the catalogs, and runs one unit.

A unit writes its arrays first, then one commit per table carrying the unit's key, its stage's primary table last:
a unit is done exactly when that commit exists, so a re-run skips it and never duplicates a row. Each stage declares
the tables it reads and writes; the order stages run in follows from them.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from survey.catalog import Warehouse
from survey.catalog.provenance import RunInfo
from survey.config import SurveyConfig


@dataclass(frozen=True)
class WorkUnit:
    """One content-keyed piece of work; `payload` is small (configs and URIs, never big arrays)."""

    key: str
    label: str
    payload: dict[str, Any] = field(default_factory=dict)


class Stage(ABC):
    """A survey stage; subclasses set `name`, the primary `table` whose commits mark units done, the other tables
    they write and the tables they read."""

    name: ClassVar[str]
    table: ClassVar[str]
    writes_also: ClassVar[tuple[str, ...]] = ()
    reads: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[int] = 1  # bump when a stage's output changes for the same inputs (new keys: rebuild its tables)
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
