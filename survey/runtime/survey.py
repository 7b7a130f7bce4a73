"""Run a survey: every configured stage in order, each skipping the units already in the catalogs."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tqdm.auto import tqdm

from survey.catalog import Warehouse
from survey.config import STAGE_ORDER, SurveyConfig
from survey.hashing import canonical_json
from survey.runtime.executors import Executor, make_executor
from survey.stages import RunInfo, Stage
from survey.stages.activations import ActivationsStage
from survey.stages.capacity import CapacityStage
from survey.stages.distances import DistancesStage
from survey.stages.networks import NetworksStage
from survey.stages.sessions import SessionsStage
from survey.stages.stimuli import StimuliStage
from survey.stages.topology import TopologyStage

STAGES: dict[str, type[Stage]] = {
    stage.name: stage for stage in (StimuliStage, NetworksStage, SessionsStage, ActivationsStage, DistancesStage,
                                         CapacityStage, TopologyStage)
}
assert tuple(STAGES) == STAGE_ORDER


@dataclass
class StageReport:
    stage: str
    units_total: int
    units_run: int
    seconds: float
    rows: dict[str, int] = field(default_factory=dict)


def run_survey(
    config: SurveyConfig,
    warehouse: Warehouse,
    *,
    stages: tuple[str, ...] | None = None,
    progress: bool = True,
) -> list[StageReport]:
    """Run the config's stages (or the subset `stages`) in order; returns what each stage did. Stages whose
    config section is left out are skipped.

    A stage plans all its units, skips those whose part is already in the catalog, and runs the rest on
    the configured executor. Stages that ran anything append a row to `runs`.
    """
    selected = [stage for name in STAGE_ORDER if name in config.stages and (stages is None or name in stages)
                if (stage := STAGES[name](config)).configured]
    for stage in selected:
        stage.check()
    warehouse.ensure_writable()
    info = RunInfo(run_id=uuid.uuid4().hex[:16], threads=config.executor.threads_per_worker)
    executor = make_executor(config.executor)
    reports = []
    try:
        for stage in selected:
            reports.append(_run_stage(stage, warehouse, executor, info, progress))
    finally:
        executor.close()
    return reports


def _run_stage(stage: Stage, warehouse: Warehouse, executor: Executor, info: RunInfo, progress: bool) -> StageReport:
    started, clock = datetime.now(UTC), time.perf_counter()
    units = stage.plan(warehouse)
    done = warehouse.done_keys(stage.table)
    pending = [unit for unit in units if unit.key not in done]
    rows: Counter[str] = Counter()
    if pending:
        results = executor.map(stage, pending, warehouse, info)
        for result in tqdm(results, total=len(pending), desc=stage.name, unit="unit", disable=not progress):
            rows.update(result)
        run = {
            "stage": stage.name, "config": canonical_json(stage.settings()), "started": started,
            "finished": datetime.now(UTC), "status": "ok", "executor": executor.name,
            "units_total": len(units), "units_run": len(pending), "units_skipped": len(units) - len(pending),
            "rows": canonical_json(dict(rows)), **info.provenance(),
        }
        warehouse.append_unit("runs", f"{info.run_id}-{stage.name}", [run])
    return StageReport(stage.name, len(units), len(pending), time.perf_counter() - clock, dict(rows))
