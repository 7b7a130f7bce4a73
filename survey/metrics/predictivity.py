"""Neural predictivity: ridge readouts from a network layer's features to recorded neurons, scored on held-out
stimuli and corrected by each neuron's split-half reliability (Yamins et al. 2014; Schrimpf et al. 2018; DESIGN §3
`predictivity`).

All arrays are NumPy float64; stimuli are rows. Nothing here knows of the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from survey.errors import NotApplicable, SurveyError
from survey.validation import check_int, real_array

# Ridge penalties as multiples of the mean eigenvalue of the standardised features' Gram matrix, so one grid fits any
# layer width and stimulus count.
RELATIVE_PENALTIES = tuple(float(p) for p in np.logspace(-4, 3, 15))


@dataclass(frozen=True)
class Readout:
    """A fitted linear readout ``responses ≈ ((features − mean) / scale) @ weights + bias`` (one penalty per
    neuron, chosen by cross-validation)."""

    mean: np.ndarray  # F
    scale: np.ndarray  # F (1 where a feature is constant)
    weights: np.ndarray  # F × U
    bias: np.ndarray  # U
    penalty: np.ndarray  # U, the absolute ridge penalty each neuron got

    def predict(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.weights + self.bias


@dataclass(frozen=True)
class Predictivity:
    """Per-neuron held-out Pearson r, split-half reliability (Spearman–Brown) and the corrected score r / √reliability
    (NaN where the reliability is not positive), and the median corrected score over the neurons that have one."""

    r: np.ndarray
    reliability: np.ndarray
    corrected: np.ndarray
    median: float


def _standardise(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    return mean, np.where(scale > 0, scale, 1.0)


@dataclass(frozen=True)
class _Decomposition:
    """The standardised features X (n × F) with the left singular vectors U and squared singular values s² of
    X = U S Vᵀ (for a wide layer through a QR of Xᵀ first: 3× faster than its SVD at 205 × 1024, as accurate).
    Ridge needs nothing else: W(λ) = Xᵀ U diag(1 / (s² + λ)) Uᵀ y."""

    mean: np.ndarray
    scale: np.ndarray
    standardised: np.ndarray
    u: np.ndarray
    s2: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray) -> _Decomposition:
        mean, scale = _standardise(features)
        standardised = (features - mean) / scale
        # a wide layer (F ≥ n): Xᵀ = QR, so X = Rᵀ Qᵀ has the left singular vectors and values of the n × n Rᵀ
        square = standardised if standardised.shape[1] < standardised.shape[0] else \
            np.linalg.qr(standardised.T, mode="r").T
        u, s, _ = np.linalg.svd(square, full_matrices=False)
        return cls(mean, scale, standardised, u, s**2)

    def penalties(self, relative_penalties: tuple[float, ...]) -> np.ndarray:
        return np.asarray(relative_penalties) * max(float(np.mean(self.s2)), np.finfo(float).tiny)

    def leave_one_out_errors(self, responses: np.ndarray, relative_penalties: tuple[float, ...]) -> np.ndarray:
        n, u = self.u.shape[0], self.u
        centred = responses - responses.mean(axis=0)
        loadings = u.T @ centred  # r × U
        errors = np.empty((len(relative_penalties), responses.shape[1]))
        for p, penalty in enumerate(self.penalties(relative_penalties)):
            smoothing = self.s2 / (self.s2 + penalty)
            leverage = 1.0 / n + (u**2) @ smoothing
            residuals = (centred - u @ (smoothing[:, None] * loadings)) / (1.0 - leverage)[:, None]
            errors[p] = (residuals**2).sum(axis=0)
        return errors

    def weights(self, responses: np.ndarray, penalties: np.ndarray) -> np.ndarray:
        """F × U ridge weights, neuron j at penalty `penalties[j]`."""
        loadings = self.u.T @ (responses - responses.mean(axis=0))  # r × U
        return self.standardised.T @ (self.u @ (loadings / (self.s2[:, None] + penalties[None, :])))


def leave_one_out_errors(features: np.ndarray, responses: np.ndarray,
                         relative_penalties: tuple[float, ...] = RELATIVE_PENALTIES) -> np.ndarray:
    """Leave-one-out squared error of every neuron's ridge fit at every penalty (P × U), from one decomposition of
    the standardised features X = U S Vᵀ: the fit with an unpenalised intercept is the linear smoother
    H = 11ᵀ/n + U diag(s² / (s² + λ)) Uᵀ, so each left-out residual is (y − Hy)ᵢ / (1 − Hᵢᵢ) (Allen 1974; Golub,
    Heath & Wahba 1979). λ = relative penalty × mean(s²)."""
    features, responses = _check_pair(features, responses)
    return _Decomposition.of(features).leave_one_out_errors(responses, relative_penalties)


def _folds(n: int, n_folds: int, rng: np.random.Generator) -> list[np.ndarray]:
    return np.array_split(rng.permutation(n), n_folds)


def fit_readout(features: np.ndarray, responses: np.ndarray,
                relative_penalties: tuple[float, ...] = RELATIVE_PENALTIES) -> Readout:
    """Ridge readout (Hoerl & Kennard 1970) on the standardised features, each neuron's penalty the one of least
    leave-one-out error over these stimuli (`leave_one_out_errors`): W = V diag(s / (s² + λ)) Uᵀ (y − ȳ), computed
    as Xᵀ U diag(1 / (s² + λ)) Uᵀ (y − ȳ)."""
    features, responses = _check_pair(features, responses)
    if features.shape[0] < 3:
        raise NotApplicable(f"{features.shape[0]} stimuli are too few to choose a ridge penalty; pass at least 3")
    decomposition = _Decomposition.of(features)
    best = decomposition.leave_one_out_errors(responses, relative_penalties).argmin(axis=0)  # per neuron
    penalties = decomposition.penalties(relative_penalties)[best]
    return Readout(decomposition.mean, decomposition.scale, decomposition.weights(responses, penalties),
                   responses.mean(axis=0), penalties)


def cross_validated_predictions(features: np.ndarray, responses: np.ndarray, n_folds: int = 5, seed: int = 0,
                                relative_penalties: tuple[float, ...] = RELATIVE_PENALTIES) -> np.ndarray:
    """Every stimulus's predicted responses from a readout fitted without it (`fit_readout`, its penalty chosen
    within the training folds): `n_folds`-fold cross-validation, folds drawn with `seed`."""
    features, responses = _check_pair(features, responses)
    n = check_int("n_folds", n_folds, 2, features.shape[0])
    predictions = np.empty_like(responses)
    stimuli = np.arange(features.shape[0])
    for held in _folds(features.shape[0], n, np.random.default_rng(seed)):
        kept = np.setdiff1d(stimuli, held)
        readout = fit_readout(features[kept], responses[kept], relative_penalties)
        predictions[held] = readout.predict(features[held])
    return predictions


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of `a` with the same column of `b` (NaN where either is constant)."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    denominator = np.sqrt((a**2).sum(axis=0) * (b**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=0) / denominator, np.nan)


def split_half_reliability(repeats: np.ndarray, n_splits: int = 20, seed: int = 0) -> np.ndarray:
    """Reliability of each neuron's mean over all R repeats (n_stimuli × R × U input): the Pearson r between the
    means of two random halves of the repeats (h = R // 2 each), averaged over `n_splits` splits, stepped up by the
    Spearman–Brown prophecy ρ = k r / (1 + (k − 1) r) with k = R / h (Spearman 1910; Brown 1910)."""
    repeats = real_array(repeats, "repeats", (3,), "n_stimuli × n_repeats × n_units")
    n_repeats = repeats.shape[1]
    if n_repeats < 2:
        raise NotApplicable(f"repeats has {n_repeats} repeat per stimulus; split-half reliability needs at least 2")
    check_int("n_splits", n_splits, 1)
    rng = np.random.default_rng(seed)
    half = n_repeats // 2
    r = np.zeros(repeats.shape[2])
    for _ in range(n_splits):
        order = rng.permutation(n_repeats)
        r += pearson_columns(repeats[:, order[:half]].mean(axis=1), repeats[:, order[half:2 * half]].mean(axis=1))
    r /= n_splits
    k = n_repeats / half
    return k * r / (1 + (k - 1) * r)


def neural_predictivity(features: np.ndarray, repeats: np.ndarray, n_folds: int = 5, seed: int = 0,
                        relative_penalties: tuple[float, ...] = RELATIVE_PENALTIES,
                        reliability: np.ndarray | None = None) -> Predictivity:
    """Held-out predictivity of the repeat-averaged responses from `features` (n_stimuli × F; repeats
    n_stimuli × R × U), corrected for the neurons' trial noise: r / √ρ is Spearman's correction for attenuation
    with noise on the neural side only, an estimate of the r against the noise-free response. `reliability`:
    `split_half_reliability(repeats, seed=seed)` when already computed (one session, many layers)."""
    repeats = real_array(repeats, "repeats", (3,), "n_stimuli × n_repeats × n_units")
    if repeats.shape[0] < 2 * n_folds:
        raise NotApplicable(f"{repeats.shape[0]} stimuli are too few for {n_folds}-fold cross-validation; pass "
                            f"n_folds ≤ {repeats.shape[0] // 2}")
    mean_responses = repeats.mean(axis=1)
    predictions = cross_validated_predictions(features, mean_responses, n_folds, seed, relative_penalties)
    r = pearson_columns(predictions, mean_responses)
    if reliability is None:
        reliability = split_half_reliability(repeats, seed=seed)
    with np.errstate(invalid="ignore"):
        corrected = np.where(reliability > 0, r / np.sqrt(np.where(reliability > 0, reliability, 1.0)), np.nan)
    finite = corrected[np.isfinite(corrected)]
    return Predictivity(r, reliability, corrected, float(np.median(finite)) if finite.size else float("nan"))


def _check_pair(features: np.ndarray, responses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = real_array(features, "features", (2,), "n_stimuli × n_features")
    responses = real_array(responses, "responses", (2,), "n_stimuli × n_neurons")
    if features.shape[0] != responses.shape[0]:
        raise SurveyError(f"features has {features.shape[0]} stimuli but responses has {responses.shape[0]}; pass "
                          "both in the same stimulus order")
    return features, responses
