"""The report's figures: plain functions from query columns (dicts of NumPy arrays, as DuckDB's `fetchnumpy` gives
them) to Matplotlib figures. They know nothing of the catalog; `survey.report.html` runs the queries."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from matplotlib.figure import Figure

from survey.report.findings import group_means

Columns = dict[str, np.ndarray]

OBJECTIVE_COLOURS = {"supervised": "tab:blue", "contrastive": "tab:orange", "untrained": "tab:grey",
                     "external": "tab:purple"}
AREA_COLOURS = {"V1": "tab:green", "V2": "tab:olive", "V4": "tab:red", "IT": "tab:brown"}
DEPTH_BINS = 5  # network layers are binned by relative depth into this many bins for curves


def colour(name: str, palette: dict[str, str]) -> str:
    return palette.get(name, "black")


def depth_bin(depth: np.ndarray) -> np.ndarray:
    """Bin centres of relative depths in [0, 1] (`DEPTH_BINS` bins)."""
    index = np.minimum((np.asarray(depth, dtype=np.float64) * DEPTH_BINS).astype(int), DEPTH_BINS - 1)
    return (index + 0.5) / DEPTH_BINS


def _grouped_means(keys: Sequence[np.ndarray], values: np.ndarray) -> dict[tuple, float]:
    return dict(zip(*group_means(values, *keys), strict=True))


def _frame(panels: int, rows: int = 1, width: float = 4.2, height: float = 3.4) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(width * panels, height * rows), layout="constrained")
    axes = np.atleast_2d(figure.subplots(rows, panels, squeeze=False))
    return figure, axes


def planar(vectors: np.ndarray) -> np.ndarray:
    """The two leading principal coordinates of row vectors (n × d → n × 2; zero-padded when d < 2)."""
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    if len(centred) < 2:
        return np.zeros((len(centred), 2))
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coordinates = u[:, :2] * s[:2]
    return np.pad(coordinates, ((0, 0), (0, 2 - coordinates.shape[1])))


def embedding_map(data: Columns) -> Figure:
    """Networks' layers and recorded areas in one shape-metric space (first two principal coordinates of the
    embedding vectors): coloured by objective, and by depth."""
    xy = planar(np.stack([np.asarray(v, dtype=np.float64) for v in data["vector"]]))
    network = data["source_kind"] == "network"
    figure, axes = _frame(2, width=5.0, height=4.4)
    by_objective, by_depth = axes[0]
    for objective in sorted(set(data["objective"][network])):
        chosen = network & (data["objective"] == objective)
        by_objective.scatter(*xy[chosen].T, s=14, alpha=0.75, color=colour(objective, OBJECTIVE_COLOURS),
                             label=objective)
    points = by_depth.scatter(*xy[network].T, s=14, c=data["depth"][network].astype(float), cmap="viridis",
                              vmin=0, vmax=1)
    figure.colorbar(points, ax=by_depth, label="relative depth")
    for axis in (by_objective, by_depth):
        for area in sorted(set(data["layer_or_area"][~network])):
            chosen = ~network & (data["layer_or_area"] == area)
            axis.scatter(*xy[chosen].T, s=90, marker="*", edgecolor="black", linewidth=0.6,
                         color=colour(area, AREA_COLOURS), label=f"area {area}")
        axis.set_xlabel("coordinate 1")
        axis.set_ylabel("coordinate 2")
    by_objective.legend(fontsize=7, loc="best")
    by_objective.set_title("by objective (stars: recorded areas)")
    by_depth.set_title("by layer depth")
    figure.suptitle(f"shape-metric space: {data['space'][0]}")
    return figure


def distance_heatmap(data: Columns) -> Figure:
    """Pairwise shape distances of the representations in `data` (rep_a, rep_b, distance, and each rep's label and
    sort key in label_a/label_b, order_a/order_b)."""
    order = {}
    for rep, label, key in [*zip(data["rep_a"], data["label_a"], data["order_a"], strict=True),
                            *zip(data["rep_b"], data["label_b"], data["order_b"], strict=True)]:
        order[rep] = (tuple(key), label)
    reps = sorted(order, key=lambda rep: order[rep])
    index = {rep: i for i, rep in enumerate(reps)}
    matrix = np.full((len(reps), len(reps)), np.nan)
    np.fill_diagonal(matrix, 0.0)
    for a, b, distance in zip(data["rep_a"], data["rep_b"], data["distance"], strict=True):
        matrix[index[a], index[b]] = matrix[index[b], index[a]] = distance
    figure, axes = _frame(1, width=7.0, height=6.0)
    axis = axes[0, 0]
    image = axis.imshow(matrix, cmap="magma", interpolation="nearest")
    figure.colorbar(image, ax=axis, label=f"distance ({data['score_method'][0]})")
    groups = [order[rep][0][0] for rep in reps]
    edges = [i for i in range(1, len(reps)) if groups[i] != groups[i - 1]]
    for edge in edges:
        axis.axhline(edge - 0.5, color="white", linewidth=0.6)
        axis.axvline(edge - 0.5, color="white", linewidth=0.6)
    starts = [0, *edges]
    axis.set_yticks([(start + end - 1) / 2 for start, end in zip(starts, [*edges, len(reps)], strict=True)],
                    [groups[start] for start in starts], fontsize=7)
    axis.set_xticks([])
    axis.set_title(f"{data['metric'][0]} (α = {data['alpha'][0]:g}), {len(reps)} representations")
    return figure


def _objective_lines(axis, data: Columns, chosen: np.ndarray, value: str) -> None:
    """One line per objective: the mean of `value` over the `chosen` rows in each depth bin."""
    means = _grouped_means((data["objective"][chosen], depth_bin(data["depth"][chosen])), data[value][chosen])
    for objective in sorted({key[0] for key in means}):
        depths = sorted(key[1] for key in means if key[0] == objective)
        axis.plot(depths, [means[(objective, d)] for d in depths], marker="o", markersize=3,
                  color=colour(objective, OBJECTIVE_COLOURS), label=objective)


def _curves_by_depth(axis, data: Columns, value: str, *, areas: bool = True) -> None:
    """Mean of `value` per objective and depth bin (lines) and per recorded area at its depth (stars)."""
    network = data["source_kind"] == "network"
    _objective_lines(axis, data, network, value)
    if areas and (~network).any():
        area_means = _grouped_means((data["layer_or_area"][~network], data["depth"][~network].astype(float)),
                                   data[value][~network])
        for (area, depth), mean in sorted(area_means.items(), key=lambda item: item[0][1]):
            axis.scatter([depth], [mean], s=90, marker="*", edgecolor="black", linewidth=0.6,
                         color=colour(area, AREA_COLOURS), label=f"area {area}", zorder=3)
    axis.set_xlabel("relative depth (layers) / area (V1 0 … IT 1)")
    axis.set_ylabel(value.replace("_", " "))
    axis.ticklabel_format(axis="y", useOffset=False)


def geometry_by_depth(data: Columns) -> Figure:
    """Manifold capacity, radius, dimension and center correlation by depth (Chung et al. 2018; Cohen et al. 2020)."""
    quantities = ("capacity", "radius", "dimension", "center_correlation")
    figure, axes = _frame(len(quantities), width=3.6)
    for axis, quantity in zip(axes[0], quantities, strict=True):
        _curves_by_depth(axis, data, quantity)
        axis.set_title(quantity.replace("_", " "))
    axes[0, 0].legend(fontsize=7)
    figure.suptitle(f"object manifolds ({data['manifold_set'][0]}): mean per objective and depth bin; areas as stars")
    return figure


def distance_to_areas(data: Columns) -> Figure:
    """Mean shape distance from each recorded area to network layers by depth bin, per objective (rows: metrics)."""
    areas = sorted(set(data["area"]), key=lambda area: list(AREA_COLOURS).index(area) if area in AREA_COLOURS else 9)
    metrics = sorted(set(data["metric"]))
    figure, axes = _frame(len(areas), rows=len(metrics), width=3.4, height=2.8)
    for row, metric in enumerate(metrics):
        for column, area in enumerate(areas):
            axis = axes[row, column]
            _objective_lines(axis, data, (data["metric"] == metric) & (data["area"] == area), "distance")
            axis.set_title(f"{area} · {metric}", fontsize=9)
            axis.set_xlabel("layer depth")
            axis.set_ylabel("distance")
    axes[0, 0].legend(fontsize=7)
    return figure


def signatures(data: Columns) -> Figure:
    """Mean topology signature curves (closed and open iso-contours per level; Wang & Ponce 2022) by depth bin for
    each network objective and by recorded area."""
    groups = sorted(set(data["group"]), key=lambda group: (group == "recorded", group))
    figure, axes = _frame(len(groups), rows=2, width=3.4, height=2.9)
    for column, group in enumerate(groups):
        chosen = data["group"] == group
        recorded = group == "recorded"
        for row, curve in enumerate(("n_loop", "n_line")):
            axis = axes[row, column]
            series = data["layer_or_area"] if recorded else depth_bin(data["depth"])
            means = _grouped_means((series[chosen], data["level"][chosen]), data[curve][chosen])
            for name in sorted({key[0] for key in means}, key=lambda n: data["depth"][chosen][series[chosen] == n][0]):
                levels = sorted(key[1] for key in means if key[0] == name)
                style = ({"color": colour(name, AREA_COLOURS), "label": name} if recorded else
                         {"color": _viridis(float(name)), "label": f"depth {float(name):.1f}"})
                axis.plot(np.array(levels) / max(max(levels), 1), [means[(name, level)] for level in levels],
                          **style)
            axis.set_title(f"{group}: {'closed' if curve == 'n_loop' else 'open'} contours", fontsize=9)
            axis.set_xlabel("normalised level")
            axis.set_ylabel(curve)
            if row == 0:
                axis.legend(fontsize=6)
    return figure


def _viridis(value: float) -> tuple:
    from matplotlib import colormaps

    return colormaps["viridis"](value)


def predictivity_by_depth(data: Columns) -> Figure:
    """Median noise-corrected encoding-model correlation by layer depth, per recorded area and objective."""
    areas = sorted(set(data["area"]), key=lambda area: list(AREA_COLOURS).index(area) if area in AREA_COLOURS else 9)
    figure, axes = _frame(len(areas), width=3.4)
    for axis, area in zip(axes[0], areas, strict=True):
        _objective_lines(axis, data, data["area"] == area, "median_corrected")
        axis.set_title(f"area {area}")
        axis.set_xlabel("layer depth")
        axis.set_ylabel("median corrected r")
    axes[0, 0].legend(fontsize=7)
    return figure


def mei_gallery(data: Columns, load: Callable[[str], np.ndarray], per_row: int = 4) -> Figure:
    """Best MEI of each target by each method side by side (GA beside EGG), `per_row` targets a row, titled with its
    activation on the model it was made for / on another architecture; `load(image_uri)` gives a C × H × W
    contrast."""
    targets = list(dict.fromkeys(zip(data["network"], data["layer"], data["area"], data["target"], strict=True)))
    methods = [m for m in ("ga", "ga_grey", "egg") if m in set(data["method"])]
    per_row = min(per_row, len(targets))
    figure, axes = _frame(per_row * len(methods), rows=-(-len(targets) // per_row), width=1.7, height=1.95)
    for axis in axes.flat:
        axis.set_axis_off()
    rows = {(n, lay, a, t, m): i for i, (n, lay, a, t, m) in enumerate(
        zip(data["network"], data["layer"], data["area"], data["target"], data["method"], strict=True))}
    for number, target in enumerate(targets):
        network, layer, area, unit = target
        for offset, method in enumerate(methods):
            index = rows.get((*target, method))
            if index is None:
                continue
            axis = axes[number // per_row, (number % per_row) * len(methods) + offset]
            axis.imshow(contrast_image(np.asarray(load(data["image_uri"][index]), dtype=np.float64)))
            cross = data["cross_activation"][index]
            label = f"{network}\n{area} {unit}" if area != "unit" else f"{network}\n{layer}:{unit}"
            axis.set_title(f"{label}\n{method}: {data['activation'][index]:.1f}"
                           + (f" / {cross:.1f}" if np.isfinite(cross) else ""), fontsize=6)
    return figure


def contrast_image(contrast: np.ndarray) -> np.ndarray:
    """C × H × W contrast → H × W × 3 in [0, 1], mid-grey at zero, scaled by its largest magnitude."""
    scale = max(float(np.abs(contrast).max()), 1e-12)
    image = 0.5 + 0.5 * contrast / scale
    if image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    return np.clip(image.transpose(1, 2, 0), 0.0, 1.0)
