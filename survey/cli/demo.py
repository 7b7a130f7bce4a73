"""`survey demo`: the whole survey on the embedded default config, then what it found and where to look next."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from survey.cli.catalog import write_report
from survey.cli.common import (
    DEFAULT_WAREHOUSE,
    ExecutorOption,
    WarehouseOption,
    app,
    print_query,
)
from survey.cli.surveying import print_mei_summary

if TYPE_CHECKING:
    from survey.catalog import Warehouse

SUMMARIES = {  # title → query, printed after the demo runs
    "representations": """
        SELECT r.source_kind, s.name AS stimset, count(*) AS representations, count(DISTINCT r.source_id) AS sources,
               round(avg(r.n_units)) AS mean_units
        FROM representations r JOIN stimulus_sets s USING (stimset_id) GROUP BY ALL ORDER BY ALL""",
    "networks by objective": """
        SELECT objective, count(*) AS networks, round(avg(test_accuracy), 3) AS mean_test_accuracy,
               round(avg(n_params)) AS mean_params FROM networks GROUP BY 1 ORDER BY 1""",
    "mean shape distance (radians) from each recorded area to network layers by depth": """
        WITH pairs AS (
            SELECT d.metric, d.alpha, a.layer_or_area AS area, b.depth, d.distance
            FROM shape_distances d
            JOIN representations a ON a.rep_id IN (d.rep_a, d.rep_b) AND a.source_kind = 'session'
            JOIN representations b ON b.rep_id IN (d.rep_a, d.rep_b) AND b.source_kind = 'network'
            WHERE d.score_method = 'angular')
        SELECT metric, alpha, area,
               round(avg(distance) FILTER (WHERE depth < 1/3), 3) AS early_layers,
               round(avg(distance) FILTER (WHERE depth >= 1/3 AND depth < 2/3), 3) AS middle_layers,
               round(avg(distance) FILTER (WHERE depth >= 2/3), 3) AS late_layers
        FROM pairs GROUP BY ALL ORDER BY metric, alpha, area""",
    "object-manifold geometry by network depth and by recorded area": """
        SELECT CASE WHEN r.source_kind = 'session' THEN 'area ' || r.layer_or_area
                    WHEN r.depth < 1/3 THEN 'layers, early' WHEN r.depth < 2/3 THEN 'layers, middle'
                    ELSE 'layers, late' END AS "group",
               count(*) AS reps, round(avg(c.capacity), 3) AS capacity,
               round(avg(c.simulated_capacity), 3) AS simulated, round(avg(c.radius), 3) AS radius,
               round(avg(c.dimension), 2) AS dimension, round(avg(a.center_alignment), 3) AS center_align,
               round(avg(a.decodability), 3) AS decoding
        FROM capacity c JOIN alignment a USING (rep_id, manifold_set) JOIN representations r USING (rep_id)
        WHERE c.status = 'ok' GROUP BY ALL ORDER BY min(r.source_kind), min(r.depth)""",
    "tuning-landscape topology by network depth and by recorded area": """
        SELECT CASE WHEN r.source_kind = 'session' THEN 'area ' || r.layer_or_area
                    WHEN r.depth < 1/3 THEN 'layers, early' WHEN r.depth < 2/3 THEN 'layers, middle'
                    ELSE 'layers, late' END AS "group",
               count(*) AS maps, round(avg(t.auc_loop), 3) AS loops_auc, round(avg(t.auc_line), 3) AS lines_auc,
               round(avg(t.single_branch_level), 3) AS single_branch_level,
               round(avg(t.reliability_agreement), 3) AS split_half_agreement
        FROM topology t JOIN representations r USING (rep_id) WHERE NOT t.constant
        GROUP BY ALL ORDER BY min(r.source_kind), min(r.depth)""",
    "neural predictivity: best layer per network family and area (median over networks)": """
        WITH best AS (SELECT network_id, area, max(median_corrected) AS score, arg_max(depth, median_corrected) AS depth
                      FROM predictivity WHERE status = 'ok' GROUP BY ALL)
        SELECT n.objective, b.area, round(median(b.score), 3) AS corrected_r, round(median(b.depth), 2) AS best_depth
        FROM best b JOIN networks n USING (network_id) GROUP BY ALL ORDER BY ALL""",
}


@app.command()
def demo(
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    executor: ExecutorOption = None,
    small: Annotated[bool, typer.Option("--small", help=(
        "A smaller survey that still runs every stage (about 2 minutes): fewer networks, sessions, images."))] = False,
) -> None:
    """The whole survey on the embedded default config, then a summary and where to look next."""
    from survey.catalog import TABLES, Warehouse, connect
    from survey.config import DEMO_CONFIG, SMALL_DEMO_CONFIG, load_config
    from survey.display import console
    from survey.runtime.survey import execute

    execute(load_config(SMALL_DEMO_CONFIG if small else DEMO_CONFIG), warehouse, executor=executor)
    store = Warehouse(warehouse)
    connection = connect(store)
    print_query(connection, "rows per table", " UNION ALL ".join(
        f"SELECT '{table}' AS table_name, count(*) AS rows FROM {table}" for table in TABLES))
    for title, query in SUMMARIES.items():
        print_query(connection, title, query)
    print_nearest_networks(store)
    print_mei_summary(store, None)
    console.print(
        "\nNext: query the catalogs with SQL, e.g.\n"
        f"  survey sql -w {warehouse} \"SELECT source_kind, count(*) FROM representations GROUP BY 1\"\n"
        f"  survey sql -w {warehouse} \"SELECT name, objective, test_accuracy FROM networks ORDER BY 3 DESC LIMIT 5\"\n"
        f"  survey sql -w {warehouse} --format csv \"SELECT * FROM sessions\"\n"
        f"  survey search -w {warehouse} REP_ID -k 10 --where \"n.objective = 'supervised'\"\n"
        f"  survey serve -w {warehouse}   # the search API on http://127.0.0.1:8000/docs\n"
        "Tables and columns: catalogs/README.md. Run your own survey: survey run jobs/configs/small.yaml",
        soft_wrap=True,
    )
    write_report(store, None)


def print_nearest_networks(store: Warehouse, area: str = "IT") -> None:
    """The five networks nearest to one recorded area in the newest embedding space."""
    from survey.display import print_table
    from survey.search.space import SearchService

    service = SearchService(store)
    if not service.spaces():
        return
    space = service.space()
    recorded = sorted(rep for rep, row in service.metadata.items() if row["area"] == area and rep in space.item)
    if not recorded:
        return
    neighbours = service.neighbors(recorded[0], 5, space.row["space_id"], service.matching(source_kind="network"))
    print_table(["rank", "network", "layer", "objective", "distance", "exact"], [
        {"rank": i + 1, "network": n.metadata["source_name"], "layer": n.metadata["layer_or_area"],
         "objective": n.metadata["objective"], "distance": f"{n.distance:.3f}", "exact": n.exact}
        for i, n in enumerate(neighbours)
    ], title=f"five networks nearest to {area} of {service.metadata[recorded[0]]['source_name']} "
             f"({space.row['name']}, space {space.row['space_id']})")
