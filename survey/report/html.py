"""`survey report`: a static HTML report built only from the catalogs (DESIGN §7): one `index.html` and a PNG per
figure, opened from disk with no server and no network. Every figure is drawn from one read-only query, shown under
it; sections whose tables are still empty say which stage fills them."""

from __future__ import annotations

import html
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from survey.catalog import Warehouse, connect
from survey.report import figures
from survey.report.findings import Finding, findings, query_columns

NETWORK_OBJECTIVE = """LEFT JOIN networks n ON r.source_kind = 'network' AND n.network_id = r.source_id"""
NEWEST_SPACE = "(SELECT space_id, name, metric, alpha, stimset_id FROM spaces ORDER BY created DESC, name LIMIT 1)"
MAX_HEATMAP_REPS = 160  # the heatmap shows at most this many representations (a fixed hash-ordered sample)


@dataclass(frozen=True)
class Section:
    """One figure: its title, the stage that fills its tables, the query and how to draw its result."""

    name: str
    title: str
    stage: str
    sql: str
    draw: Callable[..., Figure]
    caption: str
    loads_arrays: bool = False  # draw(data, load) with load(uri) → the warehouse array (MEI images)


SECTIONS = (
    Section("map", "Networks and brain areas in one shape-metric space", "spaces", f"""
        SELECT s.name AS space, r.source_kind, r.source_name, r.layer_or_area, r.depth,
               coalesce(n.objective, 'recorded') AS objective, e.vector
        FROM embeddings e JOIN {NEWEST_SPACE} s USING (space_id) JOIN representations r USING (rep_id)
        {NETWORK_OBJECTIVE}
        ORDER BY r.source_kind, r.source_name, r.layer_index""", figures.embedding_map,
            "Each point is a network layer (left: coloured by training objective; right: by relative depth) or a "
            "recorded area (stars), placed by the landmark-MDS embedding of generalized shape distances "
            "(Williams et al. 2021); axes are the embedding's two leading principal coordinates."),
    Section("heatmap", "Shape distances between representations", "distances", f"""
        WITH metric AS (SELECT * FROM (SELECT DISTINCT metric, alpha, score_method FROM shape_distances)
                        ORDER BY metric <> 'linear', alpha DESC, metric, score_method LIMIT 1),
        labelled AS (
            SELECT r.rep_id, r.source_name || ' · ' || r.layer_or_area AS label,
                   CASE WHEN r.source_kind = 'session' THEN 'areas' ELSE n.objective END AS grp,
                   r.source_kind = 'session' AS recorded, r.source_name, r.layer_index
            FROM representations r {NETWORK_OBJECTIVE}
            WHERE r.rep_id IN (SELECT rep_a FROM shape_distances UNION SELECT rep_b FROM shape_distances)),
        chosen AS (SELECT * FROM labelled ORDER BY recorded DESC, hash(rep_id) LIMIT {MAX_HEATMAP_REPS})
        SELECT d.rep_a, d.rep_b, d.distance, d.metric, d.alpha, d.score_method,
               a.label AS label_a, [a.grp, a.source_name, lpad(a.layer_index::VARCHAR, 4, '0')] AS order_a,
               b.label AS label_b, [b.grp, b.source_name, lpad(b.layer_index::VARCHAR, 4, '0')] AS order_b
        FROM shape_distances d JOIN metric USING (metric, alpha, score_method)
        JOIN chosen a ON a.rep_id = d.rep_a JOIN chosen b ON b.rep_id = d.rep_b""", figures.distance_heatmap,
            "Pairwise generalized shape distances for one metric, representations grouped by objective and recorded "
            f"areas, each source's layers in order (at most {MAX_HEATMAP_REPS} representations: the recorded areas, "
            "then a fixed sample of layers)."),
    Section("areas", "Distance from each recorded area to network layers by depth", "distances", f"""
        WITH both_ways AS (
            SELECT rep_a AS one, rep_b AS other, metric, alpha, score_method, distance FROM shape_distances
            UNION ALL
            SELECT rep_b, rep_a, metric, alpha, score_method, distance FROM shape_distances)
        SELECT s.layer_or_area AS area, r.depth, n.objective,
               d.metric || ' α=' || d.alpha || ' (' || d.score_method || ')' AS metric, avg(d.distance) AS distance
        FROM both_ways d
        JOIN representations s ON s.rep_id = d.one AND s.source_kind = 'session'
        JOIN representations r ON r.rep_id = d.other AND r.source_kind = 'network'
        {NETWORK_OBJECTIVE}
        GROUP BY ALL ORDER BY ALL""", figures.distance_to_areas,
            "Mean shape distance between each recorded area and the layers of each objective's networks, by the "
            "layer's relative depth; one row per metric."),
    Section("geometry", "Manifold capacity, radius, dimension and center correlation by depth and area", "capacity",
            f"""
        SELECT m.name AS manifold_set, r.source_kind, r.layer_or_area, r.depth,
               coalesce(n.objective, 'recorded') AS objective, c.capacity, c.radius, c.dimension, c.center_correlation
        FROM capacity c JOIN stimulus_sets m ON m.stimset_id = c.manifold_set JOIN representations r USING (rep_id)
        {NETWORK_OBJECTIVE}
        WHERE c.status = 'ok' ORDER BY ALL""", figures.geometry_by_depth,
            "Mean-field manifold capacity α, radius R and dimension D_M (Chung et al. 2018) and the center "
            "correlation ρ₀ (Cohen et al. 2020) of the object manifolds, per objective and depth bin; recorded areas "
            "as stars at their depth (V1 0, V4 0.5, IT 1)."),
    Section("topology", "Topology signatures by depth and area", "topology", f"""
        SELECT coalesce(n.objective, 'recorded') AS "group", r.layer_or_area, r.depth, u.level,
               avg(u.loop) AS n_loop, avg(u.line) AS n_line
        FROM (SELECT rep_id, unnest(range(n_levels)) AS level, unnest(n_loop) AS loop, unnest(n_line) AS line
              FROM topology WHERE NOT constant) u
        JOIN representations r USING (rep_id) {NETWORK_OBJECTIVE}
        GROUP BY ALL ORDER BY ALL""", figures.signatures,
            "Mean number of closed (top) and open (bottom) iso-contours of the tuning landscapes per level "
            "(Wang & Ponce 2022), by depth bin for each objective and by recorded area."),
    Section("predictivity", "Neural predictivity by layer and area", "predictivity", """
        SELECT p.area, p.depth, n.objective, p.median_corrected
        FROM predictivity p JOIN networks n USING (network_id)
        WHERE p.status = 'ok' ORDER BY ALL""", figures.predictivity_by_depth,
            "Median noise-corrected correlation of ridge encoding models from each layer to each recorded area, by "
            "layer depth and objective."),
    Section("meis", "Most exciting inputs: gradient ascent beside energy-guided diffusion", "mei", """
        SELECT n.name AS network, m.layer, coalesce(m.area, 'unit') AS area, m.target, m.method, m.activation,
               m.cross_activation, m.image_uri, m.mlflow_run_id
        FROM mei_runs m JOIN networks n USING (network_id)
        WHERE m.is_best ORDER BY network, m.layer, area, m.target, m.method LIMIT 96""", figures.mei_gallery,
            "The best seed's MEI per target and method (Pierzchlewicz et al. 2023), contrast shown around mid-grey, "
            "titled by method and activation on the model it was made for / on a network of another architecture; "
            "each image is an MLflow child run (mei_runs.mlflow_run_id) holding its activation history.",
            loads_arrays=True),
)


def build_report(warehouse: Warehouse, out: str | Path) -> tuple[Path, list[Finding]]:
    """Write `out`/index.html and its figures from `warehouse`'s catalogs; return its path and the findings."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    connection = connect(warehouse)
    parts = []
    for section in SECTIONS:
        data = query_columns(connection, section.sql)
        body = f'<p class="empty">No rows yet: the <code>{section.stage}</code> stage fills this figure.</p>'
        if len(next(iter(data.values()), ())):
            figure = section.draw(data, warehouse.load_array) if section.loads_arrays else section.draw(data)
            image = f"{section.name}.png"
            figure.savefig(out / image, dpi=110)
            body = f'<img src="{image}" alt="{html.escape(section.title)}">'
        parts.append(f"""<section id="{section.name}"><h2>{html.escape(section.title)}</h2><figure>{body}
<figcaption>{html.escape(section.caption)}</figcaption></figure>
<details><summary>SQL</summary><pre>{html.escape(_dedent(section.sql))}</pre></details></section>""")
    results = findings(connection)
    page = PAGE.format(warehouse=html.escape(warehouse.uri), sections="\n".join(parts),
                       findings=findings_table(results))
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index, results


def findings_table(results: list[Finding]) -> str:
    """The findings as an HTML table: claim, statistic, value, holds, and the query each came from."""
    rows = []
    for finding in results:
        verdict = {True: "holds", False: "does not hold", None: "not tested"}[finding.holds]
        value = "" if finding.value is None else f"{finding.value:.3g}"
        rows.append(f"""<tr class="{verdict.replace(' ', '-')}"><td>{html.escape(finding.paper)}</td>
<td>{html.escape(finding.claim)}</td><td>{html.escape(finding.statistic)}</td><td>{value}</td><td>{verdict}</td>
<td>{html.escape(finding.note)}<details><summary>SQL</summary><pre>{html.escape(_dedent(finding.sql))}</pre>
</details></td></tr>""")
    return ("<table><thead><tr><th>paper</th><th>claim</th><th>statistic</th><th>value</th><th>verdict</th>"
            f"<th>notes</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _dedent(sql: str) -> str:
    return textwrap.dedent(sql).strip()


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>neurosurvey report</title>
<style>
body {{ font-family: sans-serif; max-width: 1500px; margin: 1.5em auto; padding: 0 1em; color: #222; }}
img {{ max-width: 100%; }} figcaption {{ color: #555; font-size: 0.9em; }}
pre {{ background: #f4f4f4; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }} td, th {{ border: 1px solid #ccc; padding: 0.3em 0.5em; }}
tr.holds td:nth-child(5) {{ color: #1a7f37; }} tr.does-not-hold td:nth-child(5) {{ color: #b42318; }}
.empty {{ color: #888; }}
</style></head>
<body><h1>neurosurvey report</h1>
<p>Built from the catalogs of <code>{warehouse}</code>. Every figure shows the query that produced it; run it
with <code>survey sql</code>.</p>
<section id="findings"><h2>Findings of the seed papers, checked on this survey</h2>
{findings}</section>
{sections}
</body></html>
"""
