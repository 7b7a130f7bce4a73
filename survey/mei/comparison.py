"""EGG against GA, paired by target (Pierzchlewicz et al. 2023, §4, Table 1): activation on the model the MEI was made
for, on another seed of its architecture and on another architecture, and the compute per MEI; against GA on colour
images (`ga`) and on grey ones (`ga_grey`, what a grayscale prior can draw)."""

from __future__ import annotations

import numpy as np
from scipy.stats import wilcoxon

# mei_runs columns compared, as (label, column)
SCORES = (("train model", "activation"), ("same architecture, other seed", "family_activation"),
          ("other architecture", "cross_activation"), ("seconds per MEI", "seconds"))

# a run of each method's settings: a survey whose config changed (e.g. EGG's energy scale) keeps the MEIs of both
VARIANT = ("baseline_steps", "egg_steps", "energy_scale", "prior_id")
PAIRS_SQL = """
    SELECT g.steps AS baseline_steps, e.steps AS egg_steps, e.energy_scale, e.prior_id, {columns}
    FROM mei_runs g JOIN mei_runs e
      ON g.network_id = e.network_id AND g.layer = e.layer AND g.target = e.target AND g.stimset_id = e.stimset_id
     AND g.session_id IS NOT DISTINCT FROM e.session_id AND g.area IS NOT DISTINCT FROM e.area
    WHERE g.method = '{baseline}' AND e.method = 'egg' AND g.is_best AND e.is_best
    ORDER BY ALL"""


def paired_comparison(baseline: np.ndarray, other: np.ndarray) -> dict[str, float | int | None]:
    """Paired values of two methods over the same targets (NaN pairs dropped): their means, the median ratio
    other / baseline (over targets where the baseline is positive), the fraction of those with other ≥ 0.8 ×
    baseline, the fraction where other wins, and the two-sided Wilcoxon signed-rank p of the differences."""
    baseline, other = np.asarray(baseline, dtype=np.float64), np.asarray(other, dtype=np.float64)
    keep = np.isfinite(baseline) & np.isfinite(other)
    baseline, other = baseline[keep], other[keep]
    result: dict[str, float | int | None] = {"n": int(keep.sum()), "ga_mean": None, "egg_mean": None,
                                             "median_ratio": None, "at_least_80pct": None, "egg_wins": None,
                                             "wilcoxon_p": None}
    if not len(baseline):
        return result
    positive = baseline > 0
    ratio = other[positive] / baseline[positive]
    differences = other - baseline
    result.update(ga_mean=float(baseline.mean()), egg_mean=float(other.mean()),
                  egg_wins=float((differences > 0).mean()))
    if positive.any():
        result.update(median_ratio=float(np.median(ratio)), at_least_80pct=float((ratio >= 0.8).mean()))
    if len(baseline) >= 2 and np.any(differences != 0):
        result["wilcoxon_p"] = float(wilcoxon(other, baseline).pvalue)
    return result


def compare_methods(connection, baselines: tuple[str, ...] = ("ga", "ga_grey")) -> list[dict]:
    """One row per baseline method × settings (`VARIANT`: ascent steps, EGG's steps, energy scale and prior) × score
    of `SCORES`: the baseline (`ga_*` columns) against EGG over the targets both ran on (best seed each); baselines
    that did not run are left out. `connection`: DuckDB over the catalog."""
    columns = ", ".join(f"g.{column} AS ga_{column}, e.{column} AS egg_{column}" for _, column in SCORES)
    rows = []
    for baseline in baselines:
        pairs = connection.execute(PAIRS_SQL.format(columns=columns, baseline=baseline)).fetchnumpy()
        variants = list(zip(*(pairs[name].tolist() for name in VARIANT), strict=True))
        for variant in dict.fromkeys(variants):
            chosen = np.array([candidate == variant for candidate in variants])
            for label, column in SCORES:
                values = [np.ma.filled(np.ma.asarray(pairs[f"{method}_{column}"][chosen], dtype=np.float64), np.nan)
                          for method in ("ga", "egg")]
                rows.append({"baseline": baseline, **dict(zip(VARIANT, variant, strict=True)), "score": label,
                             **paired_comparison(*values)})
    return rows
