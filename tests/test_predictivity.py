"""Neural predictivity: ridge readouts against the closed form, split-half reliability against its analytic value,
and the noise-corrected score against the correlation with the noise-free responses."""

import numpy as np
import pytest

from survey.errors import SurveyError
from survey.metrics.predictivity import (
    RELATIVE_PENALTIES,
    cross_validated_predictions,
    fit_readout,
    leave_one_out_errors,
    neural_predictivity,
    pearson_columns,
    split_half_reliability,
)


def closed_form_ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(XsᵀXs + λI)⁻¹ Xsᵀ(y − ȳ) on the z-scored features Xs, written from the formula."""
    mean, scale = x.mean(axis=0), x.std(axis=0)
    xs = (x - mean) / scale
    weights = np.linalg.solve(xs.T @ xs + penalty * np.eye(x.shape[1]), xs.T @ (y - y.mean(axis=0)))
    return mean, scale, weights


def population(n_stimuli: int, n_features: int, n_neurons: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n_stimuli, n_features)) * rng.uniform(0.5, 3.0, n_features)
    return features, features @ rng.standard_normal((n_features, n_neurons))


@pytest.mark.parametrize("n_features", [12, 100])  # fewer features than stimuli (SVD), more (Gram matrix)
def test_leave_one_out_errors_and_the_refit_equal_the_closed_form(n_features):
    features, responses = population(40, n_features, 3, seed=0)
    responses += np.random.default_rng(1).standard_normal(responses.shape) * 3.0
    errors = leave_one_out_errors(features, responses)
    mean, scale = features.mean(axis=0), features.std(axis=0)
    xs = (features - mean) / scale
    penalties = np.asarray(RELATIVE_PENALTIES) * np.sum(xs**2) / min(xs.shape)  # mean of the s² over min(n, F)
    design = np.hstack([np.ones((len(xs), 1)), xs])
    for p, penalty in enumerate(penalties[::4]):
        ridge = np.sqrt(penalty) * np.eye(xs.shape[1] + 1)[1:]  # unpenalised intercept, ridge on the weights
        expected = np.zeros(responses.shape[1])
        for i in range(len(features)):  # refit without stimulus i, as least squares on [D; √λ·I] (QR-conditioned)
            kept = np.arange(len(features)) != i
            stacked = np.vstack([design[kept], ridge])
            targets = np.vstack([responses[kept], np.zeros((len(ridge), responses.shape[1]))])
            coefficients = np.linalg.lstsq(stacked, targets, rcond=None)[0]
            expected += (design[i] @ coefficients - responses[i]) ** 2
        np.testing.assert_allclose(errors[4 * p], expected, rtol=1e-9)
    readout = fit_readout(features, responses)
    for neuron in range(responses.shape[1]):
        _, _, weights = closed_form_ridge(features, responses, readout.penalty[neuron])
        np.testing.assert_allclose(readout.weights[:, neuron], weights[:, neuron], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(readout.penalty, penalties[errors.argmin(axis=0)], rtol=1e-12)


def test_the_penalty_grows_with_the_noise():
    features, responses = population(120, 30, 1, seed=4)
    noise = np.random.default_rng(5).standard_normal(responses.shape)
    clean = fit_readout(features, responses + 1e-3 * noise).penalty[0]
    noisy = fit_readout(features, responses + 30 * responses.std() * noise).penalty[0]
    assert noisy > 100 * clean


def test_a_prediction_never_sees_its_own_stimulus():
    features, responses = population(40, 5, 2, seed=6)
    base = cross_validated_predictions(features, responses, n_folds=4, seed=0)
    changed = responses.copy()
    changed[7] += 1e3
    moved = cross_validated_predictions(features, changed, n_folds=4, seed=0)
    np.testing.assert_array_equal(base[7], moved[7])  # its fold's readout never saw stimulus 7
    assert not np.allclose(base, moved)


@pytest.mark.parametrize("n_repeats", [2, 3, 8])
def test_split_half_reliability_matches_its_analytic_value(n_repeats):
    # signal variance 1, trial noise variance σ²: the mean of R repeats has reliability 1 / (1 + σ² / R)
    rng = np.random.default_rng(n_repeats)
    sigma = np.array([0.5, 1.0, 2.0, 4.0])
    signal = rng.standard_normal((6000, 1, sigma.size))
    repeats = signal + sigma * rng.standard_normal((6000, n_repeats, sigma.size))
    expected = 1 / (1 + sigma**2 / n_repeats)
    # the standard error of r at n = 6000 is (1 − r²)/√n ≤ 0.013; Spearman–Brown at most doubles it
    np.testing.assert_allclose(split_half_reliability(repeats), expected, atol=0.04)


def test_the_corrected_score_estimates_the_correlation_with_noise_free_responses():
    # 2,000 stimuli: the standard errors of r and of the reliability are ≈ 0.02, so the corrected score's error
    # stays under the 0.05 asked for (at most 0.03 over ten seeds)
    rng = np.random.default_rng(7)
    features, linear = population(2000, 20, 6, seed=8)
    unexplained = rng.standard_normal(linear.shape) * linear.std(axis=0) * np.linspace(0.2, 1.5, 6)
    truth_responses = linear + unexplained  # what no readout of these features can reach
    repeats = truth_responses[:, None, :] + rng.standard_normal((2000, 4, 6)) * 1.5 * truth_responses.std(axis=0)
    result = neural_predictivity(features, repeats, n_folds=5, seed=0)
    truth = pearson_columns(cross_validated_predictions(features, repeats.mean(axis=1), 5, 0), truth_responses)
    assert np.all(result.reliability < 0.9) and np.all(result.r < truth - 0.05)  # the noise matters here
    np.testing.assert_allclose(result.corrected, truth, atol=0.05)
    assert result.median == pytest.approx(np.median(result.corrected))


def test_a_neuron_without_reliable_responses_gets_no_corrected_score():
    features, _ = population(50, 4, 1, seed=9)
    repeats = np.random.default_rng(2).standard_normal((50, 3, 20))  # pure noise: reliabilities scatter around 0
    result = neural_predictivity(features, repeats)
    positive = result.reliability > 0
    assert 0 < positive.sum() < positive.size
    assert np.isnan(result.corrected[~positive]).all()
    np.testing.assert_allclose(result.corrected[positive], result.r[positive] / np.sqrt(result.reliability[positive]))
    assert result.median == pytest.approx(np.median(result.corrected[positive]))


@pytest.mark.parametrize(("call", "message"), [
    (lambda: fit_readout(np.ones((10, 3)), np.ones((9, 2))), "features has 10 stimuli but responses has 9"),
    (lambda: split_half_reliability(np.ones((10, 1, 2))), "at least 2"),
    (lambda: neural_predictivity(np.ones((10, 3)), np.ones((10, 2))), "n_stimuli × n_repeats × n_units"),
    (lambda: fit_readout(np.full((10, 3), np.nan), np.ones((10, 2))), "non-finite"),
    (lambda: cross_validated_predictions(np.ones((4, 3)), np.ones((4, 2)), n_folds=5), "n_folds"),
    (lambda: fit_readout(np.ones((2, 3)), np.ones((2, 2))), "too few to choose a ridge penalty"),
])
def test_bad_inputs_are_named(call, message):
    with pytest.raises(SurveyError, match=message) as error:
        call()
    assert "\n" not in str(error.value)
