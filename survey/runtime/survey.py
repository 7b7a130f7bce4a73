"""Run a survey: every configured stage in order, each skipping the units already in the catalogs."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tqdm.auto import tqdm

from survey.catalog import Warehouse
from survey.config import STAGE_NAMES, SurveyConfig
from survey.hashing import canonical_json
from survey.runtime.compactor import Compactor
from survey.runtime.executors import Executor, make_executor
from survey.stages import RunInfo, Stage
from survey.stages.activations import ActivationsStage
from survey.stages.capacity import CapacityStage
from survey.stages.distances import DistancesStage
from survey.stages.mei import MeiStage
from survey.stages.networks import NetworksStage
from survey.stages.predictivity import PredictivityStage
from survey.stages.prior import PriorStage
from survey.stages.sessions import SessionsStage
from survey.stages.spaces import SpacesStage
from survey.stages.stimuli import StimuliStage
from survey.stages.topology import TopologyStage


def stage_order(stages: list[type[Stage]]) -> tuple[str, ...]:
    """Stage names in an order where every stage runs after all the stages that write a table it reads (ties keep
    the listed order); a cycle is a programming error."""
    writers: dict[str, set[str]] = {}
    for stage in stages:
        for table in (stage.table, *stage.writes_also):
            writers.setdefault(table, set()).add(stage.name)
    needs = {stage.name: {writer for table in stage.reads for writer in writers.get(table, ())} - {stage.name}
             for stage in stages}
    order: list[str] = []
    while len(order) < len(stages):
        ready = [stage.name for stage in stages if stage.name not in order and needs[stage.name] <= set(order)]
        if not ready:
            raise RuntimeError(f"stages read each other's tables in a cycle: {sorted(set(needs) - set(order))}")
        order.append(ready[0])
    return tuple(order)


_CLASSES = [StimuliStage, NetworksStage, SessionsStage, ActivationsStage, DistancesStage, CapacityStage, TopologyStage,
            PredictivityStage, SpacesStage, PriorStage, MeiStage]
STAGES: dict[str, type[Stage]] = {stage.name: stage for stage in _CLASSES}
STAGE_ORDER = stage_order(_CLASSES)
assert set(STAGES) == set(STAGE_NAMES)


@dataclass
class StageReport:
    stage: str
    units_total: int
    units_run: int
    seconds: float
    rows: dict[str, int] = field(default_factory=dict)


def execute(config: SurveyConfig, warehouse: str, stages: tuple[str, ...] | None = None,
            executor: str | None = None) -> None:
    """The runner's entry point for the CLI and Ray jobs: run `config` (on `executor`, local or ray, when given, else
    the config's) into the warehouse at `warehouse`, and print what each stage did."""
    from rich.table import Table

    from survey.display import console

    start = time.perf_counter()
    if executor is not None:
        config = config.model_copy(update={"executor": config.executor.model_copy(update={"kind": str(executor)})})
    store = Warehouse(warehouse)
    reports = run_survey(config, store, stages=stages)
    table = Table("stage", "units", "run now", "rows written", "seconds", title=f"survey {config.name!r}")
    for report in reports:
        rows = ", ".join(f"{name} {count}" for name, count in sorted(report.rows.items())) or "-"
        table.add_row(report.stage, str(report.units_total), str(report.units_run), rows, f"{report.seconds:.1f}")
    console.print(table)
    console.print(f"finished in {time.perf_counter() - start:.1f} s; warehouse: {store.uri}")


def run_survey(
    config: SurveyConfig,
    warehouse: Warehouse,
    *,
    stages: tuple[str, ...] | None = None,
    progress: bool = True,
) -> list[StageReport]:
    """Run the config's stages (or the subset `stages`) in order; returns what each stage did. Stages whose
    config section is left out are skipped.

    A stage plans all its units, skips those already committed to the catalog, and runs the rest on the configured
    executor. Stages that ran anything append a row to `runs`, and compact the tables they wrote once those hold
    many small files.
    """
    selected = [stage for name in STAGE_ORDER if name in config.stages and (stages is None or name in stages)
                if (stage := STAGES[name](config)).configured]
    for stage in selected:
        stage.check()
    executor = make_executor(config.executor)
    executor.check()
    warehouse.ensure_writable()
    info = RunInfo(run_id=uuid.uuid4().hex[:16], threads=config.executor.threads_per_worker)
    reports = []
    compactor = Compactor(config.catalog)
    try:
        for stage in selected:
            reports.append(_run_stage(stage, warehouse, executor, info, progress, compactor))
    finally:
        executor.close()
        compactor.close()
    return reports


def _run_stage(stage: Stage, warehouse: Warehouse, executor: Executor, info: RunInfo, progress: bool,
               compactor: Compactor) -> StageReport:
    """Plan, skip what is committed, run the rest, compact what was written (every `compact_after` units, as
    workers keep committing, and at the end); an iterative stage plans again after each round."""
    started, clock = datetime.now(UTC), time.perf_counter()
    rows: Counter[str] = Counter()
    planned: set[str] = set()
    run = 0
    with _finishing(stage, warehouse, info):
        units = stage.plan(warehouse, info)  # a bad input fails here, before the stage shows a bar
        with tqdm(desc=stage.name, unit="unit", disable=not progress) as bar:
            while True:
                planned.update(unit.key for unit in units)
                done = warehouse.done_keys(stage.table)
                pending = [unit for unit in units if unit.key not in done]
                if not pending:
                    break
                bar.total = (bar.total or 0) + len(pending)
                for count, result in enumerate(executor.map(stage, pending, warehouse, info), start=1):
                    rows.update(result)
                    bar.update()
                    if count % compactor.settings.compact_after == 0:  # a commit's cost grows with live files
                        compactor.compact_written(warehouse, rows)
                run += len(pending)
                if not stage.iterative:
                    break
                compactor.compact_written(warehouse, rows)
                units = stage.plan(warehouse, info)
    if run:
        record = {
            "stage": stage.name, "config": canonical_json(stage.settings()), "started": started,
            "finished": datetime.now(UTC), "status": "ok", "executor": executor.name,
            "units_total": len(planned), "units_run": run, "units_skipped": len(planned) - run,
            "rows": canonical_json(dict(rows)), **info.provenance(),
        }
        rows["runs"] += warehouse.append_unit("runs", f"{info.run_id}-{stage.name}", [record])
        compactor.compact_written(warehouse, rows)
    return StageReport(stage.name, len(planned), run, time.perf_counter() - clock, dict(rows))


@contextlib.contextmanager
def _finishing(stage: Stage, warehouse: Warehouse, info: RunInfo) -> Iterator[None]:
    """Let `stage` close what its planning opened, whether its units all ran or one stopped it."""
    try:
        yield
    except BaseException as error:
        with contextlib.suppress(Exception):  # the stage's own error is the one to report
            stage.finish(warehouse, info, error)
        raise
    stage.finish(warehouse, info, None)
