"""Tuning-landscape topology (survey.metrics.topology): known answers, invariances, and independent recounts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, label
from skimage.measure import find_contours

from survey.errors import SurveyError
from survey.metrics.topology import (
    level_isotropy,
    noise_sigma,
    signature,
    signature_reliability,
    smooth_to_noise,
)

COUNTS = ("n_loop", "n_line", "betti0", "betti1", "euler")
INTERIOR = slice(1, -1)  # level 0 (A = all but the minima) and the top level (A empty) are edge cases


def grid(size: int = 21) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[:size, :size].astype(np.float64)


def bump(size: int = 21, centre: tuple[float, float] = (10, 10), sigma: tuple[float, float] = (3, 3)) -> np.ndarray:
    y, x = grid(size)
    return np.exp(-((y - centre[0]) ** 2) / (2 * sigma[0] ** 2) - (x - centre[1]) ** 2 / (2 * sigma[1] ** 2))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered noise rescaled per map to exactly [0, 1], so the module's normalisation is the identity."""
    f = gaussian_filter(rng.standard_normal(shape), (0, sigma, sigma)[-len(shape) :])
    low = f.min(axis=(-2, -1), keepdims=True)
    return (f - low) / (f.max(axis=(-2, -1), keepdims=True) - low)


def test_narrow_bump_is_one_loop_at_every_interior_level() -> None:
    sig = signature(bump())
    assert sig.n_loop.shape == (1, 21) and sig.vector.shape == (1, 42)
    assert (sig.n_loop[0, INTERIOR] == 1).all() and (sig.n_line[0, INTERIOR] == 0).all()
    assert (sig.betti0[0, INTERIOR] == 1).all() and (sig.betti1[0] == 0).all()
    # level 0: A = all but the four corner minima, so the border holds 4 runs; the top level is empty
    assert sig.n_line[0, 0] == 4 and sig.n_loop[0, 0] == 0
    assert all(getattr(sig, name)[0, -1] == 0 for name in COUNTS)
    assert sig.auc_loop[0] == pytest.approx(19 / 20) and sig.auc_line[0] == pytest.approx(4 * 0.5 / 20)
    assert sig.single_branch_level[0] == 0.0 and not sig.constant[0]
    np.testing.assert_array_equal(sig.vector, np.concatenate([sig.n_loop, sig.n_line], axis=1))


def test_three_separated_bumps() -> None:
    heights = (1.0, 0.82, 0.63)
    centres = ((5, 5), (5, 15), (15, 10))
    f = sum(h * bump(centre=c, sigma=(1.5, 1.5)) for h, c in zip(heights, centres, strict=True))
    sig = signature(f)
    level = int(np.searchsorted(sig.levels, 0.3))  # above the background, below the lowest peak
    assert sig.n_loop[0, level] == 3 and sig.betti0[0, level] == 3 and sig.n_line[0, level] == 0
    unit = (f - f.min()) / (f.max() - f.min())
    second_peak = unit[centres[1]]
    assert sig.single_branch_level[0] == sig.levels[np.searchsorted(sig.levels, second_peak)]
    assert (sig.betti0[0, sig.levels >= sig.single_branch_level[0]] <= 1).all()


def test_ring_has_one_hole_at_mid_levels() -> None:
    y, x = grid()
    f = np.exp(-((np.hypot(y - 10, x - 10) - 6) ** 2) / (2 * 1.5**2))
    sig = signature(f)
    mid = (sig.levels > 0.2) & (sig.levels < 0.8)
    assert mid.sum() >= 10
    assert (sig.betti0[0, mid] == 1).all() and (sig.betti1[0, mid] == 1).all() and (sig.euler[0, mid] == 0).all()
    assert (sig.n_loop[0, mid] == 2).all() and (sig.n_line[0, mid] == 0).all()


def test_vertical_ridge_is_two_open_lines() -> None:
    _, x = grid()
    sig = signature(np.exp(-((x - 10) ** 2) / (2 * 2.0**2)))
    assert (sig.n_line[0, INTERIOR] == 2).all() and (sig.n_loop[0] == 0).all()


def test_linear_ramp_is_one_open_line() -> None:
    _, x = grid()
    sig = signature(x)
    assert (sig.n_line[0, :-1] == 1).all() and (sig.n_loop[0] == 0).all() and (sig.betti0[0, :-1] == 1).all()


def test_saddle_has_two_lines_at_the_middle_level() -> None:
    y, x = np.mgrid[-10:11, -10:11]
    sig = signature(x * y)
    assert sig.levels[10] == 0.5
    assert sig.n_line[0, 10] == 2 and sig.betti0[0, 10] == 2 and sig.n_loop[0, 10] == 0


def _assert_same(a: object, b: object, rows: slice = slice(None)) -> None:
    """All per-map fields of signature `a` (rows `rows`) equal those of `b`."""
    for name in (*COUNTS, "constant", "auc_loop", "auc_line", "single_branch_level"):
        np.testing.assert_array_equal(getattr(a, name)[rows], getattr(b, name), err_msg=name)


def test_invariant_to_square_symmetries_and_positive_affine_maps() -> None:
    rng = np.random.default_rng(7)
    y, x = grid()
    structured = np.stack([bump(centre=(6, 13), sigma=(2, 4)), x, x * y, np.hypot(y - 8, x - 12)])
    maps = np.concatenate([smooth_noise(rng, (300, 21, 21), 2.0), structured])
    reference = signature(maps)
    for k in range(4):
        turned = np.rot90(maps, k, axes=(1, 2))
        _assert_same(signature(turned), reference)
        _assert_same(signature(np.swapaxes(turned, 1, 2)), reference)
    noisy = maps[:300]  # no ties at interior levels, so float rounding of a·f + b cannot move a pixel across one
    for a, b in ((0.37, -3.0), (12.5, 1e3)):
        _assert_same(signature(a * noisy + b), signature(noisy))


def test_euler_equals_cubical_complex_count_and_betti_match_labelling() -> None:
    rng = np.random.default_rng(3)
    four = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    for height, width, sigma in ((21, 21, 1.5), (9, 30, 1.0), (33, 17, 2.5), (2, 12, 1.0)):
        maps = smooth_noise(rng, (20, height, width), sigma)
        sig = signature(maps)
        for b, f in enumerate(maps):
            for i, t in enumerate(sig.levels):
                a = f > t
                faces = a[:-1, :-1] & a[1:, :-1] & a[:-1, 1:] & a[1:, 1:]
                euler = a.sum() - (a[1:] & a[:-1]).sum() - (a[:, 1:] & a[:, :-1]).sum() + faces.sum()
                assert sig.euler[b, i] == euler
                holes, n = label(~a, structure=np.ones((3, 3)))
                touching = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
                assert sig.betti0[b, i] == label(a, structure=four)[1]
                assert sig.betti1[b, i] == n - np.count_nonzero(touching)


def test_counts_match_contour_tracing_on_random_smooth_maps() -> None:
    rng = np.random.default_rng(11)
    for _ in range(1000):
        height, width = rng.integers(2, 33, size=2)
        f = smooth_noise(rng, (height, width), rng.uniform(0.5, 4.0))
        sig = signature(f)
        for i in range(1, len(sig.levels) - 1):
            t = sig.levels[i]
            assert not (f == t).any()  # a tie would make the count depend on the tie-breaking rule
            contours = find_contours(f, t, fully_connected="low")
            closed = sum(bool((c[0] == c[-1]).all()) for c in contours)
            assert (sig.n_loop[0, i], sig.n_line[0, i]) == (closed, len(contours) - closed)


def test_constant_map_gives_zero_counts_and_nan_summaries_without_sinking_the_batch() -> None:
    maps = np.stack([np.full((21, 21), 3.5), bump()])
    sig = signature(maps)
    assert sig.constant.tolist() == [True, False]
    assert all((getattr(sig, name)[0] == 0).all() for name in COUNTS)
    assert np.isnan([sig.auc_loop[0], sig.auc_line[0], sig.single_branch_level[0]]).all()
    _assert_same(sig, signature(maps[1]), rows=slice(1, None))
    assert np.isnan(level_isotropy(maps)[0]).all()


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda: signature(np.where(np.arange(5)[:, None, None] == 3, np.nan, np.ones((5, 4, 4)))), "maps[3] contains "
         "NaN"),
        (lambda: signature(np.full((2, 4, 4), np.inf)), "maps[0] contains inf"),
        (lambda: signature(np.ones(7)), "maps has shape (7,)"),
        (lambda: signature(np.ones((2, 2, 4, 4))), "maps has shape (2, 2, 4, 4)"),
        (lambda: signature(np.ones((3, 1, 9))), "at least 2 × 2"),
        (lambda: signature(np.ones((4, 4)), n_levels=1), "n_levels=1"),
        (lambda: signature(np.ones((4, 4)), n_levels=2.5), "n_levels=2.5"),
        (lambda: signature([["a", "b"], ["c", "d"]]), "maps is not a numeric array"),
        (lambda: level_isotropy(np.ones((4, 1))), "at least 2 × 2"),
        (lambda: signature_reliability(np.ones((2, 1, 4, 4))), "trials has 1 repeat(s)"),
        (lambda: signature_reliability(np.full((1, 2, 4, 4), np.nan)), "trials[0] contains NaN"),
        (lambda: signature_reliability(np.ones((4, 4))), "trials has shape (4, 4)"),
        (lambda: smooth_to_noise(np.ones((2, 4, 4)), -1.0), "sem has negative"),
        (lambda: smooth_to_noise(np.ones((2, 4, 4)), np.ones(3)), "sem has shape (3,)"),
    ],
)
def test_bad_input_raises_one_line_naming_it(call: object, expected: str) -> None:
    with pytest.raises(SurveyError) as info:
        call()
    message = str(info.value)
    assert expected in message and "\n" not in message  # the input, what is wrong with it and the fix


def test_reliability_of_identical_repeats_is_perfect_and_of_noise_is_not() -> None:
    rng = np.random.default_rng(5)
    maps = np.stack([bump(), bump(centre=(7, 12), sigma=(2, 5)), 0.8 * bump() + bump(centre=(15, 4))])
    same = signature_reliability(np.repeat(maps[:, None], 4, axis=1))
    np.testing.assert_array_equal(same.correlation, 1.0)
    np.testing.assert_array_equal(same.agreement, 1.0)
    noise = rng.standard_normal((40, 6, 21, 21))
    for smooth in (True, False):
        chance = signature_reliability(noise, smooth=smooth)
        assert chance.agreement.mean() < 0.6 and chance.correlation.mean() < 0.9
    first, again = signature_reliability(noise[:5], seed=2), signature_reliability(noise[:5], seed=2)
    np.testing.assert_array_equal(first.correlation, again.correlation)
    np.testing.assert_array_equal(first.agreement, again.agreement)


def test_smoothing_sigma_follows_the_noise_level() -> None:
    rng = np.random.default_rng(9)
    clean = np.stack([bump(), bump(centre=(4, 14), sigma=(2, 6))])
    np.testing.assert_array_equal(smooth_to_noise(clean, 0.0), clean)
    assert smooth_to_noise(clean[0], np.zeros((21, 21))).shape == (21, 21)
    sigmas = []
    for level in (0.01, 0.1, 0.5):
        noisy = clean + level * rng.standard_normal(clean.shape)
        smoothed = smooth_to_noise(noisy, level)
        assert (np.sqrt(((noisy - smoothed) ** 2).mean(axis=(1, 2))) <= level).all()  # the discrepancy bound
        sigmas.append(noise_sigma(noisy, level))
    assert (sigmas[0] < sigmas[1]).all() and (sigmas[1] <= sigmas[2]).all() and (sigmas[2] > 1).all()


def test_isotropy_is_one_for_a_round_bump_and_the_axis_ratio_for_an_elongated_one() -> None:
    round_, elongated = bump(41, (20, 20), (6, 6)), bump(41, (20, 20), (4, 8))
    ratio = level_isotropy(np.stack([round_, elongated]))
    assert ratio.shape == (2, 21) and np.isnan(ratio[:, [0, -1]]).all()  # open at level 0, empty at the top
    np.testing.assert_allclose(ratio[0, 1:-2], 1.0, atol=0.01)
    np.testing.assert_allclose(ratio[1, 1:-2], 2.0, atol=0.03)
    shifted = level_isotropy(bump(21, (10, 3), (3, 3)))
    assert np.isnan(shifted[0, 1:5]).all()  # the contour is cut open by the image border
