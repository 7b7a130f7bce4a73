"""Generalized shape metrics (DESIGN §5.1): metric axioms, invariances, agreement with the plain per-pair formulas
of `tests/shape_reference.py`, and one-line errors that name the bad representation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from scipy.stats import ortho_group

from survey.errors import SurveyError
from survey.metrics.shape import Prepared, ShapeMetric, distance, pairwise
from tests import shape_reference as ref

SCORES = ("angular", "euclidean")
# (metric, alpha) for the stimuli × units metrics
FLAT = [("linear", 0.0), ("linear", 0.5), ("linear", 1.0), ("permutation", 1.0), ("cka", 1.0)]
# An equivalent pair's computed distance is the norm of the aligned residual a − g*b (see REFINE_GAP in the engine),
# whose entries carry the rounding of centring, one SVD per representation and the product X @ Q: backward errors of
# about c·ε·‖X‖ with c a small multiple of m·n (≤ 40 × 60 here), so ≲ 1e-12 ‖X‖. The bound 1e-10 ‖X‖ (‖X‖ the
# prepared norm; 1e-10 rad for the angular score, which is relative already) leaves ~100× of margin and sits ~100×
# below the sqrt(ε)·‖X‖ ≈ 1.5e-8 ‖X‖ that the cancelling formula sqrt(‖a‖² + ‖b‖² − 2⟨a, b⟩) would leave.
ZERO_RELATIVE = 1e-10


def orthogonal(rng: np.random.Generator, n: int) -> np.ndarray:
    return ortho_group.rvs(n, random_state=rng) if n > 1 else np.array([[-1.0]])


def flat_rep(rng: np.random.Generator, m: int = 40, n: int | None = None, latent: np.ndarray | None = None,
             noise: float | None = None) -> np.ndarray:
    """m × n responses: a random linear read-out of a shared latent plus noise (so pairs are related)."""
    n = n if n is not None else int(rng.integers(3, 12))
    latent = latent if latent is not None else rng.standard_normal((m, 6))
    noise = noise if noise is not None else rng.uniform(0.1, 1.5)
    return latent @ rng.standard_normal((latent.shape[1], n)) + noise * rng.standard_normal((m, n))


def trials_rep(rng: np.random.Generator, m: int = 12, repeats: int = 4, n: int | None = None,
               base: np.ndarray | None = None) -> np.ndarray:
    """m × repeats × n trials: per-stimulus means from a shared latent plus heteroscedastic trial noise."""
    n = n if n is not None else int(rng.integers(3, 6))
    base = base if base is not None else rng.standard_normal((m, 4))
    means = base @ rng.standard_normal((base.shape[1], n))
    scales = rng.uniform(0.2, 1.2, (m, 1, n))
    return means[:, None, :] + scales * rng.standard_normal((m, repeats, n)) @ rng.standard_normal((n, n)) / 2


def conv_rep(rng: np.random.Generator, m: int = 6, channels: int | None = None, size: tuple = (5, 5),
             base: np.ndarray | None = None) -> np.ndarray:
    """m × C × H × W maps: channel mixtures of shared base maps, circularly shifted, plus noise."""
    channels = channels if channels is not None else int(rng.integers(2, 5))
    base = base if base is not None else rng.standard_normal((m, 3, *size))
    mixed = np.einsum("mkhw,kc->mchw", base, rng.standard_normal((base.shape[1], channels)))
    shift = tuple(int(s) for s in rng.integers(0, size))
    return np.roll(mixed, shift, axis=(2, 3)) + rng.uniform(0.1, 1.0) * rng.standard_normal(mixed.shape)


def assert_zero(X: np.ndarray, Y: np.ndarray, metric: str = "linear", alpha: float = 1.0,
                score: str = "angular") -> None:
    """distance(X, Y) is zero to rounding: ≤ ZERO_RELATIVE × ‖X‖ (euclidean) or ZERO_RELATIVE rad (angular)."""
    d = distance(X, Y, metric, alpha, score)
    scale = ShapeMetric(metric, alpha, score).prepare(X).norm if score == "euclidean" else 1.0
    assert d <= ZERO_RELATIVE * scale, f"{metric} alpha={alpha} {score}: {d:.3g} > {ZERO_RELATIVE:g} × {scale:.3g}"


def path(a: np.ndarray, b: np.ndarray, n: int) -> list[np.ndarray]:
    """Points on the straight line from a to b (nearly collinear triples stress the triangle inequality)."""
    return [(1 - t) * a + t * b for t in np.linspace(0.0, 1.0, n)]


def assert_metric_space(D: np.ndarray, tol: float = 1e-8) -> float:
    """D is a finite, symmetric, non-negative matrix with a zero diagonal, and every triple (i, j, k) satisfies
    D[i, k] ≤ D[i, j] + D[j, k] + tol. Returns the smallest relative slack over triples of distinct points."""
    assert np.isfinite(D).all()
    np.testing.assert_array_equal(D, D.T)
    np.testing.assert_array_equal(np.diag(D), 0.0)
    assert (D >= 0).all()
    excess = D[:, None, :] - D[:, :, None] - D[None, :, :]  # [i, j, k] = D[i,k] − D[i,j] − D[j,k]
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess.max() <= tol, f"triangle inequality fails by {excess.max():.3g} at {worst}"
    n = len(D)
    i, j, k = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    distinct = (i != j) & (j != k) & (i != k) & (D[i, k] > 1e-3)
    return float((-excess[distinct] / D[i, k][distinct]).min())


# ---- symmetry, identity, consistency of the batched engine ----------------------------------------------------


@pytest.mark.parametrize(("metric", "alpha"), FLAT)
@pytest.mark.parametrize("score", SCORES)
def test_symmetric_and_zero_on_itself(metric: str, alpha: float, score: str) -> None:
    rng = np.random.default_rng(0)
    X, Y = flat_rep(rng, n=5), flat_rep(rng, n=9)
    d = distance(X, Y, metric, alpha, score)
    assert d > 0.05
    assert distance(Y, X, metric, alpha, score) == pytest.approx(d, abs=1e-12)
    assert_zero(X, X.copy(), metric, alpha, score)


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize(("metric", "alpha"), [("stochastic", 0.0), ("stochastic", 1.0), ("stochastic", 2.0),
                                                ("conv", 0.0), ("conv", 1.0)])
def test_symmetric_and_zero_on_itself_structured(metric: str, alpha: float, score: str) -> None:
    rng = np.random.default_rng(1)
    make = trials_rep if metric == "stochastic" else conv_rep
    X = make(rng, n=3) if metric == "stochastic" else make(rng, channels=3)
    Y = make(rng, n=5) if metric == "stochastic" else make(rng, channels=4)
    d = distance(X, Y, metric, alpha, score)
    assert d > 0.05
    assert distance(Y, X, metric, alpha, score) == pytest.approx(d, abs=1e-9)
    assert_zero(X, X.copy(), metric, alpha, score)


@pytest.mark.parametrize(("metric", "alpha"), [*FLAT, ("stochastic", 1.0), ("conv", 0.5)])
def test_pairwise_matches_distance_per_pair(metric: str, alpha: float) -> None:
    """The engine's width-grouped, chunked products give exactly the per-pair distances (mixed widths)."""
    rng = np.random.default_rng(2)
    if metric == "stochastic":
        reps = [trials_rep(rng, n=n) for n in (3, 4, 3, 5)]
    elif metric == "conv":
        reps = [conv_rep(rng, channels=c) for c in (2, 4, 2, 3)]
    else:
        reps = [flat_rep(rng, n=n) for n in (4, 9, 4, 60, 9)]  # 60 > m: the thin factor has width m
    for score in SCORES:
        D = pairwise(reps, metric, alpha, score)
        for i in range(len(reps)):
            for j in range(i + 1, len(reps)):
                assert D[i, j] == pytest.approx(distance(reps[i], reps[j], metric, alpha, score), abs=1e-10)


@pytest.mark.parametrize(("metric", "alpha"), [("linear", 0.5), ("permutation", 1.0), ("cka", 1.0),
                                             ("stochastic", 1.0), ("conv", 0.5)])
def test_prepared_factors_stored_as_npz_give_the_same_distances_bit_for_bit(metric: str, alpha: float) -> None:
    """What the warehouse stores of a prepared representation (`Prepared.to_arrays`, written by np.savez) is read back
    into factors that give exactly the distances of the freshly prepared ones."""
    rng = np.random.default_rng(4)
    make = {"stochastic": trials_rep, "conv": conv_rep}.get(metric, flat_rep)
    engine = ShapeMetric(metric, alpha)
    prepared = [engine.prepare(make(rng)) for _ in range(3)]
    restored = []
    for item in prepared:
        buffer = io.BytesIO()
        np.savez(buffer, **item.to_arrays())
        buffer.seek(0)
        with np.load(buffer, allow_pickle=False) as archive:
            restored.append(Prepared.from_arrays({name: archive[name] for name in archive.files}))
    assert [item.norm for item in restored] == [item.norm for item in prepared]
    np.testing.assert_array_equal(engine.distances(restored, restored), engine.distances(prepared, prepared))


# ---- invariances ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("score", SCORES)
def test_linear_rotation_invariance(alpha: float, score: str) -> None:
    rng = np.random.default_rng(3)
    X, Y = flat_rep(rng, n=7), flat_rep(rng, n=4)
    Q, R = orthogonal(rng, 7), orthogonal(rng, 4)
    assert_zero(X, X @ Q, "linear", alpha, score)
    assert distance(X @ Q, Y @ R, "linear", alpha, score) == pytest.approx(distance(X, Y, "linear", alpha, score),
                                                                          abs=1e-10)
    # a translation of all stimuli is removed by centering
    assert distance(X + 3.0, Y - 1.0, "linear", alpha, score) == pytest.approx(
        distance(X, Y, "linear", alpha, score), abs=1e-10)


def test_cca_invariant_to_invertible_maps() -> None:
    """alpha = 0 (CCA) forgets any invertible linear map of the units (n < m so the whitening is exact)."""
    rng = np.random.default_rng(4)
    X, Y = flat_rep(rng, n=6), flat_rep(rng, n=8)
    A = rng.standard_normal((6, 6)) + 3 * np.eye(6)
    B = np.diag(rng.uniform(0.1, 10.0, 8)) @ orthogonal(rng, 8)
    assert_zero(X, X @ A, "linear", 0.0)
    assert distance(X @ A, Y @ B, "linear", 0.0) == pytest.approx(distance(X, Y, "linear", 0.0), abs=1e-9)
    # the euclidean score keeps the total variance (variance-preserving whitening): invariant once XA is rescaled
    XA = X @ A
    XA *= np.linalg.norm(X - X.mean(0)) / np.linalg.norm(XA - XA.mean(0))
    assert_zero(X, XA, "linear", 0.0, "euclidean")
    # ... but at alpha = 1 a non-orthogonal map is seen
    assert distance(X, X @ A, "linear", 1.0) > 0.05


@pytest.mark.parametrize("score", SCORES)
def test_permutation_metric_invariances(score: str) -> None:
    rng = np.random.default_rng(5)
    X, Y = flat_rep(rng, n=10), flat_rep(rng, n=6)
    perm = rng.permutation(10)
    assert_zero(X, X[:, perm], "permutation", score=score)
    assert distance(X[:, perm], Y, "permutation", score=score) == pytest.approx(
        distance(X, Y, "permutation", score=score), abs=1e-10)
    # a general rotation is not a permutation: the permutation metric sees it, the linear metric does not
    Q = orthogonal(rng, 10)
    assert distance(X, X @ Q, "permutation", score=score) > 0.05
    assert_zero(X, X @ Q, "linear", score=score)
    # aligning by permutations is more restrictive than by rotations
    assert distance(X, Y, "permutation", score=score) >= distance(X, Y, "linear", score=score) - 1e-12


@pytest.mark.parametrize(("metric", "alpha"), [("linear", 0.0), ("linear", 1.0), ("permutation", 1.0), ("cka", 1.0)])
def test_isotropic_scaling(metric: str, alpha: float) -> None:
    rng = np.random.default_rng(6)
    X, Y = flat_rep(rng, n=5), flat_rep(rng, n=8)
    d = distance(X, Y, metric, alpha)
    for s in (0.01, 3.7, 250.0):
        assert distance(s * X, Y, metric, alpha) == pytest.approx(d, abs=1e-10)
        assert_zero(X, s * X, metric, alpha)
    # the euclidean score scales with the data (CKA's is normalised and stays put)
    e = distance(X, Y, metric, alpha, "euclidean")
    factor = 1.0 if metric == "cka" else 3.7
    assert distance(3.7 * X, 3.7 * Y, metric, alpha, "euclidean") == pytest.approx(factor * e, rel=1e-10)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("score", SCORES)
def test_stochastic_rotation_invariance(alpha: float, score: str) -> None:
    """Rotating the units of every trial leaves the Gaussian shape distance unchanged."""
    rng = np.random.default_rng(7)
    X, Y = trials_rep(rng, n=4), trials_rep(rng, n=4)
    Q = orthogonal(rng, 4)
    assert_zero(X, X @ Q, "stochastic", alpha, score)
    Y_near = X @ Q + 0.2 * rng.standard_normal(X.shape)  # one basin: the ascent finds the same optimum
    assert distance(X, Y_near @ orthogonal(rng, 4), "stochastic", alpha, score) == pytest.approx(
        distance(X, Y_near, "stochastic", alpha, score), abs=1e-8)
    # the covariances matter unless alpha = 0: a trial shuffle within stimuli changes nothing, more noise on some
    # stimuli does
    shuffled = X[:, rng.permutation(X.shape[1])]
    assert_zero(X, shuffled, "stochastic", alpha, score)
    gain = np.where(np.arange(len(X)) < 4, 3.0, 1.0)[:, None, None]
    noisier = X.mean(1, keepdims=True) + gain * (X - X.mean(1, keepdims=True))
    if alpha == 0:
        assert_zero(X, noisier, "stochastic", alpha, score)
    else:
        assert distance(X, noisier, "stochastic", alpha, score) > 1e-3
    assert np.isfinite(distance(X, Y, "stochastic", alpha, score))


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("score", SCORES)
def test_conv_channel_rotation_and_shift(alpha: float, score: str) -> None:
    rng = np.random.default_rng(8)
    X, Y = conv_rep(rng, channels=4, size=(4, 6)), conv_rep(rng, channels=3, size=(4, 6))
    Q = orthogonal(rng, 4)

    def moved(maps: np.ndarray, mix: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
        return np.roll(np.einsum("mchw,cd->mdhw", maps, mix), shift, axis=(2, 3))

    assert_zero(X, moved(X, Q, (1, 4)), "conv", alpha, score)
    assert distance(moved(X, Q, (3, 2)), Y, "conv", alpha, score) == pytest.approx(
        distance(X, Y, "conv", alpha, score), abs=1e-10)
    # a non-circular change of the maps (a flip) is seen
    assert distance(X, X[:, :, ::-1, ::-1] + X, "conv", alpha, score) > 1e-3
    if alpha == 0.0 and score == "angular":  # CCA over channels: any invertible channel map
        A = rng.standard_normal((4, 4)) + 3 * np.eye(4)
        assert_zero(X, moved(X, A, (2, 5)), "conv", alpha, score)


def test_zero_padding_and_rank_deficiency() -> None:
    """Extra all-zero units change nothing; rank-deficient and m < n inputs give finite metric distances."""
    rng = np.random.default_rng(9)
    X, Y = flat_rep(rng, n=5), flat_rep(rng, n=7)
    padded = np.hstack([X, np.zeros((len(X), 4))])
    for alpha in (0.0, 0.5, 1.0):
        for score in SCORES:
            assert distance(padded, Y, "linear", alpha, score) == pytest.approx(
                distance(X, Y, "linear", alpha, score), abs=1e-9)
    assert distance(padded, Y, "permutation") == pytest.approx(distance(X, Y, "permutation"), abs=1e-12)
    assert distance(padded, Y, "cka") == pytest.approx(distance(X, Y, "cka"), abs=1e-12)

    m = 15
    low_rank = rng.standard_normal((m, 2)) @ rng.standard_normal((2, 10))  # rank 2, width 10
    wide = rng.standard_normal((m, 40))  # m < n
    reps = [low_rank, wide, low_rank @ orthogonal(rng, 10), flat_rep(rng, m=m, n=6), np.hstack([low_rank, wide])]
    for metric, alpha in FLAT:
        for score in SCORES:
            D = pairwise(reps, metric, alpha, score)
            assert np.isfinite(D).all()
            np.testing.assert_array_equal(D, D.T)
            if metric != "permutation":  # the rotated copy
                assert D[0, 2] == distance(low_rank, reps[2], metric, alpha, score)
                assert_zero(low_rank, reps[2], metric, alpha, score)
            for rep in (low_rank, wide):
                assert_zero(rep, rep.copy(), metric, alpha, score)
    # at alpha = 0 the 40 random units span all 15 stimuli (14 after centering): every such representation is the
    # same point for CCA
    assert_zero(wide, rng.standard_normal((m, 30)), "linear", 0.0)


# ---- near-equivalent pairs: no cancellation ---------------------------------------------------------------------

ALL = [*FLAT, ("stochastic", 0.0), ("stochastic", 0.5), ("stochastic", 1.0), ("stochastic", 2.0), ("conv", 0.0),
       ("conv", 0.5), ("conv", 1.0)]


def equivalent_copies(rng: np.random.Generator, metric: str, X: np.ndarray) -> list[np.ndarray]:
    """Copies of X the metric cannot tell from X: a permutation of the units (channels) always; a random rotation
    unless the metric aligns by permutations only (conv: rotated channels, circularly shifted); a scaling of X,
    which only the angular score and CKA ignore (the caller decides)."""
    axis = {"stochastic": 2, "conv": 1}.get(metric, 1)
    width = X.shape[axis]
    perm = np.take(X, rng.permutation(width), axis=axis)
    copies = [perm]
    if metric != "permutation":
        Q = orthogonal(rng, width)
        rotated = np.einsum("mchw,cd->mdhw", X, Q) if metric == "conv" else X @ Q
        if metric == "conv":
            rotated = np.roll(rotated, tuple(int(s) for s in rng.integers(0, X.shape[2:])), axis=(2, 3))
        copies.append(rotated)
    return copies


@pytest.mark.parametrize(("metric", "alpha"), ALL)
@pytest.mark.parametrize("score", SCORES)
def test_equivalent_copies_are_zero_to_rounding(metric: str, alpha: float, score: str) -> None:
    """distance(X, g·X) ≤ 1e-10 ‖X‖ for random rotations, permutations and scalings g the metric is invariant to,
    over several draws and widths (the cancelling formula gives ~1e-8 ‖X‖ and fails this)."""
    rng = np.random.default_rng(30)
    for draw in range(4):
        if metric == "stochastic":
            X = trials_rep(rng, n=3 + draw)
        elif metric == "conv":
            X = conv_rep(rng, channels=2 + draw)
        else:
            X = flat_rep(rng, n=(3, 8, 25, 60)[draw])  # 60 > m = 40: the thin factor has width m
        for copy in equivalent_copies(rng, metric, X):
            assert_zero(X, copy, metric, alpha, score)
        # Scaling: only angles (and CKA's normalised Grams) ignore it, and partial whitening (0 < alpha < 1) mixes λ⁰
        # and λ^(−½), so it is no invariance there. The whitening floor (λ ≥ 1e-7) is absolute, so scaling a
        # rank-deficient X (60 units > 40 stimuli) moves its null direction's rounding noise, of weight ε‖X‖/√1e-7,
        # by ~1e-9: exact scale invariance of the linear metric also needs full rank.
        whitened = metric in ("linear", "conv")
        invariant = not whitened or (alpha in (0.0, 1.0) and X.shape[1] < X.shape[0])
        if (score == "angular" or metric == "cka") and invariant:
            assert_zero(X, rng.uniform(0.01, 100.0) * X, metric, alpha, score)


@pytest.mark.parametrize(("metric", "alpha"), [*FLAT, ("conv", 0.5), ("conv", 1.0)])
@pytest.mark.parametrize("score", SCORES)
def test_near_zero_distances_match_plain_residual(metric: str, alpha: float, score: str) -> None:
    """Pairs ε-close to equivalent: the engine equals the plain residual min_g ‖X − g·Y‖ (shape_reference) to 1e-7
    relative. Both compute the same residual of size δ‖E‖ from inputs rounded at ε‖X‖, so they differ by ≲ 1e-15‖X‖,
    i.e. ≲ 1e-9 of a distance ≥ 1e-6 ‖X‖; the cancelling formula is off by ~1e-8 ‖X‖, i.e. 100 % at δ = 1e-8."""
    rng = np.random.default_rng(31)
    for delta in (1e-3, 1e-6, 1e-8):
        X = conv_rep(rng, channels=3, size=(4, 5)) if metric == "conv" else flat_rep(rng, n=7)
        Y = equivalent_copies(rng, metric, X)[-1] + delta * rng.standard_normal(X.shape)
        expected = ref.aligned_residual(X, Y, metric, alpha, score)
        assert distance(X, Y, metric, alpha, score) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("score", SCORES)
def test_stochastic_near_zero_is_linear_in_the_perturbation(alpha: float, score: str) -> None:
    """d(X, g·X + δE) = δ·c + O(δ²): halving δ from 1e-6 to 1e-9 scales the distance by 1e-3 to 1e-3 relative
    (the formula's rounding floor ~1e-8 ‖X‖ would flatten it)."""
    rng = np.random.default_rng(32)
    X = trials_rep(rng, n=4)
    copy, E = equivalent_copies(rng, "stochastic", X)[-1], rng.standard_normal(X.shape)
    far, near = (distance(X, copy + delta * E, "stochastic", alpha, score) for delta in (1e-6, 1e-9))
    assert near / far == pytest.approx(1e-3, rel=1e-3)


# ---- triangle inequality over every triple --------------------------------------------------------------------


def flat_family(seed: int, n_reps: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((40, 6))
    reps = [flat_rep(rng, latent=latent) for _ in range(n_reps - 12)]
    reps += path(flat_rep(rng, n=7, latent=latent), flat_rep(rng, n=7, latent=latent), 6)
    reps += [reps[0] @ orthogonal(rng, reps[0].shape[1]), 2.5 * reps[1], reps[2][:, rng.permutation(reps[2].shape[1])]]
    reps += [rng.standard_normal((40, 50)), rng.standard_normal((40, 2)) @ rng.standard_normal((2, 9)),
             np.hstack([reps[3], reps[4]])]
    return reps


@pytest.mark.parametrize(("metric", "alpha"), FLAT)
@pytest.mark.parametrize("score", SCORES)
def test_triangle_inequality_flat(metric: str, alpha: float, score: str) -> None:
    slack = assert_metric_space(pairwise(flat_family(10), metric, alpha, score))
    assert slack < 0.05  # the family holds nearly collinear triples, so the check is not vacuous


@pytest.mark.parametrize(("alpha", "score"), [(1.0, "angular"), (1.0, "euclidean"), (0.5, "angular")])
def test_triangle_inequality_stochastic(alpha: float, score: str) -> None:
    """The Gaussian metric's cross term is a non-concave maximum found by multi-start ascent. At alpha ≤ 1.5 this
    family meets the inequality to rounding; at alpha = 2 (covariances only) missed maxima still break it by up to
    ~1e-2 on some draws, so that case is not asserted here."""
    rng = np.random.default_rng(11)
    base = rng.standard_normal((12, 4))
    reps = [trials_rep(rng, base=base) for _ in range(22)]
    reps += path(trials_rep(rng, n=4, base=base), trials_rep(rng, n=4, base=base), 5)
    reps += [reps[0] @ orthogonal(rng, reps[0].shape[2]), reps[1][:, ::-1], trials_rep(rng, n=3)]
    assert len(reps) == 30
    slack = assert_metric_space(pairwise(reps, "stochastic", alpha, score))
    assert slack < 0.05


@pytest.mark.parametrize(("alpha", "score"), [(1.0, "angular"), (1.0, "euclidean"), (0.5, "angular"),
                                              (0.0, "euclidean")])
def test_triangle_inequality_conv(alpha: float, score: str) -> None:
    rng = np.random.default_rng(12)
    base = rng.standard_normal((6, 3, 5, 5))
    reps = [conv_rep(rng, base=base) for _ in range(24)]
    reps += path(conv_rep(rng, channels=3, base=base), conv_rep(rng, channels=3, base=base), 4)
    reps += [np.roll(reps[0], (2, 1), axis=(2, 3)), rng.standard_normal((6, 2, 5, 5))]
    slack = assert_metric_space(pairwise(reps, "conv", alpha, score))
    assert slack < 0.05


# ---- agreement with the plain per-pair formulas ---------------------------------------------------------------


@pytest.mark.parametrize(("metric", "alpha"), [*FLAT, ("conv", 0.0), ("conv", 0.5), ("conv", 1.0)])
@pytest.mark.parametrize("score", SCORES)
def test_matches_plain_implementation(metric: str, alpha: float, score: str) -> None:
    rng = np.random.default_rng(13)
    for _ in range(12):
        if metric == "conv":
            X, Y = conv_rep(rng, size=(4, 5)), conv_rep(rng, size=(4, 5))
        else:
            X, Y = flat_rep(rng, n=int(rng.integers(2, 20))), flat_rep(rng, n=int(rng.integers(2, 20)))
        expected = ref.reference(X, Y, metric, alpha, score)
        assert distance(X, Y, metric, alpha, score) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("score", SCORES)
def test_stochastic_alpha0_is_procrustes_of_means(score: str) -> None:
    """alpha = 0 keeps only the means: sqrt(2) × the Procrustes (euclidean) distance of the mean responses, and
    the same angle."""
    rng = np.random.default_rng(14)
    for _ in range(12):
        X, Y = trials_rep(rng, repeats=int(rng.integers(2, 6))), trials_rep(rng, repeats=3)
        plain = ref.linear(X.mean(1), Y.mean(1), 1.0, score)
        expected = np.sqrt(2.0) * plain if score == "euclidean" else plain
        assert distance(X, Y, "stochastic", 0.0, score) == pytest.approx(expected, abs=1e-9)


def isotropic_trials(rng: np.random.Generator, means: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Trials whose sample covariance (ddof 1) is exactly sigma_i² I for every stimulus."""
    m, n = means.shape
    repeats = n + 2
    out = np.empty((m, repeats, n))
    for i in range(m):
        basis, _ = np.linalg.qr(np.hstack([np.ones((repeats, 1)), rng.standard_normal((repeats, n))]))
        out[i] = means[i] + sigmas[i] * np.sqrt(repeats - 1) * basis[:, 1:]
    return out


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("score", SCORES)
def test_stochastic_isotropic_closed_form(alpha: float, score: str) -> None:
    """Σ_i = σ_i² I, Ψ_i = τ_i² I: the Bures term no longer depends on the rotation, so
    ⟨a, b⟩ = (2−α)‖μᵀν‖_* + α n Σ_i σ_i τ_i and ‖a‖² = (2−α)‖μ‖² + α n Σ_i σ_i²."""
    rng = np.random.default_rng(15)
    m, n = 10, 3
    for _ in range(12):
        mu, nu = rng.standard_normal((m, n)), rng.standard_normal((m, n))
        sigma, tau = rng.uniform(0.1, 2.0, m), rng.uniform(0.1, 2.0, m)
        X, Y = isotropic_trials(rng, mu, sigma), isotropic_trials(rng, nu, tau)
        mu, nu = mu - mu.mean(0), nu - nu.mean(0)
        cross = (2 - alpha) * np.linalg.norm(mu.T @ nu, "nuc") + alpha * n * np.sum(sigma * tau)
        norm2_a = (2 - alpha) * np.sum(mu**2) + alpha * n * np.sum(sigma**2)
        norm2_b = (2 - alpha) * np.sum(nu**2) + alpha * n * np.sum(tau**2)
        expected = ref.score(cross, norm2_a, norm2_b, score)
        assert distance(X, Y, "stochastic", alpha, score) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_stochastic_matches_plain_ascent(alpha: float) -> None:
    """Against an independent NumPy ascent (Σ^½ from eigh, extra random starts) on related pairs with mixed
    widths, and against the defining formula Σ (2−α)‖μ_i − Qν_i‖² + α B²(Σ_i, QΨ_iQᵀ) at the plain optimum Q."""
    rng = np.random.default_rng(16)
    for k in range(6):
        n = int(rng.integers(2, 5))
        X = trials_rep(rng, repeats=5, n=n)
        Y = X @ orthogonal(rng, n) + 0.3 * rng.standard_normal(X.shape)
        if k % 2:
            Y = np.concatenate([Y, 0.2 * rng.standard_normal((len(Y), 5, 1))], axis=2)
        for score in SCORES:
            plain, Q = ref.stochastic(X, Y, alpha, score, n_starts=2)
            assert distance(X, Y, "stochastic", alpha, score) == pytest.approx(plain, abs=1e-9)
        width = Y.shape[2]
        a, b = ref.pad_gaussians(ref.gaussians(X), width), ref.pad_gaussians(ref.gaussians(Y), width)
        explicit = ref.stochastic_objective(a, b, Q, alpha)  # ~1e-7 of root noise on singular Σ
        assert distance(X, Y, "stochastic", alpha, "euclidean") ** 2 == pytest.approx(explicit, rel=1e-6, abs=1e-6)


# ---- errors -----------------------------------------------------------------------------------------------------


def assert_names(excinfo: pytest.ExceptionInfo, name: str) -> None:
    message = str(excinfo.value)
    assert name in message, message
    assert "\n" not in message


BAD = {
    "nan": lambda good: np.where(np.arange(good.size).reshape(good.shape) == 3, np.nan, good),
    "inf": lambda good: np.where(np.arange(good.size).reshape(good.shape) == 0, -np.inf, good),
    "empty": lambda good: good[:, :0],
    "ndim": lambda good: good[..., None],
    "stimuli": lambda good: good[:-1],
    "constant": lambda good: np.ones_like(good),
    "text": lambda good: good.astype(str),
}


@pytest.mark.parametrize("problem", sorted(BAD))
@pytest.mark.parametrize("metric", ["linear", "permutation", "cka", "stochastic", "conv"])
def test_bad_representation_is_named(problem: str, metric: str) -> None:
    rng = np.random.default_rng(17)
    make = {"stochastic": trials_rep, "conv": conv_rep}.get(metric, flat_rep)
    reps = [make(rng) for _ in range(5)]
    reps[3] = BAD[problem](reps[3])
    with pytest.raises(SurveyError) as excinfo:
        pairwise(reps, metric)
    assert_names(excinfo, "reps[3]")
    with pytest.raises(SurveyError) as excinfo:
        pairwise(reps, metric, names=[f"net{i}/layer" for i in range(5)])
    assert_names(excinfo, "net3/layer")
    with pytest.raises(SurveyError) as excinfo:
        distance(reps[0], reps[3], metric)
    assert_names(excinfo, "Y")


def test_odd_representation_named_even_when_first() -> None:
    rng = np.random.default_rng(18)
    reps = [flat_rep(rng, m=30)] + [flat_rep(rng, m=40) for _ in range(3)]
    with pytest.raises(SurveyError) as excinfo:
        pairwise(reps)
    assert_names(excinfo, "reps[0]")
    maps = [conv_rep(rng) for _ in range(3)] + [conv_rep(rng, size=(4, 4))]
    with pytest.raises(SurveyError) as excinfo:
        pairwise(maps, "conv")
    assert_names(excinfo, "reps[3]")
    with pytest.raises(SurveyError) as excinfo:
        distance(maps[0], maps[3], "conv")
    assert_names(excinfo, "Y")


def test_stochastic_needs_repeats() -> None:
    rng = np.random.default_rng(19)
    reps = [trials_rep(rng) for _ in range(3)]
    reps[1] = reps[1][:, :1]
    with pytest.raises(SurveyError) as excinfo:
        pairwise(reps, "stochastic")
    assert_names(excinfo, "reps[1]")


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"metric": "procrustes"}, "procrustes"),
    ({"score": "cosine"}, "cosine"),
    ({"metric": "linear", "alpha": 1.5}, "alpha"),
    ({"metric": "linear", "alpha": -0.1}, "alpha"),
    ({"metric": "conv", "alpha": 2.0}, "alpha"),
    ({"metric": "stochastic", "alpha": 2.5}, "alpha"),
    ({"metric": "permutation", "alpha": 0.5}, "alpha"),
    ({"metric": "cka", "alpha": 0.0}, "alpha"),
])
def test_bad_configuration(kwargs: dict, needle: str) -> None:
    rng = np.random.default_rng(20)
    X, Y = flat_rep(rng), flat_rep(rng)
    for call in (lambda: distance(X, Y, **kwargs), lambda: pairwise([X, Y], **kwargs),
                 lambda: ShapeMetric(**kwargs)):
        with pytest.raises(SurveyError) as excinfo:
            call()
        assert_names(excinfo, needle)


def test_engine_prepare_and_cross_blocks() -> None:
    """The documented engine API: prepare once, then any block of pairs; distances agree with `distance`."""
    rng = np.random.default_rng(21)
    engine = ShapeMetric("linear", 0.5, "euclidean", device="cpu")
    reps = [flat_rep(rng) for _ in range(4)]
    prepared = [engine.prepare(rep, f"r{i}") for i, rep in enumerate(reps)]
    block = engine.distances(prepared[:2], prepared[2:]).reshape(2, 2)
    for i in range(2):
        for j in range(2):
            assert block[i, j] == pytest.approx(distance(reps[i], reps[2 + j], "linear", 0.5, "euclidean"), abs=1e-10)
    pairs = (np.array([0, 3]), np.array([1, 1]))
    crosses = engine.cross(prepared, prepared, pairs)
    norms = np.array([p.norm for p in prepared])
    expected = (norms[[0, 3]] ** 2 + norms[1] ** 2 - engine.distances(prepared, prepared, pairs) ** 2) / 2
    np.testing.assert_allclose(crosses, expected, rtol=1e-10)
    with pytest.raises(SurveyError) as excinfo:
        engine.prepare(np.full((5, 3), np.nan), "bad-one")
    assert_names(excinfo, "bad-one")


@pytest.mark.parametrize(("metric", "alpha"), [("linear", 0.0), ("linear", 0.7), ("cka", 1.0)])
def test_batched_cross_terms_equal_the_per_pair_definition(metric: str, alpha: float) -> None:
    """Linear and CKA compute blocks of pairs from stacked factors; each pair is still its `cross_pair`."""
    rng = np.random.default_rng(5)
    engine = ShapeMetric(metric, alpha, device="cpu")
    prepared = [engine.prepare(flat_rep(rng), f"r{i}") for i in range(6)]
    pairs = (np.array([0, 1, 2, 5, 3]), np.array([4, 4, 0, 1, 3]))
    per_pair = [engine.family.cross_pair(prepared[i], prepared[j]) for i, j in zip(*pairs, strict=True)]
    np.testing.assert_allclose(engine.cross(prepared, prepared, pairs), per_pair, rtol=1e-12)
