"""Which EGG energy scale suits this survey's image size? A sweep on held-out targets, so that a survey's configured
scale is chosen on targets other than the ones it reports (Pierzchlewicz et al. 2023 set theirs by hand, for
256 × 256 × 3 images; the guidance step is a normalised gradient, so its size per pixel depends on the resolution).

    python -m benchmarks.egg_energy_scale [--warehouse W] [--scales 1,2,3,5,10] [--sql QUERY]

Runs the `mei` stage (GA and EGG, the warehouse's trained prior) on a copy of a surveyed warehouse (`survey demo`)
without its MEIs, once per scale, for the targets of --sql: by default, of the networks that have a replica,
channels 4–7 of the best supervised network's last cell and channels 0–7 of the best contrastive network's, and IT
neurons 4–11 through their best encoding model (the demo reports the supervised network's channels 0–3 and IT
neurons 0–3). Prints JSON: for each scale, EGG against GA paired over targets (best seed each: median ratio, share
of targets at ≥ 80% of GA, and the median ratio on another architecture with its paired Wilcoxon p), and the scale
with the most targets at ≥ 80% (ties: the higher median ratio).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from survey.catalog import Warehouse, connect
from survey.cli.common import one_stage_config
from survey.config import EggConfig
from survey.mei.comparison import compare_methods
from survey.runtime.survey import run_survey

HELD_OUT_SQL = """
    WITH replicated AS (SELECT spec, objective FROM networks GROUP BY ALL HAVING count(*) > 1),
    best AS (
        SELECT name, objective, layers,
               row_number() OVER (PARTITION BY objective ORDER BY test_accuracy DESC, name) AS rank
        FROM networks JOIN replicated USING (spec, objective) WHERE objective IN ('supervised', 'contrastive')),
    best_it AS (
        SELECT n.name, p.layer, p.session_id, p.area FROM predictivity p JOIN networks n USING (network_id)
        JOIN replicated r ON r.spec = n.spec AND r.objective = n.objective
        WHERE p.area = 'IT' AND p.status = 'ok' ORDER BY p.median_corrected DESC, p.session_id LIMIT 1)
    SELECT name AS network, layers[len(layers) - 1] AS layer,
           unnest(CASE objective WHEN 'supervised' THEN range(4, 8) ELSE range(8) END) AS unit,
           NULL AS session, NULL AS area FROM best WHERE rank = 1
    UNION ALL
    SELECT name, layer, unnest(range(4, 12)), session_id, area FROM best_it"""


def summary(comparison: list[dict], scale: float) -> dict:
    """EGG against GA at one scale (rows of `compare_methods`), on the train model and on another architecture."""
    train, cross = (next(row for row in comparison if row["energy_scale"] == scale and row["score"] == score)
                    for score in ("train model", "other architecture"))
    return {"targets": train["n"], "median_ratio": train["median_ratio"], "at_least_80pct": train["at_least_80pct"],
            "cross_median_ratio": cross["median_ratio"], "cross_wilcoxon_p": cross["wilcoxon_p"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", default="catalogs/warehouse", help="a surveyed warehouse (left unchanged)")
    parser.add_argument("--scales", default="1,2,3,5,10")
    parser.add_argument("--sql", default=HELD_OUT_SQL, help="the held-out targets (network, layer, unit, ...)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--stimset", default="natural", help="the stimulus set giving the grey, norm and image size")
    args = parser.parse_args()
    scales = [float(scale) for scale in args.scales.split(",")]
    with tempfile.TemporaryDirectory(prefix="egg-scale-") as scratch:
        copy = Path(scratch) / "warehouse"
        source = Path(args.warehouse).absolute()
        shutil.copytree(source, copy, ignore=lambda folder, _: ["mei_runs"] if Path(folder) == source else [])
        for scale in scales:
            config = one_stage_config("mei", {
                "stimuli": args.stimset, "targets_sql": args.sql, "methods": ["ga", "egg"],
                "seeds": [int(seed) for seed in args.seeds.split(",")],
                "egg": {**EggConfig().model_dump(exclude={"prior"}), "energy_scale": scale}})
            run_survey(config, Warehouse(str(copy)))
        comparison = compare_methods(connect(Warehouse(str(copy))), baselines=("ga",))
    by_scale = {scale: summary(comparison, scale) for scale in scales}
    selected = max(scales, key=lambda scale: (by_scale[scale]["at_least_80pct"] or 0,
                                              by_scale[scale]["median_ratio"] or 0))
    print(json.dumps({"warehouse": args.warehouse, "seeds": args.seeds, "by_scale": by_scale,
                      "selected_scale": selected, "paper_scale": EggConfig().energy_scale}, indent=1))


if __name__ == "__main__":
    main()
