"""The seed papers' findings, checked on a survey's catalogs: each claim, the statistic that tests it, its value here,
and whether it holds (None, with the reason, when the catalog lacks the data).

Williams et al. 2021 (shape-metric embeddings predict accuracy and separate objectives); Kuoch et al. 2023 (manifold
capacity and geometry along depth, trained against untrained, along V1 → V4 → IT, and which networks recorded areas
resemble); Wang & Ponce 2022 (tuning-landscape topology along depth and areas). The statistics are plain functions
over NumPy arrays that know nothing of the catalog; `findings` runs the SQL and calls them. A finding reports what
the data says: no threshold or subset is chosen to make it hold.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import numpy as np
from scipy.spatial.distance import cdist
from scipy.stats import rankdata
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold

from survey.errors import NotApplicable

RIDGE_PENALTIES = tuple(float(p) for p in np.logspace(-3, 3, 13))
FOLDS = 5
PERMUTATIONS = 999
SEED = 0
TRAINED = ("supervised", "contrastive")  # the zoo's trained objectives (`untrained` nets get only a linear probe)


@dataclass(frozen=True)
class Finding:
    """One claim of a seed paper checked on the catalogs; `sql` is the query whose result `value` was computed from.
    `value` and `holds` are None, with the reason in `note`, when the catalog lacks the data."""

    paper: str
    claim: str
    statistic: str
    value: float | None
    holds: bool | None
    sql: str
    note: str = ""


# ---- statistics: NumPy in, numbers out ----------------------------------------------------------------------------

def cross_validated_r2(features: np.ndarray, target: np.ndarray, folds: int = FOLDS, seed: int = SEED) -> float:
    """R² of ridge predictions of `target` from `features` (n × d), pooled over the held-out folds of a shuffled
    K-fold split; each fold's penalty is chosen within its training part (RidgeCV, leave-one-out). Williams et al.
    2021 predict NAS-Bench-101 test accuracy from shape-metric embedding coordinates this way."""
    x, y = np.asarray(features, np.float64), np.asarray(target, np.float64)
    if len(y) < folds:
        raise NotApplicable(f"{folds}-fold cross-validation needs ≥ {folds} samples; got {len(y)}")
    if np.ptp(y) == 0:
        raise NotApplicable("the target is constant, so R² is undefined")
    predicted = np.empty_like(y)
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(x):
        predicted[test] = RidgeCV(alphas=RIDGE_PENALTIES).fit(x[train], y[train]).predict(x[test])
    return float(1.0 - np.sum((y - predicted) ** 2) / np.sum((y - y.mean()) ** 2))


def _nearest(features: np.ndarray) -> np.ndarray:
    """Index of each row's nearest other row (Euclidean)."""
    x = np.asarray(features, np.float64)
    if len(x) < 2:
        raise NotApplicable(f"a nearest neighbour needs ≥ 2 samples; got {len(x)}")
    distances = cdist(x, x)
    np.fill_diagonal(distances, np.inf)
    return distances.argmin(axis=1)


def nearest_neighbour_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy of `labels` from `features` (n × d): the share of rows whose nearest
    other row has the same label (Williams et al. 2021: embeddings separate networks by kind)."""
    labels = np.asarray(labels)
    return float(np.mean(labels[_nearest(features)] == labels))


def permutation_p_value(features: np.ndarray, labels: np.ndarray, permutations: int = PERMUTATIONS,
                        seed: int = SEED) -> float:
    """One-sided p-value of the 1-NN accuracy against shuffled labels: (1 + #{permuted ≥ observed}) / (1 + n)."""
    labels = np.asarray(labels)
    nearest = _nearest(features)
    observed = np.mean(labels[nearest] == labels)
    rng = np.random.default_rng(seed)
    as_good = sum(np.mean(shuffled[nearest] == shuffled) >= observed
                  for shuffled in (rng.permutation(labels) for _ in range(permutations)))
    return float((1 + as_good) / (1 + permutations))


def chance_rate(labels: np.ndarray) -> float:
    """The accuracy of always guessing the most common label (its share)."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / counts.sum())


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 2 points or a constant input."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])


def depth_trend(depth: np.ndarray, value: np.ndarray, groups: np.ndarray) -> tuple[float, int]:
    """Median over groups (networks, sessions) of Spearman's rho between depth and value, and how many groups it is
    over; a group with fewer than 2 depths or a constant value has no rho and is left out (Kuoch et al. 2023:
    capacity grows and radius and dimension shrink with depth)."""
    depth, value, groups = np.asarray(depth, np.float64), np.asarray(value, np.float64), np.asarray(groups)
    rhos = [spearman(depth[groups == group], value[groups == group]) for group in np.unique(groups)]
    finite = [rho for rho in rhos if math.isfinite(rho)]
    if not finite:
        raise NotApplicable(f"none of {len(rhos)} groups has ≥ 2 depths with a varying value")
    return float(np.median(finite)), len(finite)


def group_means(values: np.ndarray, *keys: np.ndarray) -> tuple[list[tuple], np.ndarray]:
    """The report's one grouped mean (its figures' and its findings'): the distinct tuples of `keys` (sorted) and the
    mean of `values` (n, or n × d rows) within each, over the rows whose values are all finite (NULL or NaN)."""
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    rows = list(zip(*(np.asarray(key)[finite].tolist() for key in keys), strict=True))
    groups = sorted(set(rows))
    position = {group: i for i, group in enumerate(groups)}
    inverse = np.array([position[row] for row in rows], dtype=np.int64)
    sums = np.zeros((len(groups), *values.shape[1:]))
    np.add.at(sums, inverse, values[finite])
    counts = np.bincount(inverse, minlength=len(groups)).reshape(-1, *[1] * (values.ndim - 1))
    return groups, sums / counts


def zscore(values: np.ndarray) -> np.ndarray:
    """Each column of `values` (n × q) standardised over the rows; a constant column becomes 0."""
    values = np.asarray(values, np.float64)
    scale = values.std(axis=0)
    return (values - values.mean(axis=0)) / np.where(scale > 0, scale, 1.0)


def closest_distance(candidates: np.ndarray, target: np.ndarray) -> float:
    """Euclidean distance from `target` (q) to the closest row of `candidates` (k × q): a network's best-matching
    layer for a recorded area's manifold-geometry profile (Kuoch et al. 2023)."""
    return float(np.min(np.linalg.norm(np.asarray(candidates, np.float64) - np.asarray(target, np.float64), axis=1)))


def signature_drift(signatures: np.ndarray) -> np.ndarray:
    """L1 distance of each row of `signatures` (layers or areas in depth order × [n_loop per level, n_line per
    level]) from the first row (Wang & Ponce 2022: tuning-landscape topology changes progressively with depth)."""
    signatures = np.asarray(signatures, np.float64)
    return np.abs(signatures - signatures[0]).sum(axis=1)


def increasing(values: np.ndarray) -> bool:
    """Whether `values` rise strictly from each entry to the next."""
    return bool(np.all(np.diff(np.asarray(values, np.float64)) > 0))


# ---- the catalog queries ------------------------------------------------------------------------------------------

# Every network's deepest representation embedded in one space: the first space by name, its newest version.
EMBEDDING_SQL = """
WITH space AS (SELECT space_id, name FROM spaces ORDER BY name, created DESC LIMIT 1),
embedded AS (
    SELECT r.source_id, r.layer_index, e.vector, space.name AS space
    FROM embeddings e JOIN space USING (space_id) JOIN representations r USING (rep_id)
    WHERE r.source_kind = 'network'),
deepest AS (SELECT source_id, max(layer_index) AS layer_index FROM embedded GROUP BY source_id)
SELECT n.network_id, n.objective, n.test_accuracy, e.space, e.vector
FROM embedded e JOIN deepest USING (source_id, layer_index) JOIN networks n ON n.network_id = e.source_id
ORDER BY n.network_id
"""

# Manifold geometry and alignment of every representation of one manifold set (the one most rows are of).
GEOMETRY_SQL = """
WITH chosen AS (
    SELECT manifold_set FROM capacity WHERE status = 'ok'
    GROUP BY manifold_set ORDER BY count(*) DESC, manifold_set LIMIT 1)
SELECT r.source_kind, r.source_id, n.objective, r.layer_or_area, r.depth,
       c.capacity, c.radius, c.dimension, a.center_alignment, a.axis_alignment, a.center_axis_alignment
FROM capacity c JOIN chosen USING (manifold_set) JOIN representations r USING (rep_id)
LEFT JOIN networks n ON r.source_kind = 'network' AND n.network_id = r.source_id
LEFT JOIN alignment a ON a.rep_id = c.rep_id AND a.manifold_set = c.manifold_set
WHERE c.status = 'ok' AND r.depth IS NOT NULL
ORDER BY r.source_kind, r.source_id, r.depth
"""
PROFILE = ("capacity", "radius", "dimension", "center_alignment", "axis_alignment", "center_axis_alignment")

# Mean level-set signature (n_loop, n_line per level) of each representation's non-constant units on one tuning grid.
SIGNATURE_SQL = """
WITH grid AS (
    SELECT grid_id FROM topology WHERE NOT constant GROUP BY grid_id ORDER BY count(*) DESC, grid_id LIMIT 1),
levels AS (
    SELECT rep_id, unnest(range(1, len(n_loop) + 1)) AS level, unnest(n_loop) AS n_loop, unnest(n_line) AS n_line
    FROM topology JOIN grid USING (grid_id) WHERE NOT constant),
per_level AS (SELECT rep_id, level, avg(n_loop) AS n_loop, avg(n_line) AS n_line FROM levels GROUP BY rep_id, level)
SELECT r.source_kind, r.source_id, n.objective, r.layer_or_area, r.depth,
       list(p.n_loop ORDER BY p.level) AS mean_loop, list(p.n_line ORDER BY p.level) AS mean_line
FROM per_level p JOIN representations r USING (rep_id)
LEFT JOIN networks n ON r.source_kind = 'network' AND n.network_id = r.source_id
WHERE r.depth IS NOT NULL
GROUP BY ALL ORDER BY r.source_kind, r.source_id, r.depth
"""

Rows = dict[str, np.ndarray]
Outcome = tuple[float, bool, str]  # value, holds, note


def query_columns(connection: duckdb.DuckDBPyConnection, sql: str) -> Rows:
    """`sql`'s result as one NumPy array per column, the report's one reader (its figures' and its findings'): NULL
    is NaN in a float column and None in any other."""
    columns = {}
    for name, values in connection.execute(sql).fetchnumpy().items():
        if np.ma.isMaskedArray(values):
            values = (np.ma.filled(values, np.nan) if values.dtype.kind == "f"
                      else np.where(np.ma.getmaskarray(values), None, np.ma.getdata(values).astype(object)))
        columns[name] = np.asarray(values)
    return columns


def _fetch(connection: duckdb.DuckDBPyConnection, sql: str, tables: tuple[str, ...]) -> Rows:
    """`query_columns`; NotApplicable naming the empty table when there are no rows."""
    rows = query_columns(connection, sql)
    if not len(next(iter(rows.values()), ())):
        empty = [t for t in tables if connection.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 0]
        raise NotApplicable(f"table {empty[0]} is empty" if len(empty) == 1
                            else f"tables {', '.join(empty)} are empty" if empty
                            else f"no rows of {', '.join(tables)} fit the query")
    return rows


def _float(rows: Rows, column: str) -> np.ndarray:
    return np.asarray(rows[column], np.float64)  # NULL → NaN


def _of_objective(rows: Rows, objectives: tuple[str, ...], what: str) -> np.ndarray:
    """Mask of the rows of networks of `objectives`; NotApplicable when there are none."""
    mask = (rows["source_kind"] == "network") & np.isin(rows["objective"], objectives)
    if not mask.any():
        raise NotApplicable(f"no {'/'.join(objectives)} network in {what}")
    return mask


def _areas(rows: Rows, values: np.ndarray, what: str) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """Recorded areas in depth order, each area's depth, the mean of `values` over its sessions, and the number of
    sessions; NotApplicable with fewer than two areas."""
    sessions = rows["source_kind"] == "session"
    if len(np.unique(rows["layer_or_area"][sessions])) < 2:
        raise NotApplicable(f"{what} holds {'no' if not sessions.any() else 'one'} recorded area; the order needs ≥ 2")
    areas = rows["layer_or_area"][sessions]
    names, means = group_means(values[sessions], areas)
    depth_of = dict(zip(*group_means(_float(rows, "depth")[sessions], areas), strict=True))
    depths = np.array([depth_of[name] for name in names])
    order = np.argsort(depths, kind="stable")
    return [str(names[i][0]) for i in order], depths[order], means[order], len(np.unique(rows["source_id"][sessions]))


# ---- Williams et al. 2021 -----------------------------------------------------------------------------------------

def _accuracy_from_embedding(rows: Rows) -> Outcome:
    accuracy = np.asarray(rows["test_accuracy"], np.float64)
    trained = np.isin(rows["objective"], TRAINED) & np.isfinite(accuracy)
    space = str(rows["space"][0])
    if trained.sum() < FOLDS:
        raise NotApplicable(f"{trained.sum()} trained ({'/'.join(TRAINED)}) networks with a test accuracy in space "
                            f"{space!r}; {FOLDS}-fold cross-validation needs ≥ {FOLDS}")
    r2 = cross_validated_r2(np.stack(rows["vector"][trained]), accuracy[trained])
    return r2, r2 > 0, f"{trained.sum()} {'/'.join(TRAINED)} networks, space {space!r}"


def _objectives_from_embedding(rows: Rows) -> Outcome:
    labels, space = rows["objective"], str(rows["space"][0])
    kinds, counts = np.unique(labels, return_counts=True)
    if len(kinds) < 2:
        raise NotApplicable(f"every network in space {space!r} has objective {kinds[0]!r}; separation needs ≥ 2")
    vectors = np.stack(rows["vector"])
    accuracy, chance = nearest_neighbour_accuracy(vectors, labels), chance_rate(labels)
    p = permutation_p_value(vectors, labels)
    counts_note = ", ".join(f"{kind} {count}" for kind, count in zip(kinds, counts, strict=True))
    return accuracy, accuracy > chance and p < 0.05, (
        f"chance (majority share) {chance:.3f}, label-permutation p = {p:.3f} ({PERMUTATIONS} permutations); "
        f"{counts_note}; space {space!r}")


# ---- Kuoch et al. 2023 --------------------------------------------------------------------------------------------

def _trend_with_depth(quantity: str, sign: int) -> Callable[[Rows], Outcome]:
    def compute(rows: Rows) -> Outcome:
        trained = _of_objective(rows, TRAINED, "`capacity`")
        rho, n = depth_trend(_float(rows, "depth")[trained], _float(rows, quantity)[trained],
                             rows["source_id"][trained])
        return rho, sign * rho > 0, f"median over {n} {'/'.join(TRAINED)} networks"
    return compute


def _trained_against_untrained(rows: Rows) -> Outcome:
    trends = {}
    for name, objectives in (("trained", TRAINED), ("untrained", ("untrained",))):
        mask = _of_objective(rows, objectives, "`capacity`")
        trends[name] = depth_trend(_float(rows, "depth")[mask], _float(rows, "capacity")[mask],
                                   rows["source_id"][mask])
    (trained, n_trained), (untrained, n_untrained) = trends["trained"], trends["untrained"]
    return trained - untrained, trained > untrained, (
        f"median rho: trained {trained:.3f} over {n_trained} networks, untrained {untrained:.3f} over {n_untrained}")


def _capacity_along_areas(rows: Rows) -> Outcome:
    names, depths, means, n_sessions = _areas(rows, _float(rows, "capacity"), "`capacity`")
    listing = ", ".join(f"{name} {mean:.4f}" for name, mean in zip(names, means, strict=True))
    return spearman(depths, means), increasing(means), f"mean capacity over {n_sessions} sessions: {listing}"


def _areas_resemble_contrastive(rows: Rows) -> Outcome:
    profiles = np.stack([_float(rows, quantity) for quantity in PROFILE], axis=1)
    complete = np.isfinite(profiles).all(axis=1)
    rows = {column: values[complete] for column, values in rows.items()}
    z = zscore(profiles[complete])
    names, _, area_profiles, n_sessions = _areas(rows, z, "`capacity` ⋈ `alignment` (complete profiles)")
    means = {}
    for objective in ("contrastive", "supervised"):
        mask = _of_objective(rows, (objective,), "`capacity` ⋈ `alignment` (complete profiles)")
        networks = np.unique(rows["source_id"][mask])
        distances = [np.mean([closest_distance(z[mask & (rows["source_id"] == network)], area)
                              for area in area_profiles]) for network in networks]
        means[objective] = (float(np.mean(distances)), len(networks))
    (contrastive, n_contrastive), (supervised, n_supervised) = means["contrastive"], means["supervised"]
    return contrastive - supervised, contrastive < supervised, (
        f"contrastive {contrastive:.3f} over {n_contrastive} networks, supervised {supervised:.3f} over "
        f"{n_supervised}; areas {', '.join(names)} averaged over {n_sessions} sessions; {len(z)} representations")


# ---- Wang & Ponce 2022 --------------------------------------------------------------------------------------------

def _signatures(rows: Rows) -> np.ndarray:
    return np.concatenate([np.stack(rows["mean_loop"]), np.stack(rows["mean_line"])], axis=1).astype(np.float64)


def _topology_with_depth(rows: Rows) -> Outcome:
    trained = _of_objective(rows, TRAINED, "`topology`")
    signatures, depth, networks = _signatures(rows)[trained], _float(rows, "depth")[trained], rows["source_id"][trained]
    kept_depth, kept_drift, kept_network = [], [], []
    for network in np.unique(networks):
        mine = np.flatnonzero(networks == network)
        mine = mine[np.argsort(depth[mine], kind="stable")]
        drift = signature_drift(signatures[mine])
        kept_depth += list(depth[mine][1:])  # the first layer is the reference, at distance 0 by construction
        kept_drift += list(drift[1:])
        kept_network += [network] * (len(mine) - 1)
    if not kept_depth:
        raise NotApplicable("no trained network has topology rows for ≥ 2 layers")
    rho, n = depth_trend(np.array(kept_depth), np.array(kept_drift), np.array(kept_network))
    return rho, rho > 0, f"median over {n} {'/'.join(TRAINED)} networks"


def _topology_along_areas(rows: Rows) -> Outcome:
    names, depths, signatures, n_sessions = _areas(rows, _signatures(rows), "`topology`")
    if len(names) < 3:
        raise NotApplicable(f"`topology` holds areas {', '.join(names)}; growth beyond the first needs ≥ 3 areas")
    drift = signature_drift(signatures)
    listing = ", ".join(f"{name} {d:.3f}" for name, d in zip(names[1:], drift[1:], strict=True))
    return spearman(depths[1:], drift[1:]), increasing(drift[1:]), (
        f"pooled: each area's mean signature averaged over {n_sessions} sessions; L1 distance from {names[0]}: "
        f"{listing}")


# ---- the checks ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Check:
    paper: str
    claim: str
    statistic: str
    sql: str
    tables: tuple[str, ...]
    compute: Callable[[Rows], Outcome]


WILLIAMS, KUOCH, WANG_PONCE = "Williams et al. 2021", "Kuoch et al. 2023", "Wang & Ponce 2022"
_EMBEDDING_TABLES = ("spaces", "embeddings", "representations", "networks")
_GEOMETRY_TABLES = ("capacity", "representations")
_SIGNATURE_TABLES = ("topology", "representations")
_RHO = "median over trained networks of Spearman rho(depth, {})"
CHECKS = (
    _Check(WILLIAMS, "shape-metric embedding coordinates predict a network's test accuracy",
           f"cross-validated R² of test accuracy from the deepest layer's embedding (ridge, {FOLDS} folds), > 0",
           EMBEDDING_SQL, _EMBEDDING_TABLES, _accuracy_from_embedding),
    _Check(WILLIAMS, "embedding coordinates separate networks by training objective",
           "leave-one-out 1-NN accuracy of the objective, above chance with permutation p < 0.05",
           EMBEDDING_SQL, _EMBEDDING_TABLES, _objectives_from_embedding),
    _Check(KUOCH, "in trained networks manifold capacity grows with depth", _RHO.format("capacity") + ", > 0",
           GEOMETRY_SQL, _GEOMETRY_TABLES, _trend_with_depth("capacity", +1)),
    _Check(KUOCH, "in trained networks manifold radius shrinks with depth", _RHO.format("radius") + ", < 0",
           GEOMETRY_SQL, _GEOMETRY_TABLES, _trend_with_depth("radius", -1)),
    _Check(KUOCH, "in trained networks manifold dimension shrinks with depth", _RHO.format("dimension") + ", < 0",
           GEOMETRY_SQL, _GEOMETRY_TABLES, _trend_with_depth("dimension", -1)),
    _Check(KUOCH, "capacity grows with depth less, or not, in untrained networks",
           "median rho(depth, capacity): trained − untrained, > 0",
           GEOMETRY_SQL, _GEOMETRY_TABLES, _trained_against_untrained),
    _Check(KUOCH, "recorded areas order V1 < V4 < IT in manifold capacity",
           "Spearman rho(area depth, mean capacity over sessions); holds if capacity rises strictly area to area",
           GEOMETRY_SQL, _GEOMETRY_TABLES, _capacity_along_areas),
    _Check(KUOCH, "recorded visual cortex resembles contrastive (self-supervised) networks more than supervised ones "
                  "in manifold geometry and alignment",
           "mean closest-layer distance to the areas' z-scored profiles (capacity, radius, dimension, center, axis, "
           "center-axis alignment): contrastive − supervised, < 0",
           GEOMETRY_SQL, (*_GEOMETRY_TABLES, "alignment"), _areas_resemble_contrastive),
    _Check(WANG_PONCE, "tuning-landscape topology changes progressively with depth",
           "median over trained networks of Spearman rho(depth, L1 distance of the layer's mean level-set signature "
           "from the first layer's), layers after the first, > 0",
           SIGNATURE_SQL, _SIGNATURE_TABLES, _topology_with_depth),
    _Check(WANG_PONCE, "tuning-landscape topology changes progressively along V1 → V4 → IT",
           "Spearman rho(area depth, L1 distance of the area's mean signature from V1's), areas after V1; holds if "
           "the distance rises strictly area to area",
           SIGNATURE_SQL, _SIGNATURE_TABLES, _topology_along_areas),
)


def findings(connection: duckdb.DuckDBPyConnection) -> list[Finding]:
    """Every check of `CHECKS` on the catalogs behind `connection` (survey.catalog.connect). A check whose data the
    catalog lacks, or whose statistic is undefined on it, gets value and holds None and the reason as its note."""
    fetch = functools.cache(lambda sql, tables: _fetch(connection, sql, tables))
    results = []
    for check in CHECKS:
        try:
            value, holds, note = check.compute(fetch(check.sql, check.tables))
            if not math.isfinite(value):
                raise NotApplicable(f"the statistic is undefined here ({note})")
        except NotApplicable as reason:
            results.append(Finding(check.paper, check.claim, check.statistic, None, None, check.sql, str(reason)))
        else:
            results.append(Finding(check.paper, check.claim, check.statistic, float(value), bool(holds), check.sql,
                                   note))
    return results
