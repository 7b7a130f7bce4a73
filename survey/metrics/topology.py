"""Tuning-landscape topology (DESIGN §5.3), after Wang & Ponce 2022, "On the Level Sets and Invariance of Neural
Tuning Landscapes".

A tuning map f (H × W responses over a stimulus grid) is cut at L levels t_i = linspace(min f, max f, L), taken on
the map normalised to [0, 1] (levels u_i = linspace(0, 1, L)) so that a·f + b with a > 0 gives the same counts. At
each level:

- the super-level set A = {f > t} is 4-connected and its complement B = {f ≤ t} 8-connected (the complementary
  pair, so each iso-contour separates one component of A from one component of B);
- n_loop, the closed iso-contours = components of A not touching the image border + components of B not touching
  it (each closed contour is the outer boundary of exactly one such component);
- n_line, the open iso-contours = maximal runs of A pixels along the border cycle (an open contour has its two ends
  on the border, as has each run; a border all in A or all outside A has no run);
- betti0 = components of A, betti1 = holes of A (components of B not touching the border), euler = betti0 − betti1.

When no pixel equals t these are the closed and open contours of `skimage.measure.find_contours(f, t,
fully_connected='low')`; a pixel with f = t counts as outside A. Counting is one union-find sweep per map: a pixel
enters A at the first level (from the top) below its value and B at the first level (from the bottom) at or above
it, so a map costs O(H·W) whatever L is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from numpy.typing import ArrayLike
from scipy.ndimage import gaussian_filter

from survey.errors import SurveyError
from survey.validation import real_array

SIGMA_LADDER = np.arange(13) * 0.25
"""Gaussian widths (pixels) tried by `noise_sigma`, from 0 (no smoothing) to 3."""


@dataclass(frozen=True)
class TopologySignature:
    """Level-set counts of B maps at L levels (Wang & Ponce 2022); count arrays are B × L int32.

    `constant` marks maps with max == min: their counts are 0 and their summaries NaN.
    `auc_loop`, `auc_line`: trapezoid areas under n_loop and n_line over the normalised level.
    `single_branch_level`: the lowest normalised level u_i with betti0 ≤ 1 at every level ≥ u_i (above it the map
    has one peak).
    """

    levels: np.ndarray
    n_loop: np.ndarray
    n_line: np.ndarray
    betti0: np.ndarray
    betti1: np.ndarray
    euler: np.ndarray
    constant: np.ndarray
    auc_loop: np.ndarray
    auc_line: np.ndarray
    single_branch_level: np.ndarray

    @property
    def vector(self) -> np.ndarray:
        """The per-map signature [n_loop(u_1..u_L), n_line(u_1..u_L)], B × 2L."""
        return np.concatenate([self.n_loop, self.n_line], axis=1)


@dataclass(frozen=True)
class Reliability:
    """Split-half reliability of the signature, per map (B floats).

    `correlation`: mean over splits of Pearson r between the halves' signature vectors (splits where either vector
    is constant are left out; NaN if all are). `agreement`: mean fraction of (level, kind) entries that are equal.
    """

    correlation: np.ndarray
    agreement: np.ndarray


def signature(maps: ArrayLike, n_levels: int = 21) -> TopologySignature:
    """Level-set topology of each map (Wang & Ponce 2022; definitions in the module docstring).

    `maps` is B × H × W (or one H × W map, treated as B = 1), finite, with H, W ≥ 2. A constant map gives zero
    counts, `constant=True` and NaN summaries rather than an error.
    """
    batch = _as_batch(maps, "maps", core_ndim=2, shape_hint="one H × W map or a B × H × W batch")
    _, rank, levels, constant = _ranked(batch, n_levels)
    n_maps = len(batch)
    betti0, betti1, n_loop, n_line = (np.zeros((n_maps, n_levels), np.int32) for _ in range(4))
    _sweep(rank, *_grid(*batch.shape[1:]), betti0, betti1, n_loop, n_line)

    def summary(values: np.ndarray) -> np.ndarray:
        return np.where(constant, np.nan, values)

    split = betti0 > 1
    last_split = n_levels - 1 - np.argmax(split[:, ::-1], axis=1)
    single = np.where(split.any(axis=1), levels[np.minimum(last_split + 1, n_levels - 1)], 0.0)
    return TopologySignature(
        levels=levels, n_loop=n_loop, n_line=n_line, betti0=betti0, betti1=betti1, euler=betti0 - betti1,
        constant=constant,
        auc_loop=summary(np.trapezoid(n_loop, levels, axis=1)),
        auc_line=summary(np.trapezoid(n_line, levels, axis=1)),
        single_branch_level=summary(single),
    )


def noise_sigma(maps: ArrayLike, sem: ArrayLike) -> np.ndarray:
    """Per-map Gaussian width chosen by the discrepancy principle (the "smooth at the noise level" step of
    Wang & Ponce 2022): the largest σ on `SIGMA_LADDER` such that rms(f − G_σ f) ≤ rms(sem) for it and every
    smaller σ. `sem` (standard error of each response) must broadcast to `maps`; per-map scalars are B × 1 × 1.
    """
    return _smooth_ladder(maps, sem)[1]


def smooth_to_noise(maps: ArrayLike, sem: ArrayLike) -> np.ndarray:
    """`maps` (same shape back) Gaussian-smoothed per map with the width `noise_sigma` picks; sem = 0 returns the
    maps unchanged (Wang & Ponce 2022 smooth noisy maps at the noise level before counting level sets).
    """
    smoothed, _ = _smooth_ladder(maps, sem)
    return smoothed.reshape(np.shape(maps))


def signature_reliability(
    trials: ArrayLike, n_levels: int = 21, n_splits: int = 10, seed: int = 0, smooth: bool = True
) -> Reliability:
    """Split-half reliability of the topology signature (Wang & Ponce 2022) from B × R × H × W trial repeats.

    Each split draws a random halving of the R ≥ 2 repeats (the same for every map; the second half takes the odd
    one), averages each half, optionally applies `smooth_to_noise` with the half mean's standard error (the pooled
    per-pixel standard deviation of all R repeats over √(half size), defined even for R = 2), and compares the two
    signature vectors. Deterministic for a seed.
    """
    data = _as_batch(trials, "trials", core_ndim=3, shape_hint="a B × R × H × W array (maps × repeats × H × W)")
    n_repeats = data.shape[1]
    if n_repeats < 2:
        raise SurveyError(f"trials has {n_repeats} repeat(s) per map: split-half reliability needs R ≥ 2 repeats")
    if int(n_splits) != n_splits or n_splits < 1:
        raise SurveyError(f"n_splits={n_splits!r}: pass an integer ≥ 1")
    spread = data.std(axis=1, ddof=1) if smooth else None
    rng = np.random.default_rng(seed)
    r_sum, r_count, agree_sum = np.zeros(len(data)), np.zeros(len(data)), np.zeros(len(data))
    for _ in range(int(n_splits)):
        order = rng.permutation(n_repeats)
        vectors = []
        for half in (order[: n_repeats // 2], order[n_repeats // 2 :]):
            mean = data[:, half].mean(axis=1)
            if spread is not None:
                mean = smooth_to_noise(mean, spread / np.sqrt(len(half)))
            vectors.append(signature(mean, n_levels).vector.astype(np.float64))
        first, second = (v - v.mean(axis=1, keepdims=True) for v in vectors)
        norm = np.sqrt((first**2).sum(axis=1) * (second**2).sum(axis=1))
        defined = norm > 0
        r_sum[defined] += (first * second).sum(axis=1)[defined] / norm[defined]
        r_count += defined
        agree_sum += (vectors[0] == vectors[1]).mean(axis=1)
    correlation = np.full(len(data), np.nan)
    np.divide(r_sum, r_count, out=correlation, where=r_count > 0)
    return Reliability(correlation=correlation, agreement=agree_sum / n_splits)


def level_isotropy(maps: ArrayLike, n_levels: int = 21) -> np.ndarray:
    """B × L isotropy of the level set around the peak (the "locally radial basis function" test of Wang & Ponce
    2022): at level u_i, the 4-component of A = {f > t_i} holding the peak (first argmax), the sub-pixel points
    where f = t_i on the 4-neighbour edges leaving it (linear interpolation; edges into its holes included), and
    max / min distance of those points to the peak. 1 for a round bump, the axis ratio for an elliptical one.

    NaN where the contour is not closed: the component touches the image border, or the peak is not in A (the top
    level, and every level of a constant map). A closed component has ≥ 4 leaving edges, so the ratio is then
    always defined.
    """
    batch = _as_batch(maps, "maps", core_ndim=2, shape_hint="one H × W map or a B × H × W batch")
    unit, rank, levels, _ = _ranked(batch, n_levels)
    peaks = unit.reshape(len(unit), -1).argmax(axis=1)
    out = np.full((len(batch), n_levels), np.nan)
    _isotropy(unit, rank, levels, peaks, *_grid(*batch.shape[1:])[:2], out)
    return out


def _as_batch(values: ArrayLike, name: str, core_ndim: int, shape_hint: str) -> np.ndarray:
    """`values` as a C-contiguous float64 batch (leading axis added to a single item), checked finite, H, W ≥ 2."""
    array = real_array(values, name, (core_ndim, core_ndim + 1), shape_hint, finite=False)
    if array.ndim == core_ndim:
        array = array[None]
    if min(array.shape[-2:]) < 2:
        raise SurveyError(f"{name} has shape {array.shape}: each map needs at least 2 × 2 pixels")
    finite = np.isfinite(array).reshape(len(array), -1).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        what = "NaN" if np.isnan(array[bad]).any() else "inf"
        raise SurveyError(f"{name}[{bad}] contains {what}: drop or impute non-finite responses before computing "
                          "signatures")
    return np.ascontiguousarray(array)


def _ranked(batch: np.ndarray, n_levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Maps normalised to [0, 1] (constant maps to 0), each pixel's rank = number of levels strictly below it (so
    A_i = {rank > i}, B_i = {rank ≤ i}), the levels, and which maps are constant."""
    if isinstance(n_levels, bool) or int(n_levels) != n_levels or n_levels < 2:
        raise SurveyError(f"n_levels={n_levels!r}: pass an integer ≥ 2")
    levels = np.linspace(0.0, 1.0, int(n_levels))
    unit = np.empty_like(batch)
    rank = np.empty(batch.shape, np.int32)
    constant = np.empty(len(batch), np.bool_)
    _rank(batch, levels, unit, rank, constant)
    return unit, rank, levels, constant


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tables for an H × W grid in flat indices: each pixel's neighbours (N × 8: the four 4-neighbours, then the
    diagonals; −1 off the grid), whether it is on the border, and the border pixels in cyclic order (top, right,
    bottom, left; each corner once)."""
    rows, cols = np.divmod(np.arange(height * width), width)
    neighbours = np.full((height * width, 8), -1, np.int64)
    for d, (dr, dc) in enumerate(((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))):
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        neighbours[inside, d] = (r * width + c)[inside]
    on_border = (neighbours[:, :4] < 0).any(axis=1)
    cycle_rows = np.concatenate([np.zeros(width, np.int64), np.arange(1, height), np.full(width - 1, height - 1),
                                 np.arange(height - 2, 0, -1)])
    cycle_cols = np.concatenate([np.arange(width), np.full(height - 1, width - 1), np.arange(width - 2, -1, -1),
                                 np.zeros(height - 2, np.int64)])
    return neighbours, on_border, cycle_rows * width + cycle_cols


def _smooth_ladder(maps: ArrayLike, sem: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Maps (B × H × W) smoothed at the discrepancy-principle width, and those widths (B)."""
    batch = _as_batch(maps, "maps", core_ndim=2, shape_hint="one H × W map or a B × H × W batch")
    try:
        noise = np.broadcast_to(real_array(sem, "sem"), np.shape(maps))
    except ValueError:
        raise SurveyError(f"sem has shape {np.shape(sem)}, maps {np.shape(maps)}: pass sem broadcastable to maps "
                          "(per-map scalars as B × 1 × 1)") from None
    if (noise < 0).any():
        raise SurveyError("sem has negative values: pass standard errors ≥ 0")
    budget = np.sqrt((noise.reshape(batch.shape) ** 2).mean(axis=(1, 2)))
    smoothed, sigma = batch.copy(), np.zeros(len(batch))
    still = np.ones(len(batch), bool)
    for width in SIGMA_LADDER[1:]:
        candidate = gaussian_filter(batch, (0.0, width, width))
        still &= np.sqrt(((batch - candidate) ** 2).mean(axis=(1, 2))) <= budget
        if not still.any():
            break
        smoothed[still], sigma[still] = candidate[still], width
    return smoothed, sigma


@numba.njit(parallel=True, cache=True)
def _rank(batch, levels, unit, rank, constant):
    """Fill `unit` = (f − min) / (max − min) (0 for a constant map) and `rank` = number of levels below it."""
    last = levels.shape[0] - 1
    for b in numba.prange(batch.shape[0]):
        low, high = batch[b].min(), batch[b].max()
        constant[b] = high == low
        for r in range(batch.shape[1]):
            for c in range(batch.shape[2]):
                u = 0.0 if constant[b] else (batch[b, r, c] - low) / (high - low)
                j = min(int(u * last), last)
                while j > 0 and levels[j - 1] >= u:
                    j -= 1
                while levels[j] < u:
                    j += 1
                unit[b, r, c] = u
                rank[b, r, c] = j


@numba.njit(cache=True)
def _find(parent: np.ndarray, node: int) -> int:
    while parent[node] != node:
        parent[node] = parent[parent[node]]
        node = parent[node]
    return node


@numba.njit(cache=True)
def _sweep_map(rank, neighbours, on_border, cycle, betti0, betti1, n_loop, n_line):
    """Union-find sweep of one map's pixel ranks: A grows from the top level down (4-connected), then B from the
    bottom level up (8-connected), counting components and those off the border; writes the L-long output rows."""
    n_pixels = rank.size
    n_levels = betti0.shape[0]
    start = np.zeros(n_levels + 1, np.int64)  # counting sort of the pixels by rank
    for p in range(n_pixels):
        start[rank[p] + 1] += 1
    for j in range(n_levels):
        start[j + 1] += start[j]
    order = np.empty(n_pixels, np.int64)
    fill = start[:-1].copy()
    for p in range(n_pixels):
        order[fill[rank[p]]] = p
        fill[rank[p]] += 1
    parent = np.empty(n_pixels, np.int64)  # −1: not in the set yet
    size = np.empty(n_pixels, np.int64)  # per root: pixels in the component
    off_border = np.empty(n_pixels, np.bool_)  # per root: the component does not touch the border
    for grow_a in (True, False):
        parent[:] = -1
        count = 0  # components
        inner = 0  # components off the border
        for step in range(n_levels):
            level = n_levels - 1 - step if grow_a else step
            joining = level + 1 if grow_a else level  # rank of the pixels that join the set at this level
            for s in range(start[joining], start[min(joining + 1, n_levels)]):
                a = p = order[s]
                parent[p] = p
                size[p] = 1
                off_border[p] = not on_border[p]
                count += 1
                inner += off_border[p]
                for d in range(4 if grow_a else 8):
                    q = neighbours[p, d]
                    if q < 0 or parent[q] < 0:
                        continue
                    b = _find(parent, q)
                    if a != b:  # merge the smaller tree under the larger; `a` stays p's root
                        if size[a] < size[b]:
                            a, b = b, a
                        parent[b] = a
                        size[a] += size[b]
                        count -= 1
                        inner -= off_border[a] or off_border[b]
                        off_border[a] = off_border[a] and off_border[b]
            if grow_a:
                betti0[level] = count
                n_loop[level] = inner
            else:
                betti1[level] = inner
                n_loop[level] += inner
    for level in range(n_levels):
        runs = 0
        previous = rank[cycle[-1]] > level
        for p in cycle:
            inside = rank[p] > level
            runs += inside and not previous
            previous = inside
        n_line[level] = runs


@numba.njit(parallel=True, cache=True)
def _sweep(rank, neighbours, on_border, cycle, betti0, betti1, n_loop, n_line):
    for b in numba.prange(rank.shape[0]):
        _sweep_map(rank[b].ravel(), neighbours, on_border, cycle, betti0[b], betti1[b], n_loop[b], n_line[b])


@numba.njit(parallel=True, cache=True)
def _isotropy(unit, rank, levels, peaks, neighbours, on_border, out):
    """Flood-fill the peak's 4-component of A per level; max / min distance of its edge crossings to the peak."""
    width = unit.shape[2]
    for b in numba.prange(unit.shape[0]):
        f = unit[b].ravel()
        k = rank[b].ravel()
        peak = peaks[b]
        pr, pc = peak // width, peak % width
        stamp = np.full(f.size, -1, np.int64)
        stack = np.empty(f.size, np.int64)
        for level in range(levels.shape[0]):
            if k[peak] <= level:
                continue
            stamp[peak] = level
            stack[0] = peak
            top, closed = 1, True
            near, far = np.inf, 0.0
            while top > 0:
                top -= 1
                p = stack[top]
                if on_border[p]:
                    closed = False
                    break
                for d in range(4):
                    q = neighbours[p, d]
                    if k[q] > level:
                        if stamp[q] != level:
                            stamp[q] = level
                            stack[top] = q
                            top += 1
                    else:
                        frac = (f[p] - levels[level]) / (f[p] - f[q])
                        r, c, qr, qc = p // width, p % width, q // width, q % width
                        dist = np.hypot(r + frac * (qr - r) - pr, c + frac * (qc - c) - pc)
                        near, far = min(near, dist), max(far, dist)
            if closed:
                out[b, level] = far / near
